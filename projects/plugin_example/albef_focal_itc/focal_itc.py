"""A focal variant of ALBEF's image-text contrastive loss.

Focal loss (Lin et al., 2017) down-weights the pairs the model already gets right:
each target column j contributes ``-q_ij (1 - p_ij)^gamma log p_ij`` instead of
``-q_ij log p_ij``, where ``p = softmax(sim / temp)`` over the batch plus the queue and
``q`` is ITC's target distribution (ground truth mixed with the momentum teacher's
softmax when distillation is on). ``gamma = 0`` is exactly albef's ``ITCLoss``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from albef.modeling.context import StepContext
from albef.modeling.objectives.base import Objective
from albef.modeling.objectives.itc import itc_targets
from albef.registry import OBJECTIVE_REGISTRY


def focal_soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """logits, targets [B, C] -> mean over rows of ``-sum_j q_ij (1 - p_ij)^gamma log p_ij``."""
    logp = F.log_softmax(logits.float(), dim=1)
    # (1 - p)^gamma is part of the loss (it is differentiated, as in the original focal loss)
    weight = (1 - logp.exp()).clamp(min=0).pow(gamma) if gamma != 0 else 1.0
    return -(weight * logp * targets).sum(dim=1).mean()


@OBJECTIVE_REGISTRY.register()
class FocalITCLoss(Objective):
    """Config: ``model.objectives.<key>={name: FocalITCLoss, gamma: 2.0, weight: 1.0}``.

    Uses the step's ITC similarities ``ctx.sim_i2t`` / ``ctx.sim_t2i`` [B, B+Q] and the
    teacher's targets, so it works beside or instead of ``ITCLoss`` and with any teacher.
    """

    def __init__(self, weight: float = 1.0, gamma: float = 2.0):
        super().__init__(weight)
        if gamma < 0:
            raise ValueError(f"FocalITCLoss: gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def needs(self, distill: bool) -> frozenset[str]:
        return frozenset({"contrastive"})  # the teacher's features and the similarities

    def forward(self, ctx: StepContext, alpha=None) -> torch.Tensor:
        tgt_i2t, tgt_t2i = itc_targets(ctx, alpha)  # the same targets as ITC (ground truth + distillation)
        return (focal_soft_cross_entropy(ctx.sim_i2t, tgt_i2t, self.gamma) + focal_soft_cross_entropy(ctx.sim_t2i, tgt_t2i, self.gamma)) / 2
