"""Figures of what the model attends to, drawn with matplotlib (the ``report`` extra)."""
from __future__ import annotations

from typing import Sequence

import torch


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files, never a window
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("figures need matplotlib: pip install 'albef[report]' (or pip install matplotlib)") from e
    return plt


def overlay(heat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A map [gh, gw] upsampled bicubically to (height, width) and scaled to [0, 1]."""
    from albef.modeling.gradcam import upsample_map

    up = upsample_map(heat, size[0], size[1])
    up = up - up.min()
    return up / up.max().clamp(min=1e-12)


def gradcam_figure(image, text: str, sentence: torch.Tensor, words: Sequence[tuple[str, torch.Tensor]], out_path: str,
                   title: str | None = None, columns: int = 6) -> str:
    """One PNG: the image, the sentence's heat map over it, then one labelled map per word.

    image: a PIL image (shown at its own size); sentence, word maps: [gh, gw]. Each map is
    normalised to its own range (jet colour map, opacity growing with the heat)."""
    import numpy as np

    plt = _pyplot()
    panels = [("image", None), (f"sentence: {text}", sentence)] + [(w, m) for w, m in words]
    cols = min(columns, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False)
    arr = np.asarray(image.convert("RGB"))
    h, w = arr.shape[:2]
    cmap = plt.get_cmap("jet")
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, heat) in zip(axes.flat, panels):
        ax.imshow(arr)
        if heat is not None:
            a = overlay(heat.float(), (h, w)).numpy()
            rgba = cmap(a)
            rgba[..., 3] = 0.7 * a ** 0.7  # official visualisation: alpha grows with the heat
            ax.imshow(rgba)
        ax.set_title(label if len(label) <= 40 else label[:37] + "...", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def default_gradcam_layer(cfg, model) -> int:
    """The fusion layer whose cross-attention Grad-CAM explains: the config's ITM
    ``GroundingEvaluator``'s ``layer``, else layer n/2 - 1 of n (the 3rd of 6, as official)."""
    node = next((v for v in (cfg.eval or {}).values() if v is not None and v.get("name") == "GroundingEvaluator"
                 and v.get("gradcam", "itm") == "itm"), None)
    return int(node.get("layer", 2)) if node is not None else max(len(model.fusion.layer) // 2 - 1, 0)


def gradcam_png(cfg, model, tokenizer, image, text: str, out_path: str, layer: int | None = None) -> tuple[int, int, float]:
    """The ITM Grad-CAM figure of one PIL ``image`` and ``text`` (:func:`gradcam_figure`) at
    ``out_path``, the image transformed as ``cfg``'s evaluation does; ``layer``: default
    :func:`default_gradcam_layer`. Returns (layer, number of words, p(match)). Raises
    ValueError for a text the model cannot explain."""
    import os

    from omegaconf import OmegaConf

    from albef.data.transforms import build_transforms
    from albef.modeling.gradcam import explain

    layer = default_gradcam_layer(cfg, model) if layer is None else layer
    transform = build_transforms(OmegaConf.to_container(cfg.data.transforms, resolve=True), is_train=False)
    sentence, words, p_match = explain(model, tokenizer, transform(image), text, layer=layer, max_tokens=cfg.data.max_tokens)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    gradcam_figure(image, text, sentence, words, out_path,
                   title=f"ITM Grad-CAM, fusion layer {layer} cross-attention; p(match) = {p_match:.2f}")
    return layer, len(words), p_match
