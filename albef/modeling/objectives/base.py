"""Base class of training objectives."""
from __future__ import annotations

import torch
from torch import nn

from albef.modeling.context import StepContext


class Objective(nn.Module):
    """A loss term: ``forward(ctx: StepContext) -> Tensor`` (scalar) or ``dict[str, Tensor]``.

    The model multiplies the returned value(s) by ``weight`` and reports them as
    ``loss_<config key>`` (``loss_<key>_<name>`` for dict returns). Objectives own
    the heads nobody else uses; :meth:`teacher_modules` names modules the momentum
    teacher should keep an EMA copy of (e.g. the MLM head).
    """

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def teacher_modules(self) -> dict[str, nn.Module]:
        return {}

    def forward(self, ctx: StepContext) -> torch.Tensor | dict[str, torch.Tensor]:
        raise NotImplementedError
