"""An ImageFolder of labelled images, ``root/<class name>/<image files>`` (the torchvision
layout): the input of zero-shot classification (:mod:`albef.inference.zero_shot`).

Class folders are sorted by name and their label is their index; a folder name's ``_`` are
spaces in the class name (``red_circle`` -> ``"red circle"``), which is what prompts say.
Files directly under ``root`` (a ``manifest.json``), hidden entries and files that are not
images by their extension are not samples. A file that cannot be decoded is found when it
is loaded (:func:`load_images`): it is skipped with a warning that names it, not fatal.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageFolderError(ValueError):
    """A folder that is not an ImageFolder (missing, empty, no class folders); names the path."""


@dataclass
class ImageFolder:
    """``paths`` (N files), ``labels`` [N] (int64, index into ``class_names``), ``class_names``
    (C, ``_`` as spaces), ``folders`` (C folder names as on disk)."""

    root: str
    paths: list[str]
    labels: torch.Tensor
    class_names: list[str]
    folders: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def class_name(folder: str) -> str:
    """``"red_circle"`` -> ``"red circle"`` (the form a prompt uses)."""
    return " ".join(folder.replace("_", " ").split())


def read_image_folder(root: str | os.PathLike) -> ImageFolder:
    """The images and labels of ``root/<class>/<files>``; :class:`ImageFolderError` for a
    missing path, a file, a folder without class folders, or class folders without images.
    A class folder without images stays a class (a candidate the classifier may pick)."""
    root = os.fspath(root)
    if not os.path.exists(root):
        raise ImageFolderError(f"{root}: no such directory")
    if not os.path.isdir(root):
        raise ImageFolderError(f"{root}: not a directory (expected root/<class name>/<images>)")
    folders = sorted(d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    if not folders:
        raise ImageFolderError(f"{root}: no class folders (expected root/<class name>/<images>)")
    names = [class_name(d) for d in folders]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ImageFolderError(f"{root}: class folders {[d for d in folders if class_name(d) in dup]} name the same class(es) {dup}")
    paths, labels = [], []
    for label, d in enumerate(folders):
        files = sorted(f for f in os.listdir(os.path.join(root, d)) if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS))
        paths += [os.path.join(root, d, f) for f in files]
        labels += [label] * len(files)
    if not paths:
        raise ImageFolderError(f"{root}: {len(folders)} class folder(s) but no image files ({', '.join(IMAGE_EXTENSIONS)}) in them")
    return ImageFolder(root, paths, torch.tensor(labels, dtype=torch.long), names, folders)


def load_images(preprocess: Any, paths: Sequence[str]) -> tuple[torch.Tensor | None, list[int], list[tuple[str, str]]]:
    """``(images [B', 3, H, W] or None, kept, skipped)``: the images of ``paths`` that decode
    (``preprocess.load``), ``kept`` their positions in ``paths``, ``skipped`` ``(path,
    reason)`` of the others (each logged as a warning)."""
    tensors, kept, skipped = [], [], []
    for i, p in enumerate(paths):
        try:
            tensors.append(preprocess.load(p))
        except OSError as e:
            reason = str(e).removeprefix(f"{p}: ")
            logger.warning("skipping %s: %s", p, reason)
            skipped.append((p, reason))
            continue
        kept.append(i)
    return (torch.stack(tensors) if tensors else None), kept, skipped
