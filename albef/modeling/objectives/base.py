"""Base class of training objectives."""
from __future__ import annotations

import torch
from torch import nn

from albef.modeling.context import StepContext


class Objective(nn.Module):
    """A loss term: ``forward(ctx: StepContext) -> Tensor`` (scalar) or ``dict[str, Tensor]``.

    The model multiplies the returned value(s) by ``weight`` and reports them as
    ``loss_<config key>`` (``loss_<key>_<name>`` for dict returns). Objectives own no
    heads: they look them up by key through ``ctx.head(key)`` (``model.heads.<key>``) and
    name them in :meth:`heads_used`, so the model builds exactly the heads its objectives
    use. Non-loss statistics go to ``ctx.stats`` (logged, not optimised).
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

    def distillation(self, ctx: StepContext) -> tuple[float | torch.Tensor, bool]:
        """(this step's alpha for this objective, whether to compute its distillation term)."""
        return ctx.alpha_for(self.alpha)

    def heads_used(self) -> tuple[str, ...]:
        """Keys of ``model.heads`` this objective calls."""
        return ()

    def forward(self, ctx: StepContext) -> torch.Tensor | dict[str, torch.Tensor]:
        raise NotImplementedError
