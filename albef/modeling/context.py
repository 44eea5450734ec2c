"""What one training step knows, handed to every objective."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from albef.modeling.meta_arch.albef import ALBEF


@dataclass
class TeacherOutput:
    """Targets from the teacher for one batch (all without gradient).

    image_feat_m, text_feat_m: [B, E] momentum (or detached online) features.
    image_feat_all, text_feat_all: [B + Q, E] = batch features then the queue.
    idx_all: [B + Q] image ids (-100 = unknown) or None when the batch has no ids.
    image_embeds_m: [B, 1+N, Dv] momentum image tokens, or None (no teacher model).
    alpha: distillation weight for this step (0 = no distillation).
    """

    image_feat_m: torch.Tensor
    text_feat_m: torch.Tensor
    image_feat_all: torch.Tensor
    text_feat_all: torch.Tensor
    idx_all: torch.Tensor | None
    image_embeds_m: torch.Tensor | None
    alpha: float


@dataclass
class StepContext:
    """Online outputs of one batch plus lazily computed, cached similarities.

    image_embeds [B, 1+N, Dv], text_embeds [B, L, H], image_feat/text_feat [B, E]
    (L2-normalised), temp: 0-dim learnable temperature.
    """

    model: "ALBEF"
    batch: dict[str, Any]
    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    image_feat: torch.Tensor
    text_feat: torch.Tensor
    temp: torch.Tensor
    teacher: TeacherOutput
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    _cache: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.image_feat.shape[0]

    @property
    def image_ids(self) -> torch.Tensor | None:
        return self.batch.get("image_id")

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.batch["attention_mask"]

    @property
    def sim_i2t(self) -> torch.Tensor:
        """[B, B+Q]: online image features vs teacher text features + queue, / temp (float32)."""
        if "sim_i2t" not in self._cache:
            self._cache["sim_i2t"] = self.image_feat.float() @ self.teacher.text_feat_all.float().t() / self.temp
        return self._cache["sim_i2t"]

    @property
    def sim_t2i(self) -> torch.Tensor:
        """[B, B+Q]: online text features vs teacher image features + queue, / temp (float32)."""
        if "sim_t2i" not in self._cache:
            self._cache["sim_t2i"] = self.text_feat.float() @ self.teacher.image_feat_all.float().t() / self.temp
        return self._cache["sim_t2i"]
