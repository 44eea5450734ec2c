"""The *align* half of ALBEF as plain functions of a set of modules.

``mods`` is anything with the attributes ``vision_encoder``, ``text_encoder`` and, when the
model has projections, ``vision_proj`` / ``text_proj``: the model itself, or the momentum
teacher's EMA copies (a ``ModuleDict`` with the same names). So the student and the
teacher run one and the same code, and neither needs the other's weights swapped in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from albef.modeling.fusion.visual import VisualInput


def encode_image(mods, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """image [B, 3, H, W] -> (tokens [B, 1+N, Dv], normalised feature [B, E] or None)."""
    embeds = mods.vision_encoder(image)
    proj = getattr(mods, "vision_proj", None)
    return embeds, (F.normalize(proj(embeds[:, 0]).float(), dim=-1) if proj is not None else None)


def encode_text(mods, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ids, mask [B, L] -> (hidden [B, L, H], normalised feature [B, E] or None)."""
    embeds = mods.text_encoder(input_ids, attention_mask)
    proj = getattr(mods, "text_proj", None)
    return embeds, (F.normalize(proj(embeds[:, 0]).float(), dim=-1) if proj is not None else None)


def encode_images(mods, images: torch.Tensor) -> tuple[VisualInput, torch.Tensor | None, torch.Tensor | None]:
    """The batch's images as fusion input: ``(visual, tokens, feature)``.

    images [B, 3, H, W] (one per text): one token set, and its tokens [B, 1+N, Dv] and
    feature [B, E] (None without projections). images [B, K, 3, H, W] (K per text: NLVR2's
    pair): K token sets, tokens and feature None. The K images go through the vision
    encoder in one batch of K*B, as the official NLVR2 model does.
    """
    if images.dim() == 4:
        tokens, feat = encode_image(mods, images)
        return VisualInput.of(tokens), tokens, feat
    if images.dim() != 5:
        raise ValueError(f"images must be [B, 3, H, W] or [B, K, 3, H, W], got {list(images.shape)}")
    b, k = images.shape[:2]
    tokens = mods.vision_encoder(images.transpose(0, 1).flatten(0, 1))  # [K*B, 1+N, Dv], image k of every row together
    return VisualInput(tuple(tokens.view(k, b, *tokens.shape[1:]).unbind(0)), (None,) * k), None, None


def prepare_visual(fusion, visual: VisualInput) -> VisualInput:
    """``visual`` with the fusion encoder's cross-attention keys and values of every image
    computed once (when the fusion can: ``project_visual``), for reuse by every pair that
    image is fused in; unchanged otherwise. Same values either way."""
    project = getattr(fusion, "project_visual", None)
    return project(visual) if callable(project) else visual
