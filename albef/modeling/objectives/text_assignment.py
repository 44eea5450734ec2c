"""NLVR2's text-assignment pretraining (TA): which of two images does the text describe?"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from albef.modeling.context import StepContext
from albef.modeling.fusion.visual import VisualInput
from albef.modeling.miners.base import candidate_mask, sample_rows
from albef.modeling.objectives.base import Objective
from albef.registry import OBJECTIVE_REGISTRY


@OBJECTIVE_REGISTRY.register()
class TextAssignmentLoss(Objective):
    """The official ``model_pretrain_nlvr`` objective, vectorised (paper §2.10 / reference §2.10).

    For each caption b, its image is paired with hard negatives drawn from
    ``softmax(image_feat @ image_feat.T / temperature)`` (no gradient, the image itself
    and, with image ids, every image showing the same content excluded):

    * with probability ``1 - neither_prob``: (b, negative) with label 0 or (negative, b)
      with label 1, each with probability 1/2;
    * otherwise two distinct negatives, label 2 ("neither").

    The text is fused with the two images (the fusion routes layers to image 0 and image
    1) and the head classifies the fused [CLS] into {0, 1, 2}; plain cross-entropy (the
    official TA model has no momentum teacher). A row without a valid negative is left
    out of the mean and counted (``dropped_ta_rows``); a row with a single candidate
    cannot be "neither" and takes the pair case.

    Args:
        head: key of the 3-way head in ``model.heads``.
        temperature: of the image-image softmax (official: 0.07, fixed).
        neither_prob: probability of the "neither" case (official: 1/3).
    """

    def __init__(self, weight: float = 1.0, head: str = "ta", temperature: float = 0.07, neither_prob: float = 1 / 3):
        super().__init__(weight)
        if temperature <= 0 or not 0.0 <= neither_prob <= 1.0:
            raise ValueError(f"TextAssignmentLoss: temperature must be > 0 and neither_prob in [0, 1], got {temperature}, {neither_prob}")
        self.head, self.temperature, self.neither_prob = head, float(temperature), float(neither_prob)

    def heads_used(self) -> tuple[str, ...]:
        return (self.head,)

    @torch.no_grad()
    def assign(self, image_feat: torch.Tensor, image_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (slot-0 image index [B], slot-1 image index [B], label [B], valid [B] bool)."""
        b = image_feat.shape[0]
        device = image_feat.device
        cand = candidate_mask(b, image_ids, device)
        sim = image_feat.float() @ image_feat.float().t() / self.temperature
        weights = torch.softmax(sim.masked_fill(~cand, float("-inf")), dim=1)  # NaN rows are sanitised below
        first, valid = sample_rows(weights, cand)
        cand2 = cand & ~F.one_hot(first, b).bool()
        second, valid2 = sample_rows(weights, cand2)
        own = torch.arange(b, device=device)
        neither = (torch.rand(b, device=device) < self.neither_prob) & valid2
        own_first = torch.rand(b, device=device) < 0.5
        slot0 = torch.where(neither, first, torch.where(own_first, own, first))
        slot1 = torch.where(neither, second, torch.where(own_first, first, own))
        label = torch.where(neither, 2, torch.where(own_first, 0, 1)).long()
        return slot0, slot1, label, valid

    def forward(self, ctx: StepContext, alpha: float | torch.Tensor | None = None) -> torch.Tensor:
        image_embeds, image_feat = ctx.image_embeds, ctx.image_feat
        if image_feat is None:
            raise ValueError("TextAssignmentLoss mines image pairs from the image projections: set model.embed_dim")
        slot0, slot1, label, valid = self.assign(image_feat.detach(), ctx.image_ids)
        visual = VisualInput((image_embeds[slot0], image_embeds[slot1]), (None, None))
        logits = ctx.head(self.head)(ctx.fusion(ctx.text_embeds, ctx.attention_mask, visual)[:, 0]).float()  # [B, 3]
        keep = valid.float()
        ctx.stats["dropped_ta_rows"] = (valid.numel() - keep.sum()).detach()
        ce = F.cross_entropy(logits, label, reduction="none")
        return (ce * keep).sum() / keep.sum().clamp(min=1.0)
