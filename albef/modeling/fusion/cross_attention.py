"""Fusion encoder: BERT-style layers with cross-attention to image tokens.

Each layer is post-LN BERT: self-attention -> cross-attention (queries from text,
keys/values from image tokens) -> feed-forward, every sub-block followed by
dropout, residual and LayerNorm. Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` (fused kernels where the
hardware has them).

Parameter names mirror a BERT layer (``attention.self.query``,
``crossattention.output.LayerNorm``, ``intermediate.dense``, ...), so
``fusion.layer.i.*`` corresponds one-to-one to ``bert.encoder.layer.{n_text + i}.*``
of BERT and of the official ALBEF checkpoints.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn



class _QKV(nn.Module):
    """``query`` from the text width, ``key``/``value`` from the (possibly different) context width."""

    def __init__(self, hidden: int, context_width: int, num_heads: int, attn_dropout: float):
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden size {hidden} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(context_width, hidden)
        self.value = nn.Linear(context_width, hidden)
        self.attn_dropout = attn_dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, S, H] -> [B, h, S, d]
        b, s, _ = x.shape
        return x.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, L, H]; context [B, S, C]; context_mask [B, S] (1 = attend) -> [B, L, H]."""
        q, k, v = self._split(self.query(x)), self._split(self.key(context)), self._split(self.value(context))
        attn_mask = None
        if context_mask is not None:
            attn_mask = context_mask[:, None, None, :].to(torch.bool)  # [B, 1, 1, S]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        b, _, l, _ = out.shape
        return out.transpose(1, 2).reshape(b, l, self.num_heads * self.head_dim)


class _AddNorm(nn.Module):
    def __init__(self, in_width: int, hidden: int, eps: float, dropout: float):
        super().__init__()
        self.dense = nn.Linear(in_width, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class _Attention(nn.Module):
    def __init__(self, hidden: int, context_width: int, num_heads: int, eps: float, dropout: float, attn_dropout: float):
        super().__init__()
        self.self = _QKV(hidden, context_width, num_heads, attn_dropout)
        self.output = _AddNorm(hidden, hidden, eps, dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, context, context_mask), x)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.dense = nn.Linear(hidden, ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class FusionLayer(nn.Module):
    def __init__(self, hidden: int, encoder_width: int, num_heads: int, ffn: int, eps: float, dropout: float, attn_dropout: float):
        super().__init__()
        self.attention = _Attention(hidden, hidden, num_heads, eps, dropout, attn_dropout)
        self.crossattention = _Attention(hidden, encoder_width, num_heads, eps, dropout, attn_dropout)
        self.intermediate = _Intermediate(hidden, ffn)
        self.output = _AddNorm(ffn, hidden, eps, dropout)

    def forward(self, x: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, image_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, x, text_mask)
        x = self.crossattention(x, image, image_mask)
        return self.output(self.intermediate(x), x)


class CrossAttentionFusion(nn.Module):
    """``forward(text_embeds [B, L, H], text_mask [B, L], image_embeds [B, N, Dv], image_mask [B, N] | None) -> [B, L, H]``.

    Args:
        num_layers: fusion layers (6 in the paper: BERT layers 6-11).
        num_heads, intermediate_size, hidden_dropout_prob, attention_probs_dropout_prob,
        layer_norm_eps: default to the text encoder's BERT config.
        hidden_size, encoder_width, text_config: supplied by the model builder.
    """

    def __init__(
        self,
        num_layers: int = 6,
        num_heads: int | None = None,
        intermediate_size: int | None = None,
        hidden_dropout_prob: float | None = None,
        attention_probs_dropout_prob: float | None = None,
        layer_norm_eps: float | None = None,
        initializer_range: float | None = None,
        hidden_size: int = 768,
        encoder_width: int = 768,
        text_config=None,
    ):
        super().__init__()

        def pick(value, attr, default):
            if value is not None:
                return value
            return getattr(text_config, attr, default) if text_config is not None else default

        heads = pick(num_heads, "num_attention_heads", 12)
        ffn = pick(intermediate_size, "intermediate_size", 4 * hidden_size)
        dropout = pick(hidden_dropout_prob, "hidden_dropout_prob", 0.1)
        attn_dropout = pick(attention_probs_dropout_prob, "attention_probs_dropout_prob", 0.1)
        eps = pick(layer_norm_eps, "layer_norm_eps", 1e-12)
        self.initializer_range = pick(initializer_range, "initializer_range", 0.02)
        self.hidden_size = hidden_size
        self.encoder_width = encoder_width
        self.layer = nn.ModuleList(
            FusionLayer(hidden_size, encoder_width, heads, ffn, eps, dropout, attn_dropout) for _ in range(num_layers)
        )
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        # BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm.
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=self.initializer_range)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(
        self,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor,
        image_embeds: torch.Tensor,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = text_embeds
        for layer in self.layer:
            x = layer(x, text_mask, image_embeds, image_mask)
        return x
