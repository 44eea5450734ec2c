"""Image transforms of the official pipeline, driven by an explicit ``random.Random``.

Every random choice takes its randomness from the ``rng`` argument, so a sample's
augmentation is a pure function of (seed, epoch, index): runs resume exactly and
never touch the trainer's global RNG streams.

* train: RandomResizedCrop(res, scale, bicubic) -> [flip, done by the dataset together
  with the caption] -> RandomAugment(N ops from the official list, each with p=0.5,
  magnitude M of 10) -> ToTensor -> Normalize (CLIP statistics)
* test: Resize((res, res), bicubic) -> ToTensor -> Normalize
"""
from __future__ import annotations

import math
import random
from typing import Any, Callable, Sequence

import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageEnhance, ImageOps
from torchvision.transforms import InterpolationMode

MAX_LEVEL = 10.0
FILL = (128, 128, 128)  # official fill colour for geometric ops

OFFICIAL_AUGS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _signed(rng: random.Random, v: float) -> float:
    return v if rng.random() < 0.5 else -v


def _apply_op(img: Image.Image, op: str, magnitude: float, rng: random.Random) -> Image.Image:
    level = magnitude / MAX_LEVEL
    if op == "Identity":
        return img
    if op == "AutoContrast":
        return ImageOps.autocontrast(img)
    if op == "Equalize":
        return ImageOps.equalize(img)
    if op == "Brightness":  # official: factor = level * 1.8 + 0.1, no sign flip
        return ImageEnhance.Brightness(img).enhance(level * 1.8 + 0.1)
    if op == "Sharpness":
        return ImageEnhance.Sharpness(img).enhance(level * 1.8 + 0.1)
    if op in ("ShearX", "ShearY"):
        s = _signed(rng, level * 0.3)
        shear = (math.degrees(math.atan(s)), 0.0) if op == "ShearX" else (0.0, math.degrees(math.atan(s)))
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=list(shear), fill=list(FILL))
    if op in ("TranslateX", "TranslateY"):
        t = int(round(_signed(rng, level * 10.0)))  # official translate_const = 10 px
        tr = [t, 0] if op == "TranslateX" else [0, t]
        return TF.affine(img, angle=0.0, translate=tr, scale=1.0, shear=[0.0, 0.0], fill=list(FILL))
    if op == "Rotate":
        return TF.rotate(img, _signed(rng, level * 30.0), fill=list(FILL))
    raise ValueError(f"unknown RandomAugment op '{op}'; valid ops: {', '.join(OFFICIAL_AUGS)}")


class RandomAugment:
    """The official ``RandomAugment(N, M, augs)``: N ops drawn with replacement, each applied with p=0.5."""

    def __init__(self, num_ops: int = 2, magnitude: float = 7, ops: Sequence[str] = OFFICIAL_AUGS):
        bad = [o for o in ops if o not in OFFICIAL_AUGS]
        if bad:
            raise ValueError(f"data.transforms.randaugment.ops: unknown op(s) {bad}; valid ops: {', '.join(OFFICIAL_AUGS)}")
        self.num_ops, self.magnitude, self.ops = int(num_ops), float(magnitude), list(ops)

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        for _ in range(self.num_ops):
            op = rng.choice(self.ops)
            if rng.random() < 0.5:
                img = _apply_op(img, op, self.magnitude, rng)
        return img


def _random_resized_crop_params(w: int, h: int, scale: Sequence[float], ratio: Sequence[float], rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, with an explicit RNG."""
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ar = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class TrainTransform:
    """``(PIL image, rng) -> tensor [3, res, res]``."""

    def __init__(self, image_res: int, crop_scale: Sequence[float] | None, randaugment: dict[str, Any] | None, mean: Sequence[float], std: Sequence[float]):
        self.res = int(image_res)
        self.crop_scale = tuple(crop_scale) if crop_scale is not None else None
        self.randaug = RandomAugment(**randaugment) if randaugment else None
        self.mean, self.std = list(mean), list(std)

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        if self.crop_scale is not None:
            top, left, h, w = _random_resized_crop_params(img.width, img.height, self.crop_scale, (3 / 4, 4 / 3), rng)
            img = TF.resized_crop(img, top, left, h, w, [self.res, self.res], InterpolationMode.BICUBIC)
        else:
            img = TF.resize(img, [self.res, self.res], InterpolationMode.BICUBIC)
        if self.randaug is not None:
            img = self.randaug(img, rng)
        return TF.normalize(TF.to_tensor(img), self.mean, self.std)


class TestTransform:
    """``PIL image -> tensor [3, res, res]`` (resize, no crop, as the official test transform)."""

    def __init__(self, image_res: int, mean: Sequence[float], std: Sequence[float]):
        self.res = int(image_res)
        self.mean, self.std = list(mean), list(std)

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        img = TF.resize(img, [self.res, self.res], InterpolationMode.BICUBIC)
        return TF.normalize(TF.to_tensor(img), self.mean, self.std)


class PairedHorizontalFlip:
    """Flip the image and keep the caption true: swap words such as left <-> right.

    ``swap_words`` maps a word to its mirror image; with an empty map the caption is
    unchanged (the official pipeline flips everything, "left" included).
    """

    def __init__(self, prob: float, swap_words: dict[str, str] | None = None):
        self.prob = float(prob)
        self.swap = dict(swap_words or {})

    def __call__(self, img: Image.Image, caption: str, rng: random.Random) -> tuple[Image.Image, str]:
        if self.prob <= 0 or rng.random() >= self.prob:
            return img, caption
        img = ImageOps.mirror(img)
        if self.swap:
            caption = " ".join(self.swap.get(w, w) for w in caption.split(" "))
        return img, caption


def build_transforms(cfg_t: dict[str, Any], is_train: bool) -> Callable:
    if is_train:
        return TrainTransform(cfg_t["image_res"], cfg_t["crop_scale"], cfg_t["randaugment"], cfg_t["mean"], cfg_t["std"])
    return TestTransform(cfg_t["image_res"], cfg_t["mean"], cfg_t["std"])
