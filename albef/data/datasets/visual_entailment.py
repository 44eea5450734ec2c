"""SNLI-VE in the official format: ``[{"image": "<Flickr30K id>", "sentence": str, "label": str}, ...]``."""
from __future__ import annotations

from typing import Any, Sequence

from albef.data.datasets.annotated import AnnotatedImageTextDataset
from albef.data.files import DataError, resolve_image_path
from albef.data.text import pre_caption
from albef.registry import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class VisualEntailmentJSON(AnnotatedImageTextDataset):
    """Image-sentence pairs labelled ``entailment`` / ``neutral`` / ``contradiction``.

    As the official ``ve_dataset``: ``image`` is an id without extension, read from
    ``image_root/<id><image_ext>``; labels map to contradiction 0, neutral 1,
    entailment 2; the sentence goes through ``pre_caption``. An unknown label or a
    missing key is an error naming the file and the entry.

    Args:
        ann_files, image_root: see :class:`AnnotatedImageTextDataset`.
        image_ext: appended to the id (official: ``.jpg``).
    """

    LABELS = {"contradiction": 0, "neutral": 1, "entailment": 2}
    class_names = ("contradiction", "neutral", "entailment")
    text_field = "sentence"

    def __init__(
        self,
        ann_files: str | Sequence[str] = (),
        image_root: str = "",
        image_ext: str = ".jpg",
        is_train: bool = True,
        transforms: dict[str, Any] | None = None,
        max_words: int = 30,
        strict: bool = False,
        seed: int = 0,
    ):
        self.image_ext = image_ext
        super().__init__(ann_files, image_root, is_train=is_train, transforms=transforms, max_words=max_words, strict=strict, seed=seed)

    def parse(self, ann: dict[str, Any], path: str, i: int) -> dict[str, Any]:
        image = self.require(ann, "image", (str, int), path, i)
        sentence = self.require(ann, "sentence", str, path, i)
        label = self.require(ann, "label", str, path, i)
        if label not in self.LABELS:
            raise DataError(f"{path}: entry {i}: unknown label {label!r}; expected one of {', '.join(self.LABELS)}")
        text = pre_caption(sentence, self.max_words)
        if not text:
            raise DataError(f"{path}: entry {i}: the sentence is empty after preprocessing: {sentence!r}")
        return {"images": [resolve_image_path(f"{image}{self.image_ext}", self.image_root)], "text": text, "label": self.LABELS[label]}
