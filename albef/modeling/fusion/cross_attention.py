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

The visual side is a :class:`~albef.modeling.fusion.visual.VisualInput`: one token set
(an image) or several (NLVR2's two images). With K sets, layer i cross-attends to set
``i % K`` -- the official NLVR2 model's routing, where BERT layer l >= 6 attends to image
``(l - 6) % 2`` -- and ``share_cross_kv`` ties the cross-attention key and value of
layers (2k, 2k+1), as the official ``share_cross_attention``.
"""
from __future__ import annotations

from typing import Collection

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from albef.modeling.fusion.visual import CrossKV, VisualInput
from albef.registry import FUSION_REGISTRY


ATTN_IMPLEMENTATIONS = ("sdpa", "explicit")


def check_attn_implementation(value: str, where: str = "model.fusion.attn_implementation") -> str:
    if value not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"{where} must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, got {value!r}")
    return value


class _QKV(nn.Module):
    """``query`` from the text width, ``key``/``value`` from the (possibly different) context width.

    Attention has two implementations with the same weights and values (``impl``):

    * ``sdpa`` (default): ``F.scaled_dot_product_attention``, fused kernels where the
      hardware has them; its attention probabilities are never materialised;
    * ``explicit``: softmax(q k^T / sqrt(d)) v written out. With ``keep_attention`` set,
      the probabilities [B, heads, L, S] are kept in :attr:`attention_probs` and, when
      they require grad, their gradient is retained (Grad-CAM reads both).

    ``keep_attention`` forces the explicit path for that call only (SDPA cannot return
    probabilities); :func:`albef.modeling.gradcam.keep_attention` sets it on one layer.
    """

    def __init__(self, hidden: int, context_width: int, num_heads: int, attn_dropout: float, impl: str = "sdpa", causal: bool = False):
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden size {hidden} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(context_width, hidden)
        self.value = nn.Linear(context_width, hidden)
        self.attn_dropout = attn_dropout
        self.impl = check_attn_implementation(impl)
        self.causal = bool(causal)
        self.keep_attention = False
        self.attention_probs: torch.Tensor | None = None

    def _mask(self, context_mask: torch.Tensor | None, l: int, s: int, device) -> torch.Tensor | None:
        """Boolean [B or 1, 1, L or 1, S] mask (True = attend), or None."""
        attn_mask = None
        if context_mask is not None:
            attn_mask = context_mask[:, None, None, :].to(torch.bool)  # [B, 1, 1, S]
        if self.causal:  # position i sees positions <= i (the answer decoder's self-attention)
            tri = torch.ones(l, s, dtype=torch.bool, device=device).tril()[None, None]
            attn_mask = tri if attn_mask is None else attn_mask & tri
        return attn_mask

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context [B, S, C] -> (keys, values), each [B, heads, S, d]."""
        shape = (*context.shape[:2], self.num_heads, self.head_dim)
        return self.key(context).view(shape).transpose(1, 2), self.value(context).view(shape).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x [B, L, H]; context [B, S, C]; context_mask [B, S] (1 = attend) -> [B, L, H].
        ``kv``: this context's keys and values, already projected (:meth:`project_kv`)."""
        k, v = kv if kv is not None else self.project_kv(context)
        q = self.query(x).view(*x.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)  # [B, heads, L, d]
        attn_mask = self._mask(context_mask, q.shape[2], k.shape[2], q.device)
        p_drop = self.attn_dropout if self.training else 0.0
        if self.impl == "sdpa" and not self.keep_attention:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p_drop)
        else:
            scores = (q @ k.transpose(-2, -1)) * (self.head_dim ** -0.5)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            probs = scores.softmax(dim=-1)
            if self.keep_attention:
                self.attention_probs = probs
                if probs.requires_grad:
                    probs.retain_grad()
            out = F.dropout(probs, p_drop) @ v if p_drop else probs @ v
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
    def __init__(self, hidden: int, context_width: int, num_heads: int, eps: float, dropout: float, attn_dropout: float, impl: str = "sdpa", causal: bool = False):
        super().__init__()
        self.self = _QKV(hidden, context_width, num_heads, attn_dropout, impl=impl, causal=causal)
        self.output = _AddNorm(hidden, hidden, eps, dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        return self.output(self.self(x, context, context_mask, kv), x)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.dense = nn.Linear(hidden, ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class FusionLayer(nn.Module):
    """Post-LN BERT layer with cross-attention. ``causal``: the self-attention sees only
    earlier positions (a decoder layer: BERT's ``is_decoder``)."""

    def __init__(self, hidden: int, encoder_width: int, num_heads: int, ffn: int, eps: float, dropout: float, attn_dropout: float,
                 impl: str = "sdpa", causal: bool = False):
        super().__init__()
        self.attention = _Attention(hidden, hidden, num_heads, eps, dropout, attn_dropout, impl=impl, causal=causal)
        self.crossattention = _Attention(hidden, encoder_width, num_heads, eps, dropout, attn_dropout, impl=impl)
        self.intermediate = _Intermediate(hidden, ffn)
        self.output = _AddNorm(ffn, hidden, eps, dropout)

    def forward(self, x: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, image_mask: torch.Tensor | None,
                image_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = self.attention(x, x, text_mask)
        x = self.crossattention(x, image, image_mask, image_kv)
        return self.output(self.intermediate(x), x)


@FUSION_REGISTRY.register()
class CrossAttentionFusion(nn.Module):
    """``forward(text_embeds [B, L, H], text_mask [B, L], visual) -> [B, L, H]``.

    ``visual`` is a :class:`VisualInput` (or a bare tensor [B, N, Dv]: one set, all tokens
    attended).

    Args:
        num_layers: fusion layers (6 in the paper: BERT layers 6-11; 12 for NLVR2).
        num_visual_inputs: how many visual token sets each forward receives (1; 2 for
            NLVR2); layer i attends to set ``i % num_visual_inputs``.
        share_cross_kv: layers (2k, 2k+1) share one cross-attention key and value
            (official NLVR2 / text-assignment models); needs an even ``num_layers``.
        attn_implementation: ``sdpa`` (fused kernels, default) or ``explicit`` (softmax
            written out; same values). Either way one layer can be asked to keep its
            attention probabilities and their gradients (Grad-CAM,
            :func:`albef.modeling.gradcam.keep_attention`), which runs that layer explicitly.
        causal: causal self-attention in every layer (the VQA answer decoder).
        grad_checkpointing: recompute each layer's activations in the backward pass
            instead of keeping them (``torch.utils.checkpoint``; less memory, more compute).
        cache_visual_kv: let :meth:`project_visual` compute each image's cross-attention
            keys and values once per batch, reused by every pair the image is fused in
            (ITM positives and negatives, MLM, re-ranking); the same values as projecting
            per pair. ``false``: :meth:`project_visual` returns its input unchanged.
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
        num_visual_inputs: int = 1,
        share_cross_kv: bool = False,
        attn_implementation: str = "sdpa",
        causal: bool = False,
        cache_visual_kv: bool = True,
        grad_checkpointing: bool = False,
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
            FusionLayer(hidden_size, encoder_width, heads, ffn, eps, dropout, attn_dropout, impl=attn_implementation, causal=causal)
            for _ in range(num_layers)
        )
        self.apply(self._init_weights)
        if num_visual_inputs < 1:
            raise ValueError(f"model.fusion.num_visual_inputs must be >= 1, got {num_visual_inputs}")
        self.num_visual_inputs = int(num_visual_inputs)
        self.cache_visual_kv = bool(cache_visual_kv)
        self.grad_checkpointing = bool(grad_checkpointing)
        self.share_cross_kv = bool(share_cross_kv)
        if self.share_cross_kv:
            if num_layers % 2:
                raise ValueError(f"model.fusion.share_cross_kv needs an even num_layers, got {num_layers}")
            for k in range(0, num_layers, 2):
                a, b = self.layer[k].crossattention.self, self.layer[k + 1].crossattention.self
                a.key, a.value = b.key, b.value  # one Linear each: both layers' keys name the same tensors

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
        visual: VisualInput | torch.Tensor,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        visual = VisualInput.of(visual, None if image_mask is None else [image_mask])
        k = visual.num_sets
        if k != self.num_visual_inputs:
            raise ValueError(
                f"the fusion encoder was built for {self.num_visual_inputs} visual input(s) per text "
                f"(model.fusion.num_visual_inputs) but received {k}"
            )
        kv = visual.kv if visual.kv is not None and self._owns(visual.kv) else None
        x = text_embeds
        for i, layer in enumerate(self.layer):
            # layer i attends to image i % K, with its keys/values gathered per pair when they were cached
            if self.grad_checkpointing and torch.is_grad_enabled():
                # the per-pair gather of the cached keys/values happens inside, so it is recomputed, not kept
                x = checkpoint(self._checkpointed_layer, i, x, text_mask, visual, kv, use_reentrant=False)
            else:
                x = layer(x, text_mask, visual.tokens[i % k], visual.masks[i % k], None if kv is None else kv.layer(i))
        return x

    def _checkpointed_layer(self, i: int, x: torch.Tensor, text_mask: torch.Tensor, visual: VisualInput, kv: CrossKV | None) -> torch.Tensor:
        k = visual.num_sets
        return self.layer[i](x, text_mask, visual.tokens[i % k], visual.masks[i % k], None if kv is None else kv.layer(i))

    def _owners(self) -> tuple:
        return tuple(layer.crossattention.self for layer in self.layer)

    def _owns(self, kv: CrossKV) -> bool:
        return len(kv.owner) == len(self.layer) and all(a is b for a, b in zip(kv.owner, self._owners()))

    def project_visual(self, visual: VisualInput | torch.Tensor) -> VisualInput:
        """``visual`` with every layer's cross-attention keys and values attached
        (:class:`CrossKV`), so that pairs indexed from it project no image twice. Returned
        unchanged when ``cache_visual_kv`` is off."""
        visual = VisualInput.of(visual)
        if not self.cache_visual_kv:
            return visual
        k = visual.num_sets
        kvs = [layer.crossattention.self.project_kv(visual.tokens[i % k]) for i, layer in enumerate(self.layer)]
        return VisualInput(visual.tokens, visual.masks, CrossKV(self._owners(), tuple(a for a, _ in kvs), tuple(b for _, b in kvs)))

    def weight_map(self, available: Collection[str]) -> dict[str, str]:
        """How to fill this fusion from a checkpoint with another number of layers.

        ``available``: the checkpoint's keys under this module (``layer.i.*``). With K visual
        inputs and a checkpoint of ``num_layers / K`` layers, layer j takes source layer
        ``j // K``: each pretrained fusion layer is duplicated into the K layers that
        attend to the K images, as the official ``Pretrain_nlvr.py`` does. Otherwise
        keys map one to one (empty dict).
        """
        src_layers = {int(key.split(".")[1]) for key in available if key.startswith("layer.")}
        k, n = self.num_visual_inputs, len(self.layer)
        if k == 1 or len(src_layers) != n // k or len(src_layers) * k != n or src_layers == set(range(n)):
            return {}
        out = {}
        for key in self.state_dict():
            if key.startswith("layer."):
                _, j, rest = key.split(".", 2)
                out[key] = f"layer.{int(j) // k}.{rest}"
        return out
