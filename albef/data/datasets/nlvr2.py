"""NLVR2 in the official format: ``[{"images": [left, right], "sentence": str, "label": "True"|"False"}, ...]``."""
from __future__ import annotations

from typing import Any

from albef.data.datasets.annotated import AnnotatedImageTextDataset
from albef.data.files import DataError, resolve_image_path
from albef.data.text import pre_caption
from albef.registry import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class NLVR2JSON(AnnotatedImageTextDataset):
    """A sentence about a pair of images, true or false.

    As the official ``nlvr_dataset``: ``images`` holds the two paths (relative to
    ``image_root``), ``label`` is the *string* ``"True"`` (1) or ``"False"`` (0), the
    sentence goes through ``pre_caption``. A sample's ``image`` is [2, 3, res, res]
    (left, right). Any other label value, a pair that is not two paths, or a missing key
    is an error naming the file and the entry.
    """

    LABELS = {"False": 0, "True": 1}
    class_names = ("false", "true")
    text_field = "sentence"
    images_per_entry = 2

    def parse(self, ann: dict[str, Any], path: str, i: int) -> dict[str, Any]:
        images = self.require(ann, "images", list, path, i)
        if len(images) != 2 or not all(isinstance(p, str) and p for p in images):
            raise DataError(f"{path}: entry {i}: 'images' must be a list of two image paths, got {images!r}")
        sentence = self.require(ann, "sentence", str, path, i)
        label = ann.get("label", None)
        if "label" not in ann:
            raise DataError(f"{path}: entry {i} has no 'label' key (keys: {sorted(ann)})")
        if isinstance(label, bool):  # tolerate JSON booleans, the obvious intent
            label = "True" if label else "False"
        if not isinstance(label, str) or label not in self.LABELS:  # (a list or dict is unhashable)
            raise DataError(f"{path}: entry {i}: unknown label {label!r}; expected the string \"True\" or \"False\"")
        text = pre_caption(sentence, self.max_words)
        if not text:
            raise DataError(f"{path}: entry {i}: the sentence is empty after preprocessing: {sentence!r}")
        return {"images": [resolve_image_path(p, self.image_root) for p in images], "text": text, "label": self.LABELS[label]}
