"""The most direct compositional signal: tell each caption from its minimally edited twin."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from albef.modeling.context import StepContext
from albef.modeling.fusion.visual import VisualInput
from albef.modeling.objectives.base import Objective
from albef.registry import OBJECTIVE_REGISTRY


@OBJECTIVE_REGISTRY.register()
class EditedCaptionLoss(Objective):
    """Binary matched / not-matched classification of (image b, caption b) against (image b,
    edited caption b), the edit being the batch's false text (``data.text_negatives``, e.g.
    the caption with its relation flipped or its objects exchanged).

    Per batch of B pairs with V valid edits: 2B fused pairs in one forward, logits [2B, 2]
    on the ITM head, labels [1]*B + [0]*B, cross-entropy averaged over the B positives and
    the V edited negatives (an image without an edit keeps its positive: that is still a
    true statement of it). No mined negatives, no contrast: a capacity probe (can the
    fusion encoder and head represent the relation at all?), also usable as an auxiliary
    objective beside ITM.

    Logged (not optimised): ``edited_pair_acc``, the share of valid pairs whose caption gets
    a higher match logit margin than its edit (the probe's question on training batches),
    and ``edited_valid`` (V).

    Args:
        head: key of the ITM head in ``model.heads``.
    """

    def __init__(self, weight: float = 1.0, head: str = "itm"):
        super().__init__(weight)
        self.head = head

    def heads_used(self) -> tuple[str, ...]:
        return (self.head,)

    def needs(self, distill: bool) -> frozenset[str]:
        return frozenset({"visual", "text_negatives"})

    def forward(self, ctx: StepContext, alpha: float | torch.Tensor | None = None) -> torch.Tensor:
        neg = ctx.text_negatives
        if neg is None:
            raise ValueError("EditedCaptionLoss needs the batch's edited captions: set data.text_negatives "
                             "(e.g. {name: CompositionalNegatives, rules: shapes_world, kinds: [relation_flip, object_exchange]})")
        b = ctx.batch_size
        texts = torch.cat([ctx.text_embeds, neg.hidden])
        masks = torch.cat([ctx.attention_mask, neg.mask])
        fused = ctx.fusion(texts, masks, VisualInput.cat([ctx.visual, ctx.visual]))  # [2B, L, H]
        logits = ctx.head(self.head)(fused[:, 0]).float()  # [2B, 2]
        labels = torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(b, dtype=torch.long)]).to(logits.device)
        keep = torch.cat([torch.ones(b, dtype=torch.bool, device=logits.device), neg.valid]).float()
        ce = F.cross_entropy(logits, labels, reduction="none")
        with torch.no_grad():
            margin = logits[:, 1] - logits[:, 0]
            right = (margin[:b] > margin[b:]).float() * neg.valid.float()
            n = neg.valid.float().sum()
            ctx.stats["edited_valid"] = n
            ctx.stats["edited_pair_acc"] = right.sum() / n.clamp(min=1)
        return (ce * keep).sum() / keep.sum()
