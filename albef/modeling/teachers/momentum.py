"""Momentum teacher: an EMA copy of the model that supplies distillation targets and the queue."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from albef.modeling.context import TeacherOutput
from albef.modeling.queue import FeatureQueue


class MomentumTeacher(nn.Module):
    """EMA copies of the encoders, projections, fusion and MLM head, plus feature queues.

    As in the official code the copy covers ``visual_encoder``, ``vision_proj``, the
    whole BERT (text layers, fusion layers and MLM head) and ``text_proj``; the ITM
    head has no copy. ``update(student)`` does ``p_m = m * p_m + (1 - m) * p`` with
    foreach kernels; the trainer calls it after every optimizer step, which is the
    same sequence as the official "update at the start of the next forward".

    Args:
        momentum: EMA coefficient m.
        queue_size: Q, the number of past momentum features kept (0 = no queue).
        alpha: distillation weight after the ramp; the trainer's alpha hook sets
            :attr:`current_alpha` = alpha * ramp(iteration).
        embed_dim: supplied by the model builder.
    """

    def __init__(self, momentum: float = 0.995, queue_size: int = 65536, alpha: float = 0.4, embed_dim: int = 256):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"model.teacher.momentum must be in [0, 1], got {momentum}")
        if queue_size < 0:
            raise ValueError(f"model.teacher.queue_size must be >= 0, got {queue_size}")
        self.momentum = float(momentum)
        self.alpha = float(alpha)
        self.current_alpha = float(alpha)
        self.queue = FeatureQueue(queue_size, embed_dim)
        self.model: nn.ModuleDict | None = None

    def attach(self, student: nn.ModuleDict) -> None:
        """Make the EMA copy of ``student`` (one deepcopy, so tied weights stay tied)."""
        self.model = copy.deepcopy(student)
        for p in self.model.parameters():
            p.requires_grad_(False)

    def set_alpha_scale(self, scale: float) -> None:
        self.current_alpha = self.alpha * float(scale)

    def _param_pairs(self, student: nn.ModuleDict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        teacher_params, student_params, seen = [], [], set()
        for key, module_m in self.model.items():
            for p_m, p in zip(module_m.parameters(), student[key].parameters()):
                if id(p_m) in seen:  # tied weights (MLM decoder = word embeddings) move once
                    continue
                seen.add(id(p_m))
                teacher_params.append(p_m.data)
                student_params.append(p.data)
        return teacher_params, student_params

    @torch.no_grad()
    def update(self, student: nn.ModuleDict) -> None:
        teacher_params, student_params = self._param_pairs(student)
        torch._foreach_mul_(teacher_params, self.momentum)
        torch._foreach_add_(teacher_params, student_params, alpha=1.0 - self.momentum)

    @torch.no_grad()
    def forward(self, batch: dict, image_feat: torch.Tensor, text_feat: torch.Tensor) -> TeacherOutput:
        m = self.model
        image_embeds_m = m["vision_encoder"](batch["image"])
        image_feat_m = F.normalize(m["vision_proj"](image_embeds_m[:, 0]).float(), dim=-1)
        text_embeds_m = m["text_encoder"](batch["input_ids"], batch["attention_mask"])
        text_feat_m = F.normalize(m["text_proj"](text_embeds_m[:, 0]).float(), dim=-1)
        idx = batch.get("image_id")
        q = self.queue
        return TeacherOutput(
            image_feat_m=image_feat_m,
            text_feat_m=text_feat_m,
            image_feat_all=torch.cat([image_feat_m, q.image_queue.float()]),
            text_feat_all=torch.cat([text_feat_m, q.text_queue.float()]),
            idx_all=None if idx is None else torch.cat([idx, q.idx_queue]),
            image_embeds_m=image_embeds_m,
            alpha=self.current_alpha,
        )

    def has_module(self, key: str) -> bool:
        return self.model is not None and key in self.model

    @torch.no_grad()
    def mlm_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds_m: torch.Tensor) -> torch.Tensor:
        """Teacher MLM logits [B, L, V] for (masked) ``input_ids`` [B, L] attending to its own image tokens."""
        m = self.model
        text = m["text_encoder"](input_ids, attention_mask)
        return m["mlm_head"](m["fusion"](text, attention_mask, image_embeds_m))

    @torch.no_grad()
    def enqueue(self, out: TeacherOutput, image_ids: torch.Tensor | None) -> None:
        self.queue.enqueue(out.image_feat_m, out.text_feat_m, image_ids)
