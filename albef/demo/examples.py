"""The demo's example images and the texts it prefills for each.

An example is an image and its true caption (from a split's annotation file, a list of
``{"image": path, "caption": str | [str, ...]}`` as the synthetic world's ``test.json``), or
an image alone (any folder of images). For a caption the demo prefills three texts that
probe what the model has learnt (:func:`probe_texts`): the caption itself, the caption with
every colour word replaced by one the caption does not name (a checkpoint that binds
colours scores it far lower) and the caption with its relation flipped (left <-> right,
above <-> below; the default job cannot tell these apart, so the page only shows it).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from albef.data.caption_edits import SwapWords
from albef.data.synthetic.scenes import COLORS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
RELATION_FLIP = SwapWords({"left": "right", "above": "below"})


@dataclass
class Example:
    """One example: ``image`` (a file path) and its true ``captions`` (may be empty)."""

    image: str
    captions: list[str] = field(default_factory=list)


def wrong_colour_caption(caption: str, colours: Sequence[str] = tuple(COLORS)) -> str | None:
    """``caption`` with each colour word replaced by a colour it does not name (the first
    unused ones of ``colours``, in order, so the result is deterministic); None when the
    caption names no colour or every colour is used."""
    words = caption.split(" ")
    named = [w for w in words if w in colours]
    unused = [c for c in colours if c not in named]
    if not named or not unused:
        return None
    swap = {c: unused[i % len(unused)] for i, c in enumerate(dict.fromkeys(named))}
    out = []
    for i, w in enumerate(words):
        out.append(swap.get(w, w))
        if w in swap and i > 0 and words[i - 1] in ("a", "an"):  # the article of the new colour
            out[i - 1] = "an" if swap[w][0] in "aeiou" else "a"
    return " ".join(out)


def probe_texts(caption: str, colours: Sequence[str] = tuple(COLORS)) -> list[str]:
    """The prefilled texts of a caption: [caption, wrong-colour caption, relation-flipped
    caption], leaving out an edit that does not apply."""
    texts = [caption.strip()]
    for edit in (wrong_colour_caption(texts[0], colours), RELATION_FLIP(texts[0])):
        if edit is not None and edit not in texts:
            texts.append(edit)
    return texts


def _world_colours(root: str) -> list[str]:
    """The colour names of a synthetic world (its ``manifest.json``), else the built-in ones."""
    path = os.path.join(root, "manifest.json")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                colours = list((json.load(f) or {}).get("colors") or [])
            if colours:
                return colours
        except (OSError, ValueError):
            pass
    return list(COLORS)


def _annotated(ann_file: str, image_root: str, limit: int) -> list[Example]:
    with open(ann_file, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{ann_file}: expected a list of {{'image', 'caption'}} records, got {type(data).__name__}")
    out = []
    for rec in data[:limit]:
        if not isinstance(rec, dict) or "image" not in rec:
            raise ValueError(f"{ann_file}: a record without 'image': {str(rec)[:80]}")
        caps = rec.get("caption") or []
        caps = [caps] if isinstance(caps, str) else [str(c) for c in caps]
        path = rec["image"] if os.path.isabs(rec["image"]) else os.path.join(image_root, rec["image"])
        if os.path.isfile(path):
            out.append(Example(path, caps))
    return out


def folder_examples(folder: str, limit: int = 8) -> list[Example]:
    """Examples of a folder: with a ``test.json`` there (a synthetic world), its images and
    captions; otherwise its image files, sorted, without captions."""
    if not os.path.isdir(folder):
        raise ValueError(f"--examples {folder}: not a folder")
    ann = os.path.join(folder, "test.json")
    if os.path.isfile(ann):
        return _annotated(ann, folder, limit)
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
    return [Example(os.path.join(folder, n)) for n in names[:limit]]


def config_examples(cfg: Any, limit: int = 8) -> list[Example]:
    """Examples of a model's config: its test split's annotation file (``data.test.ann_file``
    or the first of ``ann_files``, images under ``image_root``) when that is an image-caption
    list on disk, else the ``test.json`` of its synthetic world (``data.synthetic.root``);
    [] when neither is there."""
    data = cfg.get("data") or {}
    test = data.get("test") or {}
    ann = test.get("ann_file") or (list(test.get("ann_files") or []) or [None])[0]
    if ann and os.path.isfile(str(ann)):
        try:
            found = _annotated(str(ann), str(test.get("image_root") or os.path.dirname(str(ann))), limit)
            if found:
                return found
        except (ValueError, KeyError, TypeError):
            pass  # another task's annotation format: fall back to the world's test split
    root = (data.get("synthetic") or {}).get("root")
    if root and os.path.isfile(os.path.join(str(root), "test.json")):
        return _annotated(os.path.join(str(root), "test.json"), str(root), limit)
    return []


def example_colours(cfg: Any, folder: str | None = None) -> list[str]:
    """Colour names for the wrong-colour caption: the world's manifest (``folder`` or the config's synthetic root)."""
    root = folder or str(((cfg.get("data") or {}).get("synthetic") or {}).get("root") or "")
    return _world_colours(root) if root else list(COLORS)
