"""What one step knows, handed to every objective.

Objectives never see the model. :meth:`ALBEF.context <albef.modeling.meta_arch.albef.ALBEF.context>`
encodes the batch once -- the student's images and texts, and what the objectives need of
the momentum teacher (:class:`~albef.modeling.teachers.base.TeacherOutput`) -- and hands
the results, with the few modules an objective runs itself (the fusion encoder, the text
encoder for MLM's masked copy, the heads), to every objective as one :class:`StepContext`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from albef.modeling.fusion.visual import VisualInput
from albef.registry import ComponentError


class MissingHeadError(ComponentError):
    """A head was asked for by key and the model has none under that key."""


def find_head(heads: Mapping[str, nn.Module], key: str) -> nn.Module:
    """``heads[key]``, or :class:`MissingHeadError` naming the heads there are."""
    if key not in heads:
        raise MissingHeadError(
            f"this model has no head '{key}' (model.heads.{key}); its heads: {sorted(heads) or 'none'} "
            f"(a head is built only when an objective uses it)"
        )
    return heads[key]


@dataclass
class TextNegatives:
    """The batch's extra false texts (``data.text_negatives``), one per text, online encoder.

    hidden: [B, L, H] text-encoder states; mask: [B, L]; feat: [B, E] normalised feature
    (None without projections); valid: [B] bool, False where a text has no negative (its
    slot holds a placeholder that objectives must drop).
    """

    hidden: torch.Tensor
    mask: torch.Tensor
    feat: torch.Tensor | None
    valid: torch.Tensor


@dataclass
class StepContext:
    """One batch, encoded once (every tensor of the student has gradient).

    batch: the collated batch (``input_ids`` / ``attention_mask`` [B, L], ``image``, ...).
    text_embeds [B, L, H], text_feat [B, E] or None: the batch's texts.
    image_embeds [B, 1+N, Dv], image_feat [B, E] or None: its images (None for K images
        per text, [B, K, 3, H, W]: NLVR2).
    visual: the images as fusion input (one token set, or K), with the fusion's
        cross-attention keys/values attached when an objective fuses (computed once per
        image, shared by every pair it is fused in); None without images.
    fused [B, L, H]: the batch's texts fused with their own images, when an objective asks.
    temp: the 0-d learnable temperature (None without projections).
    teacher: the momentum teacher's encodings of the batch (features + queue, and its
        fusion input when an objective distils through the fusion), or None.
    sim_i2t, sim_t2i [B, B+Q] (float32): online image (text) features against the
        teacher's text (image) features and queue, / temp; computed here when the
        features, the teacher and the temperature are given.
    text_negatives: the batch's false texts through the online text encoder, or None.
    text_encoder, fusion, heads: the student's modules an objective runs itself.
    stats: non-loss statistics objectives report (logged, not optimised).
    """

    batch: dict[str, Any]
    text_embeds: torch.Tensor | None = None
    text_feat: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    image_feat: torch.Tensor | None = None
    visual: VisualInput | None = None
    fused: torch.Tensor | None = None
    temp: torch.Tensor | None = None
    teacher: Any = None  # albef.modeling.teachers.base.TeacherOutput (teachers depend on this module, not back)
    sim_i2t: torch.Tensor | None = None
    sim_t2i: torch.Tensor | None = None
    text_negatives: TextNegatives | None = None
    text_encoder: nn.Module | None = None
    fusion: nn.Module | None = None
    heads: Mapping[str, nn.Module] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        t = self.teacher
        if t is not None and self.temp is not None and getattr(t, "text_feat_all", None) is not None:
            if self.sim_i2t is None and self.image_feat is not None:
                self.sim_i2t = self.image_feat.float() @ t.text_feat_all.float().t() / self.temp
            if self.sim_t2i is None and self.text_feat is not None:
                self.sim_t2i = self.text_feat.float() @ t.image_feat_all.float().t() / self.temp

    def head(self, key: str) -> nn.Module:
        """The student's head ``model.heads.<key>``; :class:`MissingHeadError` if there is none."""
        return find_head(self.heads, key)

    @property
    def batch_size(self) -> int:
        ids = self.batch.get("input_ids")
        return ids.shape[0] if ids is not None else self.image_feat.shape[0]

    @property
    def image_ids(self) -> torch.Tensor | None:
        return self.batch.get("image_id")

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.batch["attention_mask"]
