"""Retrieval evaluation split in the official format: ``[{image, caption: [str, ...]}, ...]``."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import Dataset

from albef.data.files import DataError, captions_of, load_image, read_json_list, resolve_image_path
from albef.data.text import pre_caption
from albef.data.transforms import build_transforms
from albef.registry import DATASET_REGISTRY

logger = logging.getLogger("albef.data")


@DATASET_REGISTRY.register()
class RetrievalEvalJSON(Dataset):
    """One entry per image with all of its captions (COCO / Flickr30K val/test files).

    Attributes: ``text`` (every caption, preprocessed, in file order), ``txt2img``
    [N_t] (image index of each caption), ``img2txt`` (caption indices of each image).
    ``dataset[i]`` -> ``{"image": [3, res, res], "index": i}``.

    Ground truth must stay aligned, so nothing is dropped: an unreadable image is an
    error in strict mode and otherwise a grey image with a warning naming the file.
    """

    def __init__(self, ann_file: str = "", image_root: str = "", transforms: dict[str, Any] | None = None, max_words: int = 30, strict: bool = False):
        if not ann_file:
            raise DataError("data.test.ann_file is empty")
        anns = read_json_list(ann_file)
        self.paths, self.text, self.txt2img, self.img2txt = [], [], [], []
        for i, ann in enumerate(anns):
            if not isinstance(ann, dict) or "image" not in ann:
                raise DataError(f"{ann_file}: entry {i} has no 'image' key: {ann!r}")
            self.paths.append(resolve_image_path(ann["image"], image_root))
            ids = []
            for cap in captions_of(ann, ann_file, i):
                c = pre_caption(cap, max_words)
                if not c:
                    logger.warning("%s: entry %d (%s) has an empty caption; it is kept as an empty query", ann_file, i, ann["image"])
                ids.append(len(self.text))
                self.text.append(c)
                self.txt2img.append(i)
            self.img2txt.append(ids)
        if not self.paths:
            raise DataError(f"{ann_file}: no entries")
        self.ann_file = ann_file
        self.strict = strict
        self.transform = build_transforms(dict(transforms or {}), is_train=False)
        self.image_res = int(dict(transforms or {}).get("image_res", 256))
        self.bad_images: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.paths[i]
        try:
            img = self.transform(load_image(path))
            skipped = []
        except OSError as e:
            if self.strict:
                raise DataError(f"{path}: {e} (data.strict=true stops here)") from e
            logger.warning("Evaluation image %s: %s; using a grey image in its place", path, e)
            img = torch.zeros(3, self.image_res, self.image_res)
            skipped = [(path, str(e))]
        return {"image": img, "index": i, "skipped": skipped}
