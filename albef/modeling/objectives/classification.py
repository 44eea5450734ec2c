"""Classification of the fused [CLS] token (SNLI-VE, NLVR2) with momentum distillation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from albef.modeling.context import StepContext
from albef.modeling.objectives.base import Objective
from albef.registry import OBJECTIVE_REGISTRY


@OBJECTIVE_REGISTRY.register()
class ClassificationLoss(Objective):
    """Cross-entropy of ``head(fused [CLS])`` against ``batch[label_key]`` (paper §2.11, §2.10).

    The text is fused with the batch's image(s) -- one image for SNLI-VE, the image pair
    of NLVR2 (``image`` [B, 2, 3, H, W]) -- and the head classifies the fused [CLS].
    With momentum distillation (alpha > 0 and an EMA copy of the head), the targets mix
    in the teacher's prediction on the same inputs, as the official ``model_ve`` /
    ``model_nlvr``::

        loss = (1 - alpha) * CE(logits, y) - alpha * mean_rows sum_c softmax(logits_m)_c log_softmax(logits)_c

    Args:
        head: key of the classifier in ``model.heads``.
        label_key: batch entry holding the class indices [B] (long).
        alpha: this objective's own distillation weight (null: the teacher's).
    """

    def __init__(self, weight: float = 1.0, head: str = "cls", label_key: str = "label", alpha: float | None = None):
        super().__init__(weight)
        self.head, self.label_key = head, label_key
        self._set_alpha(alpha)

    def heads_used(self) -> tuple[str, ...]:
        return (self.head,)

    def needs(self, distill: bool) -> frozenset[str]:
        return frozenset({"fused", "teacher_fused"} if distill else {"fused"})

    def forward(self, ctx: StepContext, alpha: float | torch.Tensor | None = None) -> torch.Tensor:
        labels = ctx.batch[self.label_key]
        logits = ctx.head(self.head)(ctx.fused[:, 0]).float()  # [B, C]
        loss = F.cross_entropy(logits, labels)
        if alpha is not None:
            with torch.no_grad():
                soft = F.softmax(ctx.teacher.head(self.head)(ctx.teacher.fused[:, 0]).float(), dim=1)
            loss = (1 - alpha) * loss - alpha * (F.log_softmax(logits, dim=1) * soft).sum(dim=1).mean()
        return loss
