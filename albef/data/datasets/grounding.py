"""Referring expressions for weakly supervised grounding evaluation (official RefCOCO+ format).

Expressions: ``[{"image": "...jpg", "text": str, "ref_id": int}, ...]`` (the official
``refcoco+_val.json`` / ``refcoco+_test.json``). Each ref_id's ground-truth box, split and
image id come from ``refs_file``:

* REFER's ``refs(unc).p`` (a pickle list of ``{ref_id, ann_id, image_id, split, ...}``) with
  COCO's ``instances.json`` (``annotations[*].{id, bbox}``) for the boxes, or
* a JSON list ``[{"ref_id", "image_id", "bbox": [x, y, w, h], "split"}, ...]`` (the built-in
  synthetic data's ``refs.json``; ``instances_file`` not needed).

Candidate boxes: ``dets.json``, ``{"<image_id>": [[x, y, w, h, ...], ...]}`` (fields 0-3
used). Training uses :class:`~albef.data.datasets.pretrain_json.PretrainJSON` on
``{"image", "text"}`` entries (``caption_key: text``): the image file is the positive id.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Sequence

from albef.data.datasets.annotated import AnnotatedImageTextDataset
from albef.data.files import DataError, read_json, resolve_image_path
from albef.data.text import pre_caption
from albef.registry import DATASET_REGISTRY
from albef.utils.file_io import PathManager


def _box(value: Any, where: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) < 4 or not all(isinstance(v, (int, float)) for v in value[:4]):
        raise DataError(f"{where}: a box must be [x, y, w, h, ...] numbers, got {value!r}")
    x, y, w, h = (float(v) for v in value[:4])
    if w <= 0 or h <= 0:
        raise DataError(f"{where}: box {value!r} has no area")
    return [x, y, w, h]


def read_refs(refs_file: str, instances_file: str | None = None) -> dict[int, dict[str, Any]]:
    """ref_id -> ``{"bbox": [x, y, w, h], "split": str, "image_id": int}``."""
    if refs_file.endswith((".p", ".pkl", ".pickle")):
        if not instances_file:
            raise DataError(f"{refs_file}: REFER refs need instances_file (COCO instances.json) for the boxes")
        with PathManager.open(refs_file, "rb") as f:
            refs = pickle.load(f, encoding="latin1")  # REFER's own file (written by Python 2)
        inst = read_json(instances_file, "instances file")
        anns = {a["id"]: a for a in inst.get("annotations", []) if isinstance(a, dict) and "id" in a}
        out = {}
        for i, r in enumerate(refs):
            where = f"{refs_file}: entry {i}"
            try:
                ann = anns[r["ann_id"]]
                out[int(r["ref_id"])] = {"bbox": _box(ann["bbox"], f"{instances_file}: annotation {r['ann_id']}"),
                                         "split": str(r["split"]), "image_id": int(r["image_id"])}
            except KeyError as e:
                raise DataError(f"{where}: missing {e} (ref {r!r:.200})") from e
        return out
    data = read_json(refs_file, "refs file")
    if not isinstance(data, list):
        raise DataError(f"{refs_file}: expected a JSON list of refs")
    out = {}
    for i, r in enumerate(data):
        where = f"{refs_file}: entry {i}"
        if not isinstance(r, dict):
            raise DataError(f"{where} is not a JSON object")
        for key in ("ref_id", "image_id", "bbox", "split"):
            if key not in r:
                raise DataError(f"{where} has no '{key}' key (keys: {sorted(r)})")
        out[int(r["ref_id"])] = {"bbox": _box(r["bbox"], where), "split": str(r["split"]), "image_id": int(r["image_id"])}
    return out


def read_dets(dets_file: str) -> dict[int, list[list[float]]]:
    data = read_json(dets_file, "detections file")
    if not isinstance(data, dict):
        raise DataError(f"{dets_file}: expected a JSON object {{image_id: [[x, y, w, h], ...]}}")
    out = {}
    for key, boxes in data.items():
        if not isinstance(boxes, list) or not boxes:
            raise DataError(f"{dets_file}: image {key}: expected a non-empty list of boxes")
        try:
            image_id = int(key)
        except ValueError as e:
            raise DataError(f"{dets_file}: key {key!r} is not an image id") from e
        out[image_id] = [_box(b, f"{dets_file}: image {key}, box {j}") for j, b in enumerate(boxes)]
    return out


@DATASET_REGISTRY.register()
class GroundingEvalJSON(AnnotatedImageTextDataset):
    """Referring expressions with their ground-truth box and candidate detections.

    A sample: ``{"image": [3, res, res], "text": str, "ref_id": int, "index": i}``; the
    evaluator reads ``ref(i)`` (box, split, candidates) and ``image_size(i)`` (the original
    width and height, in which boxes are given). Every expression's ref_id must be in the
    refs file and its image in the detections: errors name the file and the entry.

    Args:
        ann_files: expression JSON file(s) (e.g. val and test in one evaluation).
        image_root: prefix of the images.
        refs_file, instances_file: see the module docstring.
        dets_file: ``dets.json``.
    """

    text_field = "text"

    def __init__(
        self,
        ann_files: str | Sequence[str] = (),
        image_root: str = "",
        refs_file: str = "",
        dets_file: str = "",
        instances_file: str | None = None,
        is_train: bool = False,
        transforms: dict[str, Any] | None = None,
        max_words: int = 30,
        strict: bool = False,
        seed: int = 0,
    ):
        if not refs_file or not dets_file:
            raise DataError("GroundingEvalJSON needs refs_file (ground-truth boxes) and dets_file (candidate boxes)")
        self.refs = read_refs(refs_file, instances_file)
        self.dets = read_dets(dets_file)
        self.refs_file, self.dets_file = refs_file, dets_file
        self._sizes: dict[str, tuple[int, int]] = {}
        super().__init__(ann_files, image_root, is_train=False, transforms=transforms, max_words=max_words, strict=strict, seed=seed)

    def parse(self, ann: dict[str, Any], path: str, i: int) -> dict[str, Any]:
        image = self.require(ann, "image", str, path, i)
        text = pre_caption(self.require(ann, "text", str, path, i), self.max_words)
        ref_id = self.require(ann, "ref_id", int, path, i)
        if ref_id not in self.refs:
            raise DataError(f"{path}: entry {i}: ref_id {ref_id} is not in {self.refs_file}")
        image_id = self.refs[ref_id]["image_id"]
        if image_id not in self.dets:
            raise DataError(f"{path}: entry {i}: image {image_id} (ref_id {ref_id}) has no candidate boxes in {self.dets_file}")
        if not text:
            raise DataError(f"{path}: entry {i}: the expression is empty after preprocessing: {ann['text']!r}")
        return {"images": [resolve_image_path(image, self.image_root)], "text": text, "label": 0, "ref_id": ref_id}

    def _sample(self, i: int, images, text: str, skipped: list) -> dict[str, Any]:
        return {"image": images[0], "text": text, "ref_id": self.records[i]["ref_id"], "index": i, "skipped": skipped}

    def ref(self, i: int) -> dict[str, Any]:
        """``{"bbox", "split", "image_id", "dets"}`` of entry ``i``."""
        r = self.refs[self.records[i]["ref_id"]]
        return {**r, "dets": self.dets[r["image_id"]]}

    def image_size(self, i: int) -> tuple[int, int]:
        """(width, height) of entry ``i``'s original image (boxes are in its pixels)."""
        path = self.records[i]["images"][0]
        if path not in self._sizes:
            from PIL import Image

            with PathManager.open(path, "rb") as f:
                self._sizes[path] = Image.open(f).size
        return self._sizes[path]
