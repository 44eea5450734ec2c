"""Vision encoder: any timm Vision Transformer, returning every token."""
from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from albef.registry import VISION_ENCODER_REGISTRY


@VISION_ENCODER_REGISTRY.register()
class TimmViT(nn.Module):
    """A timm ViT without its classifier.

    ``forward(image [B, 3, H, W]) -> tokens [B, 1 + N, D]``: the final-normed
    [CLS] + patch tokens, as ALBEF's ``VisionTransformer.forward`` returns them.

    Args:
        model_name: a timm model name (``vit_base_patch16_224`` = DeiT-B/16 shape).
        img_size: input resolution; the positional embedding is sized for it.
        model_kwargs: extra ``timm.create_model`` arguments (``patch_size``,
            ``embed_dim``, ``depth``, ``num_heads``, ``drop_path_rate``, ...).
    """

    def __init__(self, model_name: str = "vit_base_patch16_224", img_size: int = 256, model_kwargs: dict[str, Any] | None = None):
        super().__init__()
        kwargs = dict(model_kwargs or {})
        try:
            self.vit = timm.create_model(
                model_name, pretrained=False, img_size=img_size, num_classes=0, global_pool="", **kwargs
            )
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"timm could not build '{model_name}' with img_size={img_size}, {kwargs}: {e}") from e
        if not hasattr(self.vit, "forward_features") or not hasattr(self.vit, "pos_embed"):
            raise ValueError(f"timm model '{model_name}' is not a Vision Transformer")
        self.embed_dim: int = self.vit.embed_dim
        self.img_size = img_size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(image)
