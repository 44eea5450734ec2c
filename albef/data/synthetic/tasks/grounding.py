"""The synthetic referring-expression grounding task (RefCOCO+ format, weakly supervised)::

    root/grounding/                       image root: root/grounding
      images/{train,val,test}/000000.jpg
      train.json  [{"image": "images/train/000000.jpg", "text": str}, ...]  3 expressions per image
      {val,test}.json  [{"image": ..., "text": str, "ref_id": int}, ...]  one expression per object
      refs.json   [{"ref_id", "image_id", "image", "bbox": [x, y, w, h], "split": "val" | "test",
                    "text"}, ...]  every val/test expression; bbox: the referent's box in pixels
      dets.json   {"<image_id>": [[x, y, w, h], ...]}  candidate boxes of every val/test image: both
                  objects' boxes jittered (IoU >= 0.7 with the truth) and 3 distractors (IoU < 0.3
                  with each object), shuffled

Grounding expressions (kinds "color_shape", "shape", "color", "relation"), each naming
exactly one of the two objects: "the red circle", "the circle" (shape unique), "the red one"
(colour unique), "the circle left of the blue square" / "the red circle left of the blue
square".  The manifest also holds ``referents[split][i]`` (0 or 1: which object of the
scene), ``objects[split][image]`` (both objects with their boxes) and ``chance_acc[split]``
(picking a candidate box at random; IoU >= 0.5 by :func:`~albef.metrics.box_iou.box_iou_official`, the official
inclusive-pixel ``computeIoU``).  Boxes are ``[x, y, w, h]`` floats (2 decimals): each shape's
square bounding box (:func:`~albef.data.synthetic.render._render_with_boxes`).
"""
from __future__ import annotations

import random

from albef.data.synthetic.render import _SIZE_RANGE, _render_with_boxes
from albef.data.synthetic.scenes import _INVERSE, _all_canonical_scenes, _phrase
from albef.data.synthetic.tasks.common import SPLITS, Scene, _balanced, _objects, _words
from albef.metrics.box_iou import box_iou_official

# Referring expressions of one object of a picture (the other object differs from it).
GROUNDING_KINDS = ("color_shape", "shape", "color", "relation")
_GROUNDING_TEMPLATES = {
    "color_shape": "the {color} {shape}",  # always unique
    "shape": "the {shape}",  # only when the shape is unique in the scene
    "color": "the {color} one",  # only when the colour is unique in the scene
    "relation": "the {head} {rel} the {other}",  # head: "circle" (if unique) or "red circle"
}
_GROUNDING_TRAIN_PER_IMAGE = 3  # train: expressions per image (either object); val/test: one per object
_GROUNDING_NUM_DISTRACTORS = 3  # dets.json: random boxes besides the two (jittered) object boxes
_DET_MIN_IOU = 0.7  # a jittered object box overlaps its ground truth at least this much
_DISTRACTOR_MAX_IOU = 0.3  # a distractor overlaps each object box less than this


def _grounding_options(sc: Scene, ref: int, rng: random.Random) -> list[tuple[str, str]]:
    """``[(kind, expression)]`` that name object ``ref`` (0 or 1) of ``sc`` and not the other one."""
    objs = _objects(sc)
    o, other = objs[ref], objs[1 - ref]
    rel = sc[2] if ref == 0 else _INVERSE[sc[2]]  # where the referent is relative to the other object
    out = [("color_shape", _GROUNDING_TEMPLATES["color_shape"].format(color=o[0], shape=o[1]))]
    if o[1] != other[1]:
        out.append(("shape", _GROUNDING_TEMPLATES["shape"].format(shape=o[1])))
    if o[0] != other[0]:
        out.append(("color", _GROUNDING_TEMPLATES["color"].format(color=o[0])))
    head = o[1] if o[1] != other[1] and rng.random() < 0.5 else _words(o)
    out.append(("relation", _GROUNDING_TEMPLATES["relation"].format(head=head, rel=_phrase(rel), other=_words(other))))
    return out


def _round_box(box) -> list[float]:
    return [round(float(v), 2) for v in box]


def _jittered_box(box, image_size: int, rng: random.Random) -> list[float]:
    """``box`` moved and rescaled a little, as a detector would find it (inside the image,
    IoU >= _DET_MIN_IOU with ``box``)."""
    x, y, w, h = box
    for _ in range(10000):
        nw, nh = w * rng.uniform(0.88, 1.12), h * rng.uniform(0.88, 1.12)
        cx, cy = x + w / 2 + rng.uniform(-0.08, 0.08) * w, y + h / 2 + rng.uniform(-0.08, 0.08) * h
        x1, y1 = round(max(0.0, cx - nw / 2), 2), round(max(0.0, cy - nh / 2), 2)
        x2, y2 = round(min(float(image_size), cx + nw / 2), 2), round(min(float(image_size), cy + nh / 2), 2)
        cand = [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)]
        if box_iou_official(cand, box) >= _DET_MIN_IOU:
            return cand
    raise RuntimeError(f"cannot jitter {box} within IoU {_DET_MIN_IOU}")  # cannot happen


def _distractor_box(gt_boxes, image_size: int, rng: random.Random) -> list[float]:
    """A random box of the objects' size range inside the image, IoU < _DISTRACTOR_MAX_IOU
    with every object box."""
    lo, hi = (f * image_size for f in _SIZE_RANGE)
    for _ in range(10000):
        w, h = round(rng.uniform(lo, hi), 2), round(rng.uniform(lo, hi), 2)
        cand = [round(rng.uniform(0, image_size - w), 2), round(rng.uniform(0, image_size - h), 2), w, h]
        if all(box_iou_official(cand, g) < _DISTRACTOR_MAX_IOU for g in gt_boxes):
            return cand
    raise RuntimeError(f"no distractor box of IoU < {_DISTRACTOR_MAX_IOU} in a {image_size}px image")  # cannot happen


def _build_grounding(p: dict, tag: str, colors, shapes_):
    """One scene per image (balanced passes), rendered with its objects' boxes; train:
    _GROUNDING_TRAIN_PER_IMAGE distinct expressions per image (either object), val/test: one
    expression per object, each a ref of refs.json, and per image the candidate boxes of
    dets.json (both objects' boxes jittered, plus _GROUNDING_NUM_DISTRACTORS distractors)."""
    pool = _all_canonical_scenes(colors, shapes_)
    size, quality = p["image_size"], p["jpeg_quality"]
    ann, scenes, kinds, referents, objects, renders = {}, {}, {}, {}, {}, []
    refs, dets, chance = [], {}, {}
    ref_id = image_id = 0
    for split in SPLITS:
        split_scenes = _balanced(pool, p[f"num_{split}"], random.Random(f"{tag}/{split}-scenes"))
        rng = random.Random(f"{tag}/{split}-expressions")
        det_rng = random.Random(f"{tag}/{split}-dets")
        ann[split], scenes[split], kinds[split], referents[split], objects[split] = [], [], [], [], []
        hits = []  # per expression: share of candidate boxes with IoU >= 0.5 to the referent's box
        for i, sc in enumerate(split_scenes):
            rel = f"images/{split}/{i:06d}.jpg"
            rtag = f"{tag}/render/{split}/{i}"
            data, boxes = _render_with_boxes(sc, size, random.Random(rtag), quality)
            boxes = [_round_box(b) for b in boxes]
            renders.append((rel, sc, rtag, data))
            objects[split].append([{"color": o[0], "shape": o[1], "bbox": b} for o, b in zip(_objects(sc), boxes)])
            if split == "train":
                options = [(ref, kind, text) for ref in (0, 1) for kind, text in _grounding_options(sc, ref, rng)]
                chosen = rng.sample(options, min(_GROUNDING_TRAIN_PER_IMAGE, len(options)))
            else:
                chosen = [(ref, *rng.choice(_grounding_options(sc, ref, rng))) for ref in (0, 1)]
                cands = [_jittered_box(b, size, det_rng) for b in boxes]
                cands += [_distractor_box(boxes, size, det_rng) for _ in range(_GROUNDING_NUM_DISTRACTORS)]
                det_rng.shuffle(cands)
                dets[str(image_id)] = cands
            for ref, kind, text in chosen:
                if split == "train":
                    ann[split].append({"image": rel, "text": text})
                else:
                    ann[split].append({"image": rel, "text": text, "ref_id": ref_id})
                    refs.append({"ref_id": ref_id, "image_id": image_id, "image": rel, "bbox": boxes[ref],
                                 "split": split, "text": text})
                    hits.append(sum(box_iou_official(c, boxes[ref]) >= 0.5 for c in cands) / len(cands))
                    ref_id += 1
                scenes[split].append(list(sc))
                kinds[split].append(kind)
                referents[split].append(ref)
            if split != "train":
                image_id += 1
        if split != "train":
            chance[split] = round(sum(hits) / len(hits), 6)
    extra = {
        "kinds": kinds,
        # which object of the scene (0: colour1/shape1, 1: colour2/shape2) entry i refers to
        "referents": referents,
        # per image: both objects with their ground-truth [x, y, w, h] boxes (pixels)
        "objects": objects,
        # picking a candidate box of dets.json at random: mean share of boxes with IoU >= 0.5
        "chance_acc": chance,
        "files": {"refs.json": refs, "dets.json": dets},
    }
    return ann, scenes, extra, renders
