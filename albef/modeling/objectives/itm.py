"""Image-text matching on mined hard negatives."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from albef.modeling.context import StepContext
from albef.modeling.fusion.visual import VisualInput
from albef.modeling.miners.base import MinedNegatives
from albef.modeling.objectives.base import Objective
from albef.registry import MINER_REGISTRY, OBJECTIVE_REGISTRY, build_component


@OBJECTIVE_REGISTRY.register()
class ITMLoss(Objective):
    """Binary matched / not-matched classification of fused [CLS] tokens (paper eq. 3).

    Per batch of B pairs: B positives, B (text b, negative image) and B (negative
    text, image b) pairs, all fused in one forward of 3B pairs; logits [3B, 2],
    labels [1]*B + [0]*2B, cross-entropy averaged over the pairs that have a valid
    negative (all 3B in a normal batch, which is the official mean).

    Negatives come from ``miner`` over the in-batch similarities ``ctx.sim_*[:, :B]``
    (online vs teacher features, no gradient). A batch may pin them instead with
    ``itm_neg_image_idx`` / ``itm_neg_text_idx`` [B] (tests, parity checks).

    When the batch carries false texts (``data.text_negatives``: compositional hard
    negatives such as the caption with its relation flipped), each is fused with its
    own image as one more negative pair: [4B, 2] logits, label 0, the pairs without a
    negative (``text_neg_valid`` False) dropped from the mean.

    Args:
        miner: config node of a MINER_REGISTRY component.
        head: key of the ITM head in ``model.heads``.
        text_negatives: use the batch's false texts when it has them (false: ignore them).
    """

    def __init__(self, weight: float = 1.0, miner: dict[str, Any] | None = None, head: str = "itm", text_negatives: bool = True):
        super().__init__(weight)
        self.miner = build_component(
            MINER_REGISTRY, miner or {"name": "ContrastiveHardNegativeMiner"}, where="model.objectives.itm.miner"
        )
        self.head = head
        self.text_negatives = bool(text_negatives)

    def heads_used(self) -> tuple[str, ...]:
        return (self.head,)

    def mine(self, ctx: StepContext) -> MinedNegatives:
        b = ctx.batch_size
        fixed_img, fixed_txt = ctx.batch.get("itm_neg_image_idx"), ctx.batch.get("itm_neg_text_idx")
        if fixed_img is not None and fixed_txt is not None:
            ones = torch.ones(b, dtype=torch.bool, device=fixed_img.device)
            return MinedNegatives(fixed_img, fixed_txt, ones, ones)
        with torch.no_grad():
            return self.miner(ctx.sim_i2t[:, :b].detach(), ctx.sim_t2i[:, :b].detach(), ctx.image_ids, temp=ctx.temp)

    def needs(self, distill: bool) -> frozenset[str]:
        # the teacher's contrast even when a batch pins its negatives (needs cannot see the batch)
        return frozenset({"contrastive", "visual", "text_negatives"} if self.text_negatives else {"contrastive", "visual"})

    def forward(self, ctx: StepContext, alpha: float | torch.Tensor | None = None) -> torch.Tensor:
        b = ctx.batch_size
        neg = self.mine(ctx)
        text, mask, visual = ctx.text_embeds, ctx.attention_mask, ctx.visual
        texts, masks, visuals = [text, text, text[neg.neg_text_for_image]], [mask, mask, mask[neg.neg_text_for_image]], [visual, visual.index(neg.neg_image_for_text), visual]
        keeps = [torch.ones(b, dtype=torch.bool, device=mask.device), neg.valid_text, neg.valid_image]
        extra = ctx.text_negatives if self.text_negatives else None
        if extra is not None:  # each image with its own false text
            texts.append(extra.hidden), masks.append(extra.mask), visuals.append(visual), keeps.append(extra.valid)
            ctx.stats["itm_text_negatives"] = extra.valid.sum().detach()
        fused = ctx.fusion(torch.cat(texts), torch.cat(masks), VisualInput.cat(visuals))  # [3B or 4B, L, H]
        logits = ctx.head(self.head)(fused[:, 0]).float()  # [3B or 4B, 2]
        n = logits.shape[0]
        labels = torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(n - b, dtype=torch.long)]).to(logits.device)
        keep = torch.cat(keeps).float()
        ctx.stats["dropped_itm_negatives"] = (2 * b - keep[b:3 * b].sum()).detach()
        ce = F.cross_entropy(logits, labels, reduction="none")
        return (ce * keep).sum() / keep.sum()
