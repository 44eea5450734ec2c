"""The base model: encoders, fusion and projections, and the functions every task uses.

This is ALBEF without any task: ``encode_image``/``encode_text`` (the *align* half:
unimodal tokens and, when the model has projections, normalised features for ITC),
``encode_visual`` (one or several images as fusion input) and ``fuse`` (the *fuse* half).
Task models (:mod:`albef.modeling.meta_arch.albef`) add heads, objectives and a teacher.
"""
from __future__ import annotations

import torch
from torch import nn

from albef.modeling import encoding
from albef.modeling.fusion.visual import VisualInput
from albef.modeling.inference import InferenceMixin
from albef.registry import FUSION_REGISTRY, TEXT_ENCODER_REGISTRY, VISION_ENCODER_REGISTRY, build_component


def build_base_components(vision_encoder: dict, text_encoder: dict, fusion: dict, vocab_size: int | None = None, pad_token_id: int = 0) -> dict[str, nn.Module]:
    """The three components of the base model from their config nodes."""
    vis = build_component(VISION_ENCODER_REGISTRY, vision_encoder, where="model.vision_encoder")
    txt = build_component(
        TEXT_ENCODER_REGISTRY, text_encoder, where="model.text_encoder", vocab_size=vocab_size, pad_token_id=pad_token_id
    )
    fus = build_component(
        FUSION_REGISTRY, fusion, where="model.fusion",
        hidden_size=txt.hidden_size, encoder_width=vis.embed_dim, text_config=getattr(txt, "config", None),
    )
    return {"vision_encoder": vis, "text_encoder": txt, "fusion": fus}


class ALBEFModel(InferenceMixin, nn.Module):
    """Vision encoder, text encoder, fusion encoder; projections and a temperature when
    ``embed_dim`` is set (contrastive tasks), none otherwise (SNLI-VE, NLVR2 classifiers).

    The encode functions are those of :mod:`albef.modeling.encoding` on this model's
    modules (the momentum teacher runs the same functions on its EMA copies); the
    inference methods (features, similarity, match, classify, answer, Grad-CAM) come from
    :class:`~albef.modeling.inference.InferenceMixin` and are what the evaluators call.
    """

    def __init__(
        self,
        *,
        vision_encoder: nn.Module,
        text_encoder: nn.Module,
        fusion: nn.Module,
        embed_dim: int | None = 256,
        temp: float = 0.07,
        temp_min: float = 0.001,
        temp_max: float = 0.5,
    ):
        super().__init__()
        self.vision_encoder = vision_encoder
        self.text_encoder = text_encoder
        self.fusion = fusion
        self.embed_dim = embed_dim
        if embed_dim:
            self.vision_proj = nn.Linear(vision_encoder.embed_dim, embed_dim)
            self.text_proj = nn.Linear(text_encoder.hidden_size, embed_dim)
            self.temp = nn.Parameter(torch.tensor(float(temp)))
        else:
            self.vision_proj = self.text_proj = None
            self.temp = None
        self.temp_min, self.temp_max = float(temp_min), float(temp_max)

    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """image [B, 3, H, W] -> (tokens [B, 1+N, Dv], normalised feature [B, E] or None)."""
        return encoding.encode_image(self, image)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ids, mask [B, L] -> (hidden [B, L, H], normalised feature [B, E] or None)."""
        return encoding.encode_text(self, input_ids, attention_mask)

    def encode_visual(self, images: torch.Tensor) -> VisualInput:
        """images [B, 3, H, W] (one per text) or [B, K, 3, H, W] (K per text: NLVR2's pair) -> a
        VisualInput of K token sets [B, 1+N, Dv] (:func:`albef.modeling.encoding.encode_images`)."""
        return encoding.encode_images(self, images)[0]

    def prepare_visual(self, visual: VisualInput | torch.Tensor) -> VisualInput:
        """``visual`` with the fusion encoder's cross-attention keys and values of every
        image computed once (when the fusion can), for reuse by every pair that image is
        fused in; unchanged otherwise. Same values either way."""
        return encoding.prepare_visual(self.fusion, VisualInput.of(visual))

    def fuse(self, text_embeds: torch.Tensor, text_mask: torch.Tensor, visual: VisualInput | torch.Tensor) -> torch.Tensor:
        """text [B, L, H], mask [B, L], visual (VisualInput or tokens [B, N, Dv]) -> fused [B, L, H]."""
        return self.fusion(text_embeds, text_mask, VisualInput.of(visual))

    def clamp_temperature(self) -> None:
        if self.temp is not None:
            with torch.no_grad():
                self.temp.clamp_(self.temp_min, self.temp_max)
