"""Grad-CAM: where the model looks for each word (paper §5, weakly supervised grounding).

ITM variant (official default): the gradient of the ITM "match" logit with respect to
the cross-attention probabilities of one fusion layer (official: the 3rd), times those
probabilities, clamped at zero, averaged over heads; one map per text token over the
image patch grid. ITC variant: the same on the [CLS] -> patch self-attention of one ViT
block, from the image-text similarity.

The fusion runs SDPA, which never materialises attention probabilities; Grad-CAM asks one
layer to keep them (:func:`keep_attention`: that layer runs its explicit implementation,
same weights and values) -- no second fusion module. Nothing here hard-codes a head
count or a grid size: both come from the tensors and the vision encoder.

Usable from a notebook::

    from albef.modeling.gradcam import itm_gradcam
    cam = itm_gradcam(model, image, input_ids, attention_mask, layer=2)
    cam.tokens    # [B, L, gh, gw] one map per token
    cam.sentence  # [B, gh, gw]   mean over the text's real tokens
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GradCAM:
    """tokens [B, L, gh, gw] (zero at padding; None for the ITC variant), sentence [B, gh, gw];
    score [B]: what was explained (ITM: the match probability; ITC: the similarity / temp)."""

    tokens: torch.Tensor | None
    sentence: torch.Tensor
    score: torch.Tensor | None = None


@contextmanager
def keep_attention(attn: nn.Module) -> Iterator[nn.Module]:
    """Within the block, the attention module ``attn`` (a fusion ``_QKV``) keeps its
    probabilities (and their gradient) in ``attn.attention_probs``."""
    if not hasattr(attn, "keep_attention"):
        raise TypeError(f"{type(attn).__name__} cannot keep its attention probabilities")
    attn.keep_attention = True
    try:
        yield attn
    finally:
        attn.keep_attention = False
        attn.attention_probs = None


def patch_grid(model: nn.Module) -> tuple[int, int, int]:
    """(prefix tokens, grid height, grid width) of the model's vision encoder."""
    vit = getattr(model.vision_encoder, "vit", model.vision_encoder)
    grid = getattr(getattr(vit, "patch_embed", None), "grid_size", None)
    prefix = int(getattr(vit, "num_prefix_tokens", 1))
    if grid is None:
        raise ValueError(f"{type(model.vision_encoder).__name__} does not expose a patch grid (patch_embed.grid_size)")
    return prefix, int(grid[0]), int(grid[1])


def cross_attention_layer(model: nn.Module, layer: int) -> nn.Module:
    """The cross-attention of fusion layer ``layer`` (negative counts from the end)."""
    layers = model.fusion.layer
    if not -len(layers) <= layer < len(layers):
        raise ValueError(f"Grad-CAM layer {layer} does not exist: the fusion encoder has {len(layers)} layers (0..{len(layers) - 1})")
    return layers[layer].crossattention.self


def _as_grid(x: torch.Tensor, prefix: int, gh: int, gw: int) -> torch.Tensor:
    """[..., prefix + gh*gw] -> [..., gh, gw] (the prefix tokens dropped)."""
    if x.shape[-1] != prefix + gh * gw:
        raise ValueError(f"attention over {x.shape[-1]} image tokens, expected {prefix} + {gh}x{gw}")
    return x[..., prefix:].unflatten(-1, (gh, gw))


def itm_gradcam(model: nn.Module, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                layer: int = 2, head: str = "itm") -> GradCAM:
    """ITM Grad-CAM of a batch of (image [B, 3, H, W], text [B, L]) pairs on the cross-attention of
    fusion layer ``layer`` (0-based; official block_num 8 = the 3rd of 6 fusion layers = 2).

    The sentence map is the mean of the token maps over the text's real tokens (the
    official mean also averages the zeroed padding positions, which shrinks short texts).
    The model's parameters receive no gradient (``torch.autograd.grad`` on the
    probabilities only); works in eval mode, under ``no_grad`` callers too."""
    prefix, gh, gw = patch_grid(model)
    attn = cross_attention_layer(model, layer)
    with torch.enable_grad(), keep_attention(attn):
        image_embeds, _ = model.encode_image(image)
        text, _ = model.encode_text(input_ids, attention_mask)
        fused = model.fuse(text, attention_mask, image_embeds)
        logits = model.head(head)(fused[:, 0]).float()  # [B, 2]
        probs = attn.attention_probs  # [B, heads, L, prefix + N]
        grads = torch.autograd.grad(logits[:, 1].sum(), probs)[0]
    cam = (probs.detach().float() * grads.float().clamp(min=0)).mean(dim=1)  # [B, L, prefix + N]
    mask = attention_mask.to(cam.dtype)
    tokens = _as_grid(cam, prefix, gh, gw) * mask[:, :, None, None]
    sentence = tokens.sum(dim=1) / mask.sum(dim=1).clamp(min=1)[:, None, None]
    return GradCAM(tokens=tokens, sentence=sentence, score=logits.detach().softmax(dim=-1)[:, 1])


def itc_gradcam(model: nn.Module, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, block: int = 8) -> GradCAM:
    """ITC Grad-CAM: the gradient of the image-text similarity ``<v, t> / temp`` with respect to
    the [CLS] -> patch attention of ViT block ``block``, times that attention, clamped at
    zero, averaged over heads (official ``--gradcam_mode itc``). One map per pair."""
    if getattr(model, "vision_proj", None) is None:
        raise ValueError("ITC Grad-CAM needs a model with projections (model.embed_dim set)")
    vit = getattr(model.vision_encoder, "vit", model.vision_encoder)
    blocks = vit.blocks
    if not -len(blocks) <= block < len(blocks):
        raise ValueError(f"Grad-CAM ViT block {block} does not exist: the vision encoder has {len(blocks)} blocks")
    prefix, gh, gw = patch_grid(model)
    attn = blocks[block].attn
    kept: list[torch.Tensor] = []
    # timm's Attention passes its probabilities through attn_drop on the explicit path:
    # record them there (the block runs explicitly for this call only).
    handle = attn.attn_drop.register_forward_hook(lambda m, i, o: kept.append(o))
    fused_before = getattr(attn, "fused_attn", False)
    attn.fused_attn = False
    try:
        with torch.enable_grad():
            _, image_feat = model.encode_image(image)
            _, text_feat = model.encode_text(input_ids, attention_mask)
            sim = (image_feat * text_feat).sum(dim=1) / model.temp  # [B]
            grads = torch.autograd.grad(sim.sum(), kept[0])[0]
    finally:
        handle.remove()
        attn.fused_attn = fused_before
    probs = kept[0].detach().float()[:, :, 0]  # [B, heads, prefix + N]: [CLS] -> every token
    cam = (probs * grads.float()[:, :, 0].clamp(min=0)).mean(dim=1)
    return GradCAM(tokens=None, sentence=_as_grid(cam, prefix, gh, gw), score=sim.detach())


# ----------------------------------------------------------------------------- boxes
def upsample_map(heat: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[gh, gw] -> [height, width], bicubic (official ``grounding_eval``)."""
    return F.interpolate(heat[None, None].float(), size=(int(height), int(width)), mode="bicubic", align_corners=False)[0, 0]


def box_scores(heat: torch.Tensor, boxes: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Scores [D] of boxes [D, 4] (x, y, w, h in pixels) on a map [H, W]:
    ``sum(heat[int(y):int(y+h), int(x):int(x+w)]) / (w*h)**alpha`` (official, alpha 0.5),
    all boxes at once through a summed-area table; boxes are clipped to the map."""
    h_img, w_img = heat.shape
    table = F.pad(heat.double().cumsum(0).cumsum(1), (1, 0, 1, 0))  # [H+1, W+1]
    b = boxes.double()
    x0 = b[:, 0].floor().clamp(0, w_img).long()
    y0 = b[:, 1].floor().clamp(0, h_img).long()
    x1 = (b[:, 0] + b[:, 2]).floor().clamp(0, w_img).long()
    y1 = (b[:, 1] + b[:, 3]).floor().clamp(0, h_img).long()
    x1, y1 = torch.maximum(x1, x0), torch.maximum(y1, y0)
    total = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    area = (b[:, 2] * b[:, 3]).clamp(min=1e-12)
    return (total / area.pow(alpha)).to(heat.dtype if heat.is_floating_point() else torch.float32)


# ----------------------------------------------------------------------------- words
def word_maps(token_maps: torch.Tensor, input_ids: Sequence[int], tokenizer) -> list[tuple[str, torch.Tensor]]:
    """Per-word maps of one text: token maps [L, gh, gw] of its ids; word pieces (``##x``) are
    averaged into their word; special tokens and padding are left out."""
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    words: list[tuple[str, list[torch.Tensor]]] = []
    for pos, tid in enumerate(list(input_ids)[: token_maps.shape[0]]):
        tid = int(tid)
        if tid in specials:
            continue
        piece = tokenizer.convert_ids_to_tokens(tid)
        if piece.startswith("##") and words:
            words[-1] = (words[-1][0] + piece[2:], words[-1][1] + [token_maps[pos]])
        else:
            words.append((piece, [token_maps[pos]]))
    return [(w, torch.stack(ms).mean(0)) for w, ms in words]


def explain(model: nn.Module, tokenizer, image: torch.Tensor, text: str, layer: int = 2, head: str = "itm",
            max_tokens: int = 64) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]], float]:
    """Grad-CAM of one (image [3, H, W] already transformed, text) pair, for notebooks:
    (sentence map [gh, gw], [(word, map [gh, gw]), ...], ITM match probability)."""
    from albef.data.tokenization import tokenize

    enc = tokenize(tokenizer, [text], max_tokens)
    device = next(model.parameters()).device
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    img = image[None].to(device)
    was_training = model.training
    model.eval()
    try:
        cam = itm_gradcam(model, img, ids, mask, layer=layer, head=head)
    finally:
        model.train(was_training)
    words = [(w, m.cpu()) for w, m in word_maps(cam.tokens[0], ids[0].tolist(), tokenizer)]
    return cam.sentence[0].cpu(), words, float(cam.score[0])


def box_mass(heat: torch.Tensor, box: Sequence[float], image_size: tuple[int, int]) -> float:
    """Share of a map's (clamped non-negative) mass that lies inside ``box`` (x, y, w, h in
    pixels of an image of ``image_size`` = (width, height)), on the patch grid itself: each
    cell counts with the fraction of its area inside the box (no upsampling smear). A
    uniform map gives the box's area fraction."""
    gh, gw = heat.shape
    w_img, h_img = image_size
    x0, y0, bw, bh = (float(v) for v in box[:4])
    xs = torch.arange(gw + 1, dtype=torch.float64) * (w_img / gw)
    ys = torch.arange(gh + 1, dtype=torch.float64) * (h_img / gh)
    fx = ((torch.minimum(xs[1:], torch.tensor(x0 + bw)) - torch.maximum(xs[:-1], torch.tensor(x0))).clamp(min=0)) / (w_img / gw)
    fy = ((torch.minimum(ys[1:], torch.tensor(y0 + bh)) - torch.maximum(ys[:-1], torch.tensor(y0))).clamp(min=0)) / (h_img / gh)
    inside = fy[:, None] * fx[None, :]  # [gh, gw]: fraction of each cell inside the box
    h = heat.double().clamp(min=0)
    total = float(h.sum())
    return float((h * inside).sum()) / total if total > 0 else float("nan")
