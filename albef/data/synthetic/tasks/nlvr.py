"""The synthetic NLVR2 task (a sentence about a pair of pictures, True or False)::

    root/nlvr/                            image root: root/nlvr
      images/{train,val,test}/000000.jpg  pair i shows images 2i (left) and 2i+1 (right)
      {train,val,test}.json  [{"images": [left, right], "sentence": str, "label": "True" | "False"}, ...]

The label is balanced exactly and every sentence form is True about as often as False,
so the sentence alone does not give the label away.
"""
from __future__ import annotations

import random

from albef.data.synthetic.scenes import _all_canonical_scenes
from albef.data.synthetic.tasks.common import (
    SPLITS,
    Obj,
    Scene,
    _a,
    _attribute_swapped,
    _balanced,
    _flipped,
    _objects,
    _oriented,
    _relation_holds,
    _relation_text,
)

NLVR_LABELS = ("True", "False")
# NLVR statements about a pair of pictures.
_NLVR_SIDE = ("in the {side} picture we see {A}", "we see {A} in the {side} picture")
_NLVR_EACH = ("we see {A} in each picture", "in each picture we see {A}")
_NLVR_ONE = ("we see {A} in one picture but not the other",)
_NLVR_NEITHER = ("we see {A} in neither picture",)
_NLVR_SIDE_RELATION = ("in the {side} picture we see {A} {rel} {B}",)
_NLVR_KINDS = ("side", "each", "one", "neither", "side_relation")
_NLVR_KIND_WEIGHTS = (0.3, 0.15, 0.15, 0.1, 0.3)


def _nlvr_options(want: bool, left: Scene, right: Scene, all_objs: list[Obj], rng: random.Random) -> dict:
    """kind -> the statements of that kind with truth value ``want`` for the pair (may be empty)."""
    sides = {"left": left, "right": right}
    in_l, in_r = set(_objects(left)), set(_objects(right))

    def objs_where(pred) -> list[Obj]:
        return [o for o in all_objs if pred(o in in_l, o in in_r)]

    options: dict[str, list] = {"side": [], "side_relation": []}
    for side, sc in sides.items():
        here, other = set(_objects(sc)), (right if side == "left" else left)
        if want:
            cands = sorted(here)
        else:
            absent = [o for o in all_objs if o not in here]
            harder = [o for o in absent if o in set(_objects(other))]  # in the other picture
            cands = harder if harder and rng.random() < 0.5 else absent
        options["side"] += [(side, o) for o in cands]
        if want:
            options["side_relation"].append((side, "true_relation", _oriented(sc, rng)))
        else:
            options["side_relation"].append((side, "relation_flip", _oriented(_flipped(sc), rng)))
            options["side_relation"].append((side, "attribute_swap", _oriented(_attribute_swapped(sc), rng)))
            if _relation_holds(other, sc) is False:  # the other picture's relation, clearly false here
                options["side_relation"].append((side, "other_relation", _oriented(other, rng)))
    both, one, none = objs_where(lambda l, r: l and r), objs_where(lambda l, r: l != r), objs_where(lambda l, r: not (l or r))
    options["each"] = both if want else (one if one and rng.random() < 0.5 else one + none)
    options["one"] = one if want else both + none
    options["neither"] = none if want else sorted(in_l | in_r)
    return options


def nlvr_sentence_form(sentence: str) -> str:
    """The form of a synthetic NLVR2 sentence (one of :data:`_NLVR_KINDS`), read back from
    its text, since the official format keeps only the sentence: "neither", "one" (in one
    picture but not the other), "each", "side_relation" (a relation inside the named
    picture) or "side" (an object in the named picture)."""
    if sentence.endswith(" in neither picture"):
        return "neither"
    if sentence.endswith(" in one picture but not the other"):
        return "one"
    if " each picture" in sentence:
        return "each"
    if sentence.startswith("in the ") and len(sentence.split(" we see ", 1)[1].split()) > 3:
        return "side_relation"  # "in the left picture we see a red circle left of a blue square"
    return "side"


def _nlvr_sentence(kind: str, options: dict, rng: random.Random) -> tuple[str, str]:
    if kind == "side":
        side, obj = rng.choice(options["side"])
        return kind, rng.choice(_NLVR_SIDE).format(side=side, A=_a(obj))
    if kind == "side_relation":
        side, sub, stmt = rng.choice(options["side_relation"])
        return f"side_relation/{sub}", _relation_text(rng.choice(_NLVR_SIDE_RELATION), stmt, rng, side=side)
    template = {"each": _NLVR_EACH, "one": _NLVR_ONE, "neither": _NLVR_NEITHER}[kind]
    return kind, rng.choice(template).format(A=_a(rng.choice(options[kind])))


def _build_nlvr(p: dict, tag: str, colors, shapes_):
    """Per entry: the label (exactly balanced) and the kind of sentence are drawn first, then
    pairs of scenes until one admits a sentence of that kind and label; so every kind is
    True about as often as False (the sentence alone does not give the label away)."""
    pool = _all_canonical_scenes(colors, shapes_)
    all_objs = [(c, s) for c in colors for s in shapes_]
    by_obj = {o: [sc for sc in pool if o in _objects(sc)] for o in all_objs}
    ann, scenes, kinds, renders = {}, {}, {}, []
    for split in SPLITS:
        n = p[f"num_{split}"]
        first = _balanced(pool, n, random.Random(f"{tag}/{split}-first-scenes"))
        rng = random.Random(f"{tag}/{split}-pairs")
        labels = [True] * (n // 2) + [False] * (n - n // 2)
        rng.shuffle(labels)
        ann[split], scenes[split], kinds[split] = [], [], []
        for i, want in enumerate(labels):
            kind = rng.choices(_NLVR_KINDS, _NLVR_KIND_WEIGHTS)[0]
            for attempt in range(1000):
                a = first[i] if attempt == 0 else rng.choice(pool)
                if rng.random() < 0.5:  # half of the pairs share an object
                    b = rng.choice([sc for sc in by_obj[rng.choice(_objects(a))] if sc != a])
                else:
                    b = rng.choice(pool)
                left, right = (a, b) if rng.random() < 0.5 else (b, a)
                options = _nlvr_options(want, left, right, all_objs, rng)
                if options[kind]:
                    break
            else:  # cannot happen in worlds of >= 4 objects
                raise RuntimeError(f"no pair of scenes admits a {want} {kind!r} statement")
            kind, sentence = _nlvr_sentence(kind, options, rng)
            pics = []
            for j, sc in ((2 * i, left), (2 * i + 1, right)):
                rel = f"images/{split}/{j:06d}.jpg"
                renders.append((rel, sc, f"{tag}/render/{split}/{j}"))
                pics.append(rel)
            ann[split].append({"images": pics, "sentence": sentence, "label": "True" if want else "False"})
            scenes[split].append([list(left), list(right)])
            kinds[split].append(kind)
    return ann, scenes, {"kinds": kinds}, renders
