"""Grad-CAM maps drawn over an image with numpy and PIL (no matplotlib: the demo extra only)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from albef.utils.visualization import overlay


def jet(a: np.ndarray) -> np.ndarray:
    """The jet colour map of values in [0, 1]: [H, W] -> [H, W, 3] in [0, 1] (blue, cyan, yellow, red)."""
    return np.clip(1.5 - np.abs(4.0 * a[..., None] - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)


def display_size(image: Image.Image, min_side: int = 192) -> Image.Image:
    """``image`` as RGB, enlarged (bicubic) so its shorter side is at least ``min_side`` px: a
    64 px synthetic scene is shown at a size a person can see."""
    image = image.convert("RGB")
    scale = min_side / min(image.size)
    if scale > 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    return image


def heat_overlay(image: Image.Image, heat: torch.Tensor) -> Image.Image:
    """A map [gh, gw] upsampled to ``image``'s size, normalised to its own range and drawn over
    it in jet, opacity growing with the heat (0.7 a^0.7, as the official visualisation)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    a = overlay(heat.float(), (arr.shape[0], arr.shape[1])).numpy()[..., None]
    alpha = 0.7 * a ** 0.7
    out = arr * (1 - alpha) + jet(a[..., 0]) * alpha
    return Image.fromarray((out * 255).round().astype(np.uint8))
