"""The shared shape of the task datasets: a JSON list of entries, each naming one or more
images and a text (plus a label), read in the official formats.

Every entry is checked when the file is read: a missing key, a wrong type or an unknown
label string is a :class:`DataError` naming the file and the entry's index (nothing is
trained on a half-understood file). Images are read lazily:

* training (``is_train``): a missing, unreadable or truncated image is skipped -- the
  next entry takes its place -- and travels with the sample as ``skipped`` so the trainer
  logs and counts it (``strict`` stops instead, naming the file);
* evaluation: nothing may be dropped (the metrics would change meaning), so an unreadable
  image is an error in strict mode and otherwise a grey image with a warning naming the
  file and the entry.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from albef.data.files import DataError, load_image, read_json_list, sample_rng
from albef.data.transforms import PairedHorizontalFlip, build_transforms

logger = logging.getLogger("albef.data")


class AnnotatedImageTextDataset(Dataset):
    """Base class: subclasses implement :meth:`parse` (one JSON entry -> a record with
    ``images`` (paths), ``text`` and ``label``) and set :attr:`text_field`.

    ``dataset[(epoch, i)]`` / ``dataset[i]`` -> ``{"image": [3, res, res] or [K, 3, res, res],
    <text_field>: str, "label": int, "index": i, "skipped": [(path, reason), ...]}``.

    Args:
        ann_files: one JSON file or a list.
        image_root: prefix for relative image paths.
        Builder-supplied: is_train, transforms (``data.transforms``), max_words, strict, seed.
    """

    text_field = "sentence"
    images_per_entry = 1
    max_skip_tries = 20

    def __init__(
        self,
        ann_files: str | Sequence[str] = (),
        image_root: str = "",
        is_train: bool = True,
        transforms: dict[str, Any] | None = None,
        max_words: int = 30,
        strict: bool = False,
        seed: int = 0,
    ):
        files = [ann_files] if isinstance(ann_files, str) else list(ann_files)
        if not files or not all(files):
            raise DataError(f"{type(self).__name__}: ann_files is empty: give at least one JSON file")
        self.ann_files, self.image_root = files, image_root
        self.is_train, self.strict, self.seed, self.max_words = is_train, strict, seed, max_words
        self.records: list[dict[str, Any]] = []
        for path in files:
            for i, ann in enumerate(read_json_list(path)):
                if not isinstance(ann, dict):
                    raise DataError(f"{path}: entry {i} is not a JSON object: {ann!r}")
                rec = self.parse(ann, path, i)
                rec["where"] = f"{path}: entry {i}"
                self.records.append(rec)
        if not self.records:
            raise DataError(f"no entries in {files}")
        t = dict(transforms or {})
        self.transform = build_transforms(t, is_train=is_train)
        self.image_res = int(t.get("image_res", 256))
        self.flip = PairedHorizontalFlip(t.get("hflip_prob", 0.0) if is_train else 0.0, t.get("hflip_swap_words"))

    # ------------------------------------------------------------------ format
    def parse(self, ann: dict[str, Any], path: str, i: int) -> dict[str, Any]:
        """One JSON entry -> ``{"images": [path, ...], "text": str, "label": int, ...}`` (raise DataError naming path and i)."""
        raise NotImplementedError

    @staticmethod
    def require(ann: dict[str, Any], key: str, kind: type | tuple[type, ...], path: str, i: int) -> Any:
        if key not in ann:
            raise DataError(f"{path}: entry {i} has no '{key}' key (keys: {sorted(ann)})")
        value = ann[key]
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise DataError(f"{path}: entry {i}: '{key}' must be a {names}, got {value!r}")
        return value

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.records)

    def _load(self, rec: dict[str, Any], rng) -> tuple[list[Any], str]:
        imgs = [load_image(p) for p in rec["images"]]  # OSError names the reason
        text = rec["text"]
        if rng is not None and len(imgs) == 1:
            imgs[0], text = self.flip(imgs[0], text, rng)
        return [self.transform(im, rng) if rng is not None else self.transform(im) for im in imgs], text

    def _sample(self, i: int, images: list[torch.Tensor], text: str, skipped: list) -> dict[str, Any]:
        rec = self.records[i]
        image = images[0] if self.images_per_entry == 1 else torch.stack(images)
        out = {"image": image, self.text_field: text, "label": rec["label"], "index": i, "skipped": skipped}
        return out

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if not self.is_train:
            return self._eval_item(index)
        skipped: list[tuple[str, str]] = []
        for attempt in range(self.max_skip_tries):
            i = (index + attempt) % len(self.records)
            rng = sample_rng(self.seed, epoch, i)
            try:
                images, text = self._load(self.records[i], rng)
            except OSError as e:
                bad = self._bad_path(self.records[i])
                if self.strict:
                    raise DataError(f"{bad} ({self.records[i]['where']}): {e} (data.strict=true stops here)") from e
                skipped.append((bad, f"{e} ({self.records[i]['where']})"))
                continue
            return self._sample(i, images, text, skipped)
        raise DataError(
            f"{self.max_skip_tries} consecutive entries with unreadable images starting at entry {index}: "
            + "; ".join(f"{p}: {r}" for p, r in skipped)
        )

    def _eval_item(self, i: int) -> dict[str, Any]:
        """Nothing is dropped in evaluation: an unreadable image (only that one of a pair)
        becomes the mean colour (zeros after normalisation), with a warning."""
        rec = self.records[i]
        images, skipped = [], []
        for p in rec["images"]:
            try:
                images.append(self.transform(load_image(p)))
            except OSError as e:
                if self.strict:
                    raise DataError(f"{p} ({rec['where']}): {e} (data.strict=true stops here)") from e
                logger.warning("Evaluation image %s (%s): %s; using a grey image in its place", p, rec["where"], e)
                images.append(torch.zeros(3, self.image_res, self.image_res))
                skipped.append((p, f"{e} ({rec['where']})"))
        return self._sample(i, images, rec["text"], skipped)

    @staticmethod
    def _bad_path(rec: dict[str, Any]) -> str:
        for p in rec["images"]:
            try:
                load_image(p)
            except OSError:
                return p
        return rec["images"][0]
