"""Momentum teacher: an EMA copy of the model that supplies distillation targets and the queue."""
from __future__ import annotations

import torch

from albef.modeling.encoding import encode_images, encode_text, prepare_visual
from albef.modeling.queue import FeatureQueue
from albef.modeling.teachers.base import Teacher, TeacherOutput
from albef.registry import TEACHER_REGISTRY


@TEACHER_REGISTRY.register()
class MomentumTeacher(Teacher):
    """EMA copies of the encoders, projections, fusion and the heads that ask for one, plus
    feature queues (see :class:`~albef.modeling.teachers.base.Teacher`).

    As in the official code the copy covers ``visual_encoder``, ``vision_proj``, the whole
    BERT (text layers, fusion layers and MLM head) and ``text_proj``; the ITM head has no
    copy; task heads (SNLI-VE / NLVR2 classifiers) have one. The trainer calls
    ``update`` after every optimizer step, which is the same sequence as the official
    "update at the start of the next forward".

    Args:
        momentum: EMA coefficient m.
        queue_size: Q, the number of past momentum features kept for ITC (0 = no queue and
            no queue buffers, as the official models of tasks without ITC).
        alpha: distillation weight after the ramp.
        embed_dim: supplied by the model builder (null when the model has no projections).
    """

    def __init__(self, momentum: float = 0.995, queue_size: int = 65536, alpha: float = 0.4, embed_dim: int | None = 256):
        super().__init__(momentum=momentum, alpha=alpha)
        if queue_size < 0:
            raise ValueError(f"model.teacher.queue_size must be >= 0, got {queue_size}")
        if queue_size > 0 and not embed_dim:
            raise ValueError("model.teacher.queue_size > 0 needs projections (model.embed_dim); set queue_size: 0")
        self.queue = FeatureQueue(queue_size, embed_dim) if queue_size > 0 else None

    @torch.no_grad()
    def encode(self, batch, *, contrastive=True, visual=False, fused=False, image_feat=None, text_feat=None) -> TeacherOutput:
        m = self.model
        mask = batch["attention_mask"]
        text_first = fused and not contrastive  # the order the fused-state objectives (VE, NLVR2, VQA) encoded in
        if text_first:
            text_embeds_m, text_feat_m = encode_text(m, batch["input_ids"], mask)
        vis, _, image_feat_m = encode_images(m, batch["image"])
        out = TeacherOutput(modules=m)
        if contrastive:
            text_embeds_m, text_feat_m = encode_text(m, batch["input_ids"], mask)
            idx = batch.get("image_id")
            out.image_feat_m, out.text_feat_m = image_feat_m, text_feat_m
            if self.queue is None:
                out.image_feat_all, out.text_feat_all, out.idx_all = image_feat_m, text_feat_m, idx
            else:
                q = self.queue
                out.image_feat_all = torch.cat([image_feat_m, q.image_queue.float()])
                out.text_feat_all = torch.cat([text_feat_m, q.text_queue.float()])
                out.idx_all = None if idx is None else torch.cat([idx, q.idx_queue])
        if visual or fused:
            out.visual = prepare_visual(m.fusion, vis)
        if fused:
            out.fused = m.fusion(text_embeds_m, mask, out.visual)
        return out

    @torch.no_grad()
    def enqueue(self, state: dict[str, torch.Tensor]) -> None:
        if self.queue is not None and "image_feat_m" in state:
            self.queue.enqueue(state["image_feat_m"], state["text_feat_m"], state.get("image_id"))
