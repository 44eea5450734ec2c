"""The synthetic visual entailment task (SNLI-VE format)::

    root/ve/                              image root: root/ve/images
      images/train_000000.jpg ...         one folder for all splits; ids are "<split>_<index>"
      {train,val,test}.json  [{"image": "train_000000", "sentence": str,
                               "label": "entailment" | "neutral" | "contradiction"}, ...]
                             three statements per image, one per label

Entailments state an object or the relation of the picture; contradictions an absent
object, the flipped relation or swapped attributes; neutral statements give an object of
the picture a property the renderer never shows (:data:`UNRENDERED_PROPERTIES`).
"""
from __future__ import annotations

import random

from albef.data.synthetic.scenes import _all_canonical_scenes, _noun_phrase
from albef.data.synthetic.tasks.common import (
    SPLITS,
    Scene,
    _a,
    _attribute_swapped,
    _balanced,
    _flipped,
    _objects,
    _oriented,
    _relation_text,
    _the,
)

VE_LABELS = ("entailment", "neutral", "contradiction")

# Properties the renderer never shows: a statement giving one of them to an object that is
# in the picture is neither shown nor ruled out by it (VE "neutral").
_MATERIALS = ("wooden", "iron", "paper", "rubber", "copper", "leather", "cotton")
_FEELS = ("hot", "cold", "wet", "soft", "hard", "rough")
UNRENDERED_PROPERTIES = _MATERIALS + _FEELS
# VE statements.  {A}: "a red circle"; {M}: "a red wooden circle"; {a}: "the red circle".
_VE_OBJECT = ("we see {A}", "{A} can be seen")
_VE_RELATION = ("we see {A} {rel} {B}", "{A} can be seen {rel} {B}", "{A} {rel} {B}")
_VE_MATERIAL = ("we see {M}", "{M} can be seen")
_VE_FEEL = ("{a} felt {p}", "{a} would feel {p}")


def _ve_statement(label: str, sc: Scene, colors, shapes_, rng: random.Random) -> tuple[str, str]:
    objs = _objects(sc)
    if label == "entailment":
        if rng.random() < 0.5:
            return "object", rng.choice(_VE_OBJECT).format(A=_a(rng.choice(objs)))
        return "relation", _relation_text(rng.choice(_VE_RELATION), _oriented(sc, rng), rng)
    if label == "contradiction":
        u = rng.random()
        if u < 0.5:
            present_c, present_s = {o[0] for o in objs}, {o[1] for o in objs}
            cands = [(c, s) for c in colors for s in shapes_ if c not in present_c or s not in present_s]
            if not cands:  # tiny world: every colour and shape is in the picture
                cands = [(c, s) for c in colors for s in shapes_ if (c, s) not in objs]
            return "absent_object", rng.choice(_VE_OBJECT).format(A=_a(rng.choice(cands)))
        kind, stmt = ("relation_flip", _flipped(sc)) if u < 0.75 else ("attribute_swap", _attribute_swapped(sc))
        return kind, _relation_text(rng.choice(_VE_RELATION), _oriented(stmt, rng), rng)
    obj = rng.choice(objs)  # neutral: an object in the picture, a property never rendered
    if rng.random() < 0.5:
        return "material", rng.choice(_VE_MATERIAL).format(M=_noun_phrase(obj[0], f"{rng.choice(_MATERIALS)} {obj[1]}"))
    return "feel", rng.choice(_VE_FEEL).format(a=_the(obj), p=rng.choice(_FEELS))


def _build_ve(p: dict, tag: str, colors, shapes_):
    pool = _all_canonical_scenes(colors, shapes_)
    ann, scenes, kinds, renders = {}, {}, {}, []
    for split in SPLITS:
        split_scenes = _balanced(pool, p[f"num_{split}"], random.Random(f"{tag}/{split}-scenes"))
        rng = random.Random(f"{tag}/{split}-statements")
        ann[split], scenes[split], kinds[split] = [], [], []
        for i, sc in enumerate(split_scenes):
            image_id = f"{split}_{i:06d}"
            renders.append((f"images/{image_id}.jpg", sc, f"{tag}/render/{split}/{i}"))
            labels = list(VE_LABELS)
            rng.shuffle(labels)
            for label in labels:
                kind, sentence = _ve_statement(label, sc, colors, shapes_, rng)
                ann[split].append({"image": image_id, "sentence": sentence, "label": label})
                scenes[split].append(list(sc))
                kinds[split].append(kind)
    return ann, scenes, {"kinds": kinds}, renders
