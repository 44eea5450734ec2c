"""Pretraining pairs in the official JSON format: ``[{image, caption: str | [str]}, ...]``."""
from __future__ import annotations

import logging
from typing import Any, Sequence

from torch.utils.data import Dataset

from albef.data.files import (
    DataError,
    captions_of,
    load_image,
    read_json_list,
    resolve_image_path,
    sample_rng,
)
from albef.data.text import pre_caption
from albef.data.transforms import PairedHorizontalFlip, build_transforms
from albef.registry import DATASET_REGISTRY

logger = logging.getLogger("albef.data")


@DATASET_REGISTRY.register()
class PretrainJSON(Dataset):
    """Image-caption pairs for pretraining.

    Each entry: ``image`` (absolute, or relative to ``image_root``), ``caption``
    (a string, or a list from which one is drawn per access as the official code does)
    and optionally ``image_id`` (any JSON value, as in the official retrieval-train
    format); entries with the same ``image_id`` -- or, without one, the same image
    file -- share an id, which makes them ITC positives and excludes them as ITM negatives.
    Captions are preprocessed with the official ``pre_caption``; an entry whose
    captions are all empty is skipped at load time and reported with its file and index.

    ``dataset[(epoch, index)]`` (or ``dataset[index]``, epoch 0) returns
    ``{"image": [3, res, res], "caption": str, "image_id": int, "skipped": [(path, reason)],
    "sample_id": "#<entry> <image path>"}`` (the id names the sample in error reports).
    An image that is missing, unreadable or truncated is skipped: the next entry is
    used instead and the bad path travels with the sample so the trainer can log and
    count it (``strict=True`` raises :class:`DataError` naming the path instead).

    Args:
        ann_files: JSON files in the official pretraining format.
        image_root: prefix for relative image paths.
        caption_key: the entry's text key (``caption``; the official grounding training
            files use ``text``, with the image file as the positive id).
        Builder-supplied: transforms (the ``data.transforms`` node), max_words, strict,
        image_ids (give entries of the same image file the same id), seed.
    """

    max_skip_tries = 20

    def __init__(
        self,
        ann_files: Sequence[str] = (),
        image_root: str = "",
        caption_key: str = "caption",
        transforms: dict[str, Any] | None = None,
        max_words: int = 30,
        strict: bool = False,
        image_ids: bool = True,
        seed: int = 0,
    ):
        if isinstance(ann_files, str):
            ann_files = [ann_files]
        if not ann_files:
            raise DataError("data.train.ann_files is empty: give at least one pretraining JSON file")
        self.image_root, self.strict, self.seed = image_root, strict, seed
        self.paths: list[str] = []
        self.captions: list[list[str]] = []
        self.image_id: list[int] = []
        self.load_report: list[tuple[str, str]] = []  # (file:index, reason) skipped at load time
        ids: dict[str, int] = {}
        for ann_file in ann_files:
            for i, ann in enumerate(read_json_list(ann_file)):
                if not isinstance(ann, dict) or "image" not in ann:
                    raise DataError(f"{ann_file}: entry {i} has no 'image' key: {ann!r}")
                caps = [pre_caption(c, max_words) for c in captions_of(ann, ann_file, i, key=caption_key)]
                caps = [c for c in caps if c]
                if not caps:
                    msg = f"{ann_file}: entry {i} ({ann['image']}): empty caption"
                    if strict:
                        raise DataError(msg)
                    self.load_report.append((f"{ann_file}:{i}", "empty caption"))
                    logger.warning("Skipping %s", msg)
                    continue
                path = resolve_image_path(ann["image"], image_root)
                self.paths.append(path)
                self.captions.append(caps)
                key = ann.get("image_id", path)  # optional, as in the official retrieval-train format
                self.image_id.append(ids.setdefault(key, len(ids)) if image_ids else len(self.paths) - 1)
        if not self.paths:
            raise DataError(f"no usable pretraining pairs in {list(ann_files)}")
        if self.load_report:
            logger.warning("Skipped %d annotation(s) with empty captions in %s", len(self.load_report), list(ann_files))
        self.has_image_ids = image_ids
        t = dict(transforms or {})
        self.transform = build_transforms(t, is_train=True)
        self.flip = PairedHorizontalFlip(t.get("hflip_prob", 0.0), t.get("hflip_swap_words"))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        skipped: list[tuple[str, str]] = []
        for attempt in range(self.max_skip_tries):
            i = (index + attempt) % len(self.paths)
            rng = sample_rng(self.seed, epoch, i)
            path = self.paths[i]
            try:
                img = load_image(path)
            except OSError as e:
                if self.strict:
                    raise DataError(f"{path}: {e} (data.strict=true stops here)") from e
                skipped.append((path, str(e)))
                continue
            caption = rng.choice(self.captions[i])
            img, caption = self.flip(img, caption, rng)
            return {"image": self.transform(img, rng), "caption": caption, "image_id": self.image_id[i], "skipped": skipped,
                    "sample_id": f"#{i} {path}"}
        raise DataError(
            f"{self.max_skip_tries} consecutive unreadable images starting at entry {index}: "
            + "; ".join(f"{p}: {r}" for p, r in skipped)
        )
