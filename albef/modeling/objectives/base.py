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

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def heads_used(self) -> tuple[str, ...]:
        """Keys of ``model.heads`` this objective calls."""
        return ()

    def forward(self, ctx: StepContext) -> torch.Tensor | dict[str, torch.Tensor]:
        raise NotImplementedError
