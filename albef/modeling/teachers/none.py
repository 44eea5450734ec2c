"""No teacher: no EMA model, no queue, no distillation (for ablations and tasks without MoD)."""
from __future__ import annotations

import torch
from torch import nn

from albef.modeling.teachers.base import Teacher, TeacherOutput
from albef.registry import TEACHER_REGISTRY


@TEACHER_REGISTRY.register()
class NoTeacher(Teacher):
    """Contrast against the batch's own online features, detached; alpha is 0.

    This is ALBEF with momentum 0 and no queue: ITC becomes in-batch contrast where
    each direction trains the query side, ITM mines negatives from online
    similarities, and MLM learns from hard labels only. ``run`` calls the student's
    function on its own weights, without gradient.
    """

    def __init__(self):
        super().__init__(momentum=0.0, alpha=0.0)

    def attach(self, student: nn.Module, paths=None) -> None:  # nothing to copy
        self.paths = []

    def set_alpha_scale(self, scale: float) -> None:
        pass

    def run(self, student: nn.Module, fn, *args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    @torch.no_grad()
    def encode(self, batch, *, contrastive=True, visual=False, fused=False, image_feat=None, text_feat=None) -> TeacherOutput:
        if visual or fused:
            raise RuntimeError("NoTeacher keeps no momentum model to fuse with (nothing distils without one)")
        if not contrastive:
            return TeacherOutput()
        i, t = image_feat.detach().float(), text_feat.detach().float()
        return TeacherOutput(i, t, i, t, batch.get("image_id"))
