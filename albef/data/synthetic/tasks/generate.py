"""Generating a synthetic downstream task under ``root/<task>``: paths, params, the build
into a temporary directory (the task's builder, the vocabulary check, the images, the
JSON files) and the manifest, written last.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from typing import Any

from albef.data.synthetic.generated import build_dir_atomically, check_manifest, dump_json, is_empty_dir
from albef.data.synthetic.render import _render
from albef.data.synthetic.scenes import _palette
from albef.data.synthetic.shapes import synthetic_paths
from albef.data.synthetic.tasks.common import SPLITS, Scene
from albef.data.synthetic.tasks.grounding import _build_grounding
from albef.data.synthetic.tasks.nlvr import NLVR_LABELS, _build_nlvr
from albef.data.synthetic.tasks.retrieval import _build_retrieval
from albef.data.synthetic.tasks.ve import UNRENDERED_PROPERTIES, VE_LABELS, _build_ve
from albef.data.synthetic.tasks.vocabulary import _extra_template_words, _template_words, _WordChecker
from albef.data.synthetic.tasks.vqa import _build_vqa

__all__ = ["TASKS", "TASK_FORMAT_VERSION", "generate_task_data", "task_paths"]

TASKS = ("retrieval", "ve", "nlvr", "vqa", "grounding")
TASK_FORMAT_VERSION = 1
JPEG_QUALITY = 95
#: default (num_train, num_val, num_test): images (retrieval, ve, vqa, grounding) or pairs (nlvr)
_DEFAULTS = {
    "retrieval": (3000, 52, 104),
    "ve": (2000, 150, 300),
    "nlvr": (12000, 200, 400),
    "vqa": (2000, 150, 300),
    "grounding": (2000, 150, 300),
}


def task_paths(root: str, task: str) -> dict:
    """``{"dir", "train", "val", "test", "manifest", "image_root", "vocab"}`` of a task under ``root``
    (vqa also ``"answer_list"``, grounding also ``"refs"`` and ``"dets"``).

    ``image_root`` is what the task's JSON image paths are relative to (``root/<task>``,
    or ``root/ve/images`` for the VE ids); ``vocab`` is the pretraining vocabulary.
    """
    _check_task(task)
    d = os.path.join(os.fspath(root), task)
    return {
        "dir": d,
        **{split: os.path.join(d, f"{split}.json") for split in SPLITS},
        "manifest": os.path.join(d, "manifest.json"),
        "image_root": os.path.join(d, "images") if task == "ve" else d,
        "vocab": os.path.join(os.fspath(root), "vocab.txt"),
        **({"answer_list": os.path.join(d, "answer_list.json")} if task == "vqa" else {}),
        **({"refs": os.path.join(d, "refs.json"), "dets": os.path.join(d, "dets.json")} if task == "grounding" else {}),
    }


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def _write_image(tmp: str, rel: str, scene: Scene, p: dict, tag: str) -> None:
    data = _render(scene, p["image_size"], random.Random(tag), p["jpeg_quality"])
    with open(os.path.join(tmp, rel), "wb") as f:
        f.write(data)


# task -> its builder: (params, tag, colours, shapes) -> (ann, scenes, extra, renders), see .common
_BUILDERS = {
    "retrieval": _build_retrieval,
    "ve": _build_ve,
    "nlvr": _build_nlvr,
    "vqa": _build_vqa,
    "grounding": _build_grounding,
}


def _texts(task: str, entry: dict) -> list[str]:
    if task == "retrieval":
        return entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
    if task == "vqa":
        return [entry["question"], *entry["answer"]]
    if task == "grounding":
        return [entry["text"]]
    return [entry["sentence"]]


def _build(tmp: str, task: str, p: dict, vocab_path: str) -> None:
    tag = f"albef-shapes-tasks/v{TASK_FORMAT_VERSION}/{task}/{p['seed']}"
    colors, shapes_ = _palette(p["num_colors"], p["num_shapes"])
    checker = _WordChecker(vocab_path)
    checker.check(_template_words(), f"template words of the {task} task")
    checker.check(_extra_template_words(task), f"template words of the {task} task")
    checker.check(list(colors) + list(shapes_), "colour/shape words")

    ann, scenes, extra, renders = _BUILDERS[task](p, tag, colors, shapes_)
    files = extra.pop("files", {})  # further JSON files of the task (answer_list, refs, dets)
    max_tokens = checker.max_tokens(t for split in SPLITS for e in ann[split] for t in _texts(task, e))

    os.makedirs(os.path.join(tmp, "images"))
    if task != "ve":  # ve keeps all splits in one folder (ids "<split>_<index>")
        for split in SPLITS:
            os.makedirs(os.path.join(tmp, "images", split))
    for rel, sc, rtag, *data in renders:  # (rel, scene, render tag[, jpeg bytes already rendered])
        if data:
            with open(os.path.join(tmp, rel), "wb") as f:
                f.write(data[0])
        else:
            _write_image(tmp, rel, sc, p, rtag)
    for split in SPLITS:
        dump_json(ann[split], os.path.join(tmp, f"{split}.json"))
    for name, obj in files.items():
        dump_json(obj, os.path.join(tmp, name))

    counts: dict[str, Any] = {split: len(ann[split]) for split in SPLITS}
    if task == "nlvr":
        counts.update({f"{split}_images": 2 * len(ann[split]) for split in SPLITS})
    else:
        counts.update({f"{split}_images": len({e["image"] for e in ann[split]}) for split in SPLITS})
    if task == "retrieval":
        counts.update({f"{split}_captions": sum(len(_texts(task, e)) for e in ann[split]) for split in SPLITS})
    manifest = {
        "format_version": TASK_FORMAT_VERSION,
        "task": task,
        "params": p,
        "counts": counts,
    }
    if task in ("ve", "nlvr"):
        order = VE_LABELS if task == "ve" else NLVR_LABELS
        manifest["label_counts"] = {
            split: {lab: Counter(e["label"] for e in ann[split])[lab] for lab in order} for split in SPLITS
        }
    manifest.update({
        "max_text_tokens": max_tokens,  # word pieces of the longest text, without [CLS]/[SEP]
        "colors": list(colors),
        "shapes": list(shapes_),
    })
    if task == "ve":
        manifest["unrendered_properties"] = list(UNRENDERED_PROPERTIES)
    manifest.update(extra)
    manifest["scenes"] = scenes
    dump_json(manifest, os.path.join(tmp, "manifest.json"))  # written last: marks completion


def _read_json(path: str) -> Any:
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def _pretrain_info(root: str) -> dict:
    paths = synthetic_paths(root)
    manifest_path = os.path.join(root, "manifest.json")
    if not os.path.isfile(manifest_path) or not os.path.isfile(paths["vocab"]):
        raise ValueError(
            f"{root!r} is not a complete synthetic pretraining dataset (no manifest.json or vocab.txt); "
            "generate it first with albef.data.synthetic.shapes.generate_synthetic"
        )
    manifest = _read_json(manifest_path)
    params = manifest.get("params", {})
    missing = [k for k in ("image_size", "num_colors", "num_shapes") if k not in params]
    if missing:
        raise ValueError(f"{manifest_path}: params lack {missing}; not a synthetic pretraining manifest")
    with open(paths["vocab"], "rb") as f:
        vocab_sha = hashlib.sha256(f.read()).hexdigest()
    return {"format_version": manifest.get("format_version"), "params": params, "vocab_sha256": vocab_sha}


def _params(task: str, seed: int, num_train, num_val, num_test, pretrain: dict) -> dict:
    d_train, d_val, d_test = _DEFAULTS[task]
    pp = pretrain["params"]
    p = {
        "task": task,
        "seed": int(seed),
        "num_train": int(d_train if num_train is None else num_train),
        "num_val": int(d_val if num_val is None else num_val),
        "num_test": int(d_test if num_test is None else num_test),
        "image_size": int(pp["image_size"]),
        "num_colors": int(pp["num_colors"]),
        "num_shapes": int(pp["num_shapes"]),
        "jpeg_quality": JPEG_QUALITY,
        "pretrain": pretrain,
    }
    for split in SPLITS:
        if p[f"num_{split}"] < 1:
            raise ValueError(f"num_{split} must be >= 1, got {p[f'num_{split}']}")
    if task == "retrieval":
        for split in ("val", "test"):
            n = p[f"num_{split}"]
            if n < 2 or n % 2:
                raise ValueError(f"retrieval num_{split} counts images of minimal pairs: an even number >= 2, got {n}")
    return p


def generate_task_data(
    root: str,
    task: str,
    seed: int = 0,
    num_train: int | None = None,
    num_val: int | None = None,
    num_test: int | None = None,
) -> dict:
    """Generate the downstream ``task`` (one of :data:`TASKS`) under ``root/<task>`` if it is
    not there yet; return its manifest dict.

    ``root`` must hold a complete pretraining dataset (ValueError naming it otherwise);
    image size, colours and shapes come from its manifest, and every text tokenises with its
    ``vocab.txt``.  ``num_*``: images (retrieval: val/test even, pairs of images; ve: three
    statements per image; vqa: four questions per image; grounding: three expressions per
    train image, two per val/test image) or pairs of images (nlvr); None gives the defaults
    (retrieval 3000/52/104, ve 2000/150/300, nlvr 12000/200/400, vqa 2000/150/300,
    grounding 2000/150/300).

    Deterministic: the same arguments (and pretraining params) give byte-identical files.
    An existing ``root/<task>`` is reused when its params equal the requested ones; with
    other params a ValueError names the directory, the stored and the requested params.
    Safe when several processes call it at once: each builds into its own temporary
    directory next to ``root/<task>`` and renames it into place; a loser of that race
    deletes its copy and uses the winner's.
    """
    _check_task(task)
    root = os.fspath(root)
    params = _params(task, seed, num_train, num_val, num_test, _pretrain_info(root))
    paths = task_paths(root, task)
    task_dir = paths["dir"]
    if os.path.exists(task_dir) and not is_empty_dir(task_dir):
        return check_manifest(task_dir, f"{task} task data", TASK_FORMAT_VERSION, params)

    build_dir_atomically(task_dir, lambda tmp: _build(tmp, task, params, paths["vocab"]))
    return check_manifest(task_dir, f"{task} task data", TASK_FORMAT_VERSION, params)
