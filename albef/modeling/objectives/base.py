"""Base class of training objectives."""
from __future__ import annotations

import torch
from torch import nn

from albef.modeling.context import StepContext

#: What an objective may ask the step to compute for it (:meth:`Objective.needs`):
#: ``contrastive`` the teacher's features, queue and the similarities ``sim_i2t``/``sim_t2i``;
#: ``visual`` the student's fusion input (cross-attention keys/values once per image);
#: ``fused`` the student's fused states of the batch's pairs; ``teacher_visual`` /
#: ``teacher_fused`` the same on the teacher's weights; ``text_negatives`` the batch's
#: false texts through the text encoder.
NEEDS = frozenset({"contrastive", "visual", "fused", "teacher_visual", "teacher_fused", "text_negatives"})


class Objective(nn.Module):
    """A loss term: ``forward(ctx: StepContext, alpha) -> Tensor`` (scalar) or ``dict[str, Tensor]``.

    ``alpha`` is this step's distillation weight for this objective (a float or a 0-d
    tensor), or None when it must not distil (no teacher, alpha 0, or no EMA copy of its
    head). The model multiplies the returned value(s) by ``weight`` and reports them as
    ``loss_<config key>`` (``loss_<key>_<name>`` for dict returns). Objectives own no
    heads: they look them up by key through ``ctx.head(key)`` (``model.heads.<key>``) and
    name them in :meth:`heads_used`, so the model builds exactly the heads its objectives
    use; what else they read is named by :meth:`needs`. Non-loss statistics go to
    ``ctx.stats`` (logged, not optimised).
    """

    #: This objective's own distillation weight (objectives that distil take an ``alpha``
    #: argument): None = the teacher's alpha; a number replaces it for this objective only,
    #: on the same ramp (``alpha * ramp(iteration)``), so ITC-MoD and MLM-MoD can be ablated
    #: separately. 0 switches this objective's distillation off.
    alpha: float | None = None

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def _set_alpha(self, alpha: float | None) -> None:
        if alpha is not None:
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
                raise ValueError(f"alpha must be a number in [0, 1] or null (the teacher's), got {alpha!r}")
            alpha = float(alpha)
        self.alpha = alpha

    def heads_used(self) -> tuple[str, ...]:
        """Keys of ``model.heads`` this objective calls."""
        return ()

    def needs(self, distill: bool) -> frozenset[str]:
        """What of :data:`NEEDS` this objective reads from the context (``distill``: whether
        it distils this step). The batch's texts and images are always encoded."""
        return frozenset()

    def forward(self, ctx: StepContext, alpha: float | torch.Tensor | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        raise NotImplementedError
