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
        pos_embed_init: ``random`` (timm's initialisation) or ``sincos`` (2-D sine-cosine
            values, still learnable): a model trained from scratch then knows where each
            patch is from the first step, as a pretrained ViT does.
        fused_attn: ``null`` (timm's choice: SDPA), ``true`` or ``false`` (attention
            written out as matmuls and a softmax; same values). On a CPU under bf16
            autocast the written-out form is the faster one: PyTorch's CPU flash-attention
            backward in bf16 is several times slower than two bf16 matmuls (measured in
            the README's performance section).
        grad_checkpointing: recompute each block's activations in the backward pass
            instead of keeping them (less memory, ~1/3 more compute).

    Public weights (``model.vision_encoder.pretrained``: a local DeiT/timm file or ``timm``)
    are loaded by the model-level initialisation pass, :mod:`albef.modeling.pretrained`.
    """

    def __init__(self, model_name: str = "vit_base_patch16_224", img_size: int = 256, model_kwargs: dict[str, Any] | None = None, pos_embed_init: str = "random",
                 fused_attn: bool | None = None, grad_checkpointing: bool = False):
        super().__init__()
        kwargs = dict(model_kwargs or {})
        try:
            self.vit = timm.create_model(
                model_name, pretrained=False, img_size=img_size, num_classes=0, global_pool="", **kwargs
            )
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"timm could not build '{model_name}' with img_size={img_size}, {kwargs}: {e}") from e
        self.model_name, self.model_kwargs = model_name, kwargs
        if not hasattr(self.vit, "forward_features") or not hasattr(self.vit, "pos_embed"):
            raise ValueError(f"timm model '{model_name}' is not a Vision Transformer")
        self.embed_dim: int = self.vit.embed_dim
        self.img_size = img_size
        if pos_embed_init not in ("random", "sincos"):
            raise ValueError(f"model.vision_encoder.pos_embed_init must be 'random' or 'sincos', got {pos_embed_init!r}")
        if pos_embed_init == "sincos":  # public weights, when given, replace them afterwards
            self._init_sincos()
        if fused_attn is not None:
            attns = [m for m in self.vit.modules() if hasattr(m, "fused_attn")]
            if not attns:
                raise ValueError(f"model.vision_encoder.fused_attn: timm model '{model_name}' has no attention with a fused_attn switch")
            for m in attns:
                m.fused_attn = bool(fused_attn)
        if grad_checkpointing:
            self.vit.set_grad_checkpointing(True)

    @torch.no_grad()
    def _init_sincos(self) -> None:
        from timm.layers import build_sincos2d_pos_embed

        pe = self.vit.pos_embed  # [1, prefix + N, D]
        grid = list(self.vit.patch_embed.grid_size)
        table = build_sincos2d_pos_embed(grid, dim=self.embed_dim).to(pe.dtype)  # [N, D]
        n_prefix = pe.shape[1] - table.shape[0]
        pe.zero_()
        pe[0, n_prefix:] = table

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(image)
