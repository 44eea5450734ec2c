"""Image-text contrastive loss with momentum-distilled targets."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from albef.modeling.context import StepContext
from albef.modeling.objectives.base import Objective
from albef.registry import OBJECTIVE_REGISTRY


def contrastive_targets(batch_size: int, num_cols: int, image_ids: torch.Tensor | None, idx_all: torch.Tensor | None, device) -> torch.Tensor:
    """[B, B+Q] ground-truth distribution: the diagonal, or uniform over every column sharing the image id."""
    if image_ids is not None and idx_all is not None:
        pos = (image_ids.view(-1, 1) == idx_all.view(1, -1)).float()
        return pos / pos.sum(dim=1, keepdim=True)  # the row's own pair is always a positive
    t = torch.zeros(batch_size, num_cols, device=device)
    t[:, :batch_size] = torch.eye(batch_size, device=device)
    return t


def itc_targets(ctx: StepContext, alpha: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ITC's target distributions (i2t, t2i), each [B, B+Q], without gradient.

    The ground truth (:func:`contrastive_targets`), mixed with the teacher's softmax
    when distilling (``alpha`` not None: this step's weight the objective was given):
    ``alpha * softmax(sim_m) + (1 - alpha) * y`` (paper eq. 6). Public for objectives
    that reuse ITC's targets with another loss (plugins).
    """
    t = ctx.teacher
    b, n = ctx.sim_i2t.shape
    targets = contrastive_targets(b, n, ctx.image_ids, t.idx_all, ctx.sim_i2t.device)
    a = alpha
    if a is None:
        return targets, targets
    with torch.no_grad():
        sim_i2t_m = t.image_feat_m @ t.text_feat_all.t() / ctx.temp
        sim_t2i_m = t.text_feat_m @ t.image_feat_all.t() / ctx.temp
        return (a * F.softmax(sim_i2t_m, dim=1) + (1 - a) * targets,
                a * F.softmax(sim_t2i_m, dim=1) + (1 - a) * targets)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean over rows of ``-sum_j targets_ij * log_softmax(logits)_ij``."""
    return -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()


@OBJECTIVE_REGISTRY.register()
class ITCLoss(Objective):
    """ALBEF's ITC (paper eq. 1-2, with MoD eq. 6).

    sim_i2t = s(I, T_m ∪ queue) / temp, targets = alpha * softmax(sim_m) + (1 - alpha) * y,
    where y is one-hot on the pair (or uniform over same-image columns when the batch
    has image ids) and sim_m uses the teacher's image features. Loss = (CE_i2t + CE_t2i) / 2.

    Args:
        text_negatives: when the batch carries false texts (``data.text_negatives``),
            give each image's i2t row one more column: its own false text's online
            feature, target 0 (a hard negative, never distilled); rows without one get
            a column the softmax ignores. A false text is only ever a negative of its
            own image: for another image of the batch it could be true.
        alpha: ITC's own distillation weight (null: the teacher's ``alpha``; 0: ITC
            learns from hard targets while other objectives may still distil).
    """

    def __init__(self, weight: float = 1.0, text_negatives: bool = False, alpha: float | None = None):
        super().__init__(weight)
        self.text_negatives = bool(text_negatives)
        self._set_alpha(alpha)

    def needs(self, distill: bool) -> frozenset[str]:
        return frozenset({"contrastive", "text_negatives"} if self.text_negatives else {"contrastive"})

    def forward(self, ctx: StepContext, alpha: float | torch.Tensor | None = None) -> torch.Tensor:
        tgt_i2t, tgt_t2i = itc_targets(ctx, alpha)
        sim_i2t = ctx.sim_i2t
        extra = ctx.text_negatives if self.text_negatives else None
        if extra is not None and extra.feat is not None:
            own = (ctx.image_feat.float() * extra.feat.float()).sum(dim=1, keepdim=True) / ctx.temp  # [B, 1]
            own = own.masked_fill(~extra.valid.view(-1, 1), -1e9)  # exp() -> 0; finite, so 0 * log p stays 0
            sim_i2t = torch.cat([sim_i2t, own], dim=1)
            tgt_i2t = torch.cat([tgt_i2t, torch.zeros_like(tgt_i2t[:, :1])], dim=1)
        return (soft_cross_entropy(sim_i2t, tgt_i2t) + soft_cross_entropy(ctx.sim_t2i, tgt_t2i)) / 2
