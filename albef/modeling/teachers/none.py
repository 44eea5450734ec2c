"""No teacher: no EMA model, no queue, no distillation (for ablations)."""
from __future__ import annotations

import torch
from torch import nn

from albef.modeling.context import TeacherOutput


class NoTeacher(nn.Module):
    """Contrast against the batch's own online features, detached; alpha is 0.

    This is ALBEF with momentum 0 and no queue: ITC becomes in-batch contrast where
    each direction trains the query side, ITM mines negatives from online
    similarities, and MLM learns from hard labels only.
    """

    def __init__(self):
        super().__init__()
        self.current_alpha = 0.0
        self.alpha = 0.0

    def attach(self, student: nn.ModuleDict) -> None:  # nothing to copy
        pass

    def set_alpha_scale(self, scale: float) -> None:
        pass

    def update(self, student: nn.ModuleDict) -> None:
        pass

    def has_module(self, key: str) -> bool:
        return False

    @torch.no_grad()
    def forward(self, batch: dict, image_feat: torch.Tensor, text_feat: torch.Tensor) -> TeacherOutput:
        i, t = image_feat.detach().float(), text_feat.detach().float()
        return TeacherOutput(i, t, i, t, batch.get("image_id"), None, 0.0)

    def enqueue(self, out: TeacherOutput, image_ids: torch.Tensor | None) -> None:
        pass
