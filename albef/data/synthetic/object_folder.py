"""The zero-shot benchmark of the shapes world: one-object images of its test split in
the ImageFolder layout, one class per colour-shape pair::

    out/
      red_circle/000000_0.png ...   test image 000000 with its object 0 kept, object 1 erased
      ...                           one folder per colour x shape of the world's palette
      manifest.json                 source world, construction, images per class

Each test image shows two objects; it gives two images here, one per object, in which the
other object is painted over with the image's background colour (the median of its border
pixels) on its box widened by one pixel. The boxes are not stored in ``test.json``: the
test scene is parsed from its canonical caption and rendered again with its own render
seed (:func:`~albef.data.synthetic.render._render_with_boxes`), and the bytes must equal the
stored JPEG, so the boxes are exactly those of the picture (a world made by another
renderer is refused). The kept object keeps its position, size and pixels: the images are
the test split's own, with one object fewer. Written as PNG (no second JPEG pass).
"""
from __future__ import annotations

import io
import json
import math
import os
import random

import numpy as np
from PIL import Image

from albef.data.synthetic.generated import build_dir_atomically, dump_json, is_empty_dir
from albef.data.synthetic.noise import parse_caption
from albef.data.synthetic.render import _render_with_boxes
from albef.data.synthetic.scenes import RELATIONS, _phrase
from albef.data.synthetic.shapes import FORMAT_VERSION

OBJECT_FOLDER_VERSION = 1
_ERASE_MARGIN_PX = 1.0  # boxes are >= 2 px apart along the relation axis: the kept object is never touched
_RELATION_OF_PHRASE = {_phrase(r): r for r in RELATIONS}


def folder_name(color: str, shape: str) -> str:
    """``red_circle``: the class folder of an object (its class name is ``"red circle"``)."""
    return f"{color}_{shape}"


def _world_manifest(world: str) -> dict:
    path = os.path.join(world, "manifest.json")
    if not os.path.isfile(path):
        raise ValueError(f"{world}: no manifest.json (not a generated synthetic world: tools/make_synthetic_data.py)")
    with open(path, encoding="utf-8") as f:
        m = json.load(f)
    if m.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {m.get('format_version')!r}, this renderer writes {FORMAT_VERSION}; "
                         "regenerate the world with tools/make_synthetic_data.py")
    return m


def _scene(caption: str, where: str) -> tuple:
    parsed = parse_caption(caption)
    if parsed is None or parsed[1] not in _RELATION_OF_PHRASE:
        raise ValueError(f"{where}: caption {caption!r} is not a canonical two-object caption of the shapes world")
    (c1, s1), rel, (c2, s2) = parsed
    return (c1, s1, _RELATION_OF_PHRASE[rel], c2, s2)


def _erase(pixels: np.ndarray, box, color: np.ndarray) -> None:
    """Paint ``box`` [x, y, w, h] (widened by _ERASE_MARGIN_PX, whole pixels) with ``color``, in place."""
    h, w = pixels.shape[:2]
    x, y, bw, bh = box
    x0, y0 = max(0, math.floor(x - _ERASE_MARGIN_PX)), max(0, math.floor(y - _ERASE_MARGIN_PX))
    x1, y1 = min(w, math.ceil(x + bw + _ERASE_MARGIN_PX)), min(h, math.ceil(y + bh + _ERASE_MARGIN_PX))
    pixels[y0:y1, x0:x1] = color


def _background(pixels: np.ndarray) -> np.ndarray:
    """The median colour [3] of the border pixels (objects stay inside a margin: all background)."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return np.median(border, axis=0).round().astype(np.uint8)


def _build(tmp: str, world: str, manifest: dict) -> dict:
    p = manifest["params"]
    tag = f"albef-shapes/v{FORMAT_VERSION}/{p['seed']}"  # the generator's seed strings (shapes._build)
    ann_path = os.path.join(world, "test.json")
    with open(ann_path, encoding="utf-8") as f:
        entries = json.load(f)
    colors, shapes = list(manifest["colors"]), list(manifest["shapes"])
    counts = {folder_name(c, s): 0 for c in colors for s in shapes}
    for name in counts:
        os.makedirs(os.path.join(tmp, name))
    for i, e in enumerate(entries):
        where = f"{ann_path} entry {i}"
        if e.get("image") != f"images/test/{i:06d}.jpg":
            raise ValueError(f"{where}: image {e.get('image')!r}, expected images/test/{i:06d}.jpg (the generator's order)")
        scene = _scene(e["caption"][0], where)
        data, boxes = _render_with_boxes(scene, p["image_size"], random.Random(f"{tag}/render/test/{i}"), p["jpeg_quality"])
        image_path = os.path.join(world, e["image"])
        with open(image_path, "rb") as f:
            stored = f.read()
        if stored != data:
            raise ValueError(f"{image_path}: not the render of {scene} by this renderer, so its object boxes are unknown")
        pixels = np.asarray(Image.open(io.BytesIO(stored)).convert("RGB"))
        bg = _background(pixels)
        for keep, (color, shape) in enumerate([(scene[0], scene[1]), (scene[3], scene[4])]):
            out = pixels.copy()
            _erase(out, boxes[1 - keep], bg)
            name = folder_name(color, shape)
            Image.fromarray(out).save(os.path.join(tmp, name, f"{i:06d}_{keep}.png"))
            counts[name] += 1
    info = {
        "format_version": OBJECT_FOLDER_VERSION,
        "source": {"world": os.path.abspath(world), "split": "test", "world_params": p, "test_images": len(entries)},
        "construction": "each test image once per object, the other object painted over with the background colour",
        "classes": list(counts),
        "counts": counts,
        "images": sum(counts.values()),
    }
    dump_json(info, os.path.join(tmp, "manifest.json"))
    return info


def make_object_folder(world: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write the one-object ImageFolder of ``world``'s test split to ``out`` (which must not
    exist or be empty; written atomically) and return its manifest (classes, counts)."""
    world, out = os.fspath(world), os.fspath(out)
    manifest = _world_manifest(world)
    if os.path.exists(out) and not is_empty_dir(out):
        raise ValueError(f"{out} exists and is not empty; remove it or choose another --out")
    if os.path.isdir(out):
        os.rmdir(out)  # empty: the atomic rename puts the finished folder in its place
    result = {}
    build_dir_atomically(out, lambda tmp: result.update(_build(tmp, world, manifest)))
    return result
