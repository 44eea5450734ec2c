"""Downstream fine-tuning tasks in the synthetic shapes world (see :mod:`.shapes`).

Each task is generated next to a complete pretraining dataset ``root`` (made by
:func:`~albef.data.synthetic.shapes.generate_synthetic`), with the same palette and image
size, and its texts use only words that the pretraining vocabulary ``root/vocab.txt``
tokenises without ``[UNK]`` (a model pretrained on ``root`` is fine-tuned on them)::

    root/retrieval/                       image root: root/retrieval
      images/{train,val,test}/000000.jpg
      train.json  [{"image": "images/train/000000.jpg", "caption": str, "image_id": str}, ...]
                  one entry per caption, 3-5 captions per image; image_id names the scene
                  (renders of one scene show the same content: positives of each other, as in pretraining)
      val.json    [{"image": "images/val/000000.jpg", "caption": [str, ...]}, ...]   2-4 captions
      test.json   (as val.json) minimal pairs: each image has a partner whose captions
                  use the same words (a colour, shape or relation swap)
    root/ve/                              image root: root/ve/images
      images/train_000000.jpg ...         one folder for all splits; ids are "<split>_<index>"
      {train,val,test}.json  [{"image": "train_000000", "sentence": str,
                               "label": "entailment" | "neutral" | "contradiction"}, ...]
                             three statements per image, one per label
    root/nlvr/                            image root: root/nlvr
      images/{train,val,test}/000000.jpg  pair i shows images 2i (left) and 2i+1 (right)
      {train,val,test}.json  [{"images": [left, right], "sentence": str, "label": "True" | "False"}, ...]
    root/<task>/manifest.json  format version, params (incl. the pretraining params),
                               counts, label counts, and the scene(s) of every entry

A scene is ``(colour1, shape1, relation, colour2, shape2)`` as in :mod:`.shapes`; every
text is derived from the scene(s) of its image(s) and is literally true or false of them
as labelled.  The manifest stores, per split, ``scenes[split][i]``: the canonical scene of
entry ``i`` (retrieval, ve) or the ``[left, right]`` scenes (nlvr), and ``kinds[split][i]``,
how the text was made.

Vocabulary: the pretraining vocabulary holds the special tokens, the characters of the
pretraining captions (``##`` continuations only of characters that occur inside a word)
and every pretraining caption word.  With the default world (5 colours, 3 shapes) ``s`` and
``y`` occur only word-initially, so e.g. "is", "has", "pictures" and "heavy" become
``[UNK]``; the templates avoid them (e.g. "we see ...", "... can be seen", "in each
picture").  Every template word is checked with the pretraining tokenizer before anything
is written, and a ValueError names the words that cannot be tokenised.  The pretraining
vocabulary holds every task word as one token (:func:`task_words`, used by
``shapes._build_vocab``); ``manifest["max_text_tokens"]`` is the longest text in word pieces
(without [CLS]/[SEP]).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from typing import Any

from albef.data.synthetic import shapes
from albef.data.synthetic.generated import build_dir_atomically, check_manifest, is_empty_dir
from albef.data.synthetic.shapes import (
    _INVERSE,
    _all_canonical_scenes,
    _all_group_keys,
    _dump_json,
    _group_scenes,
    _noun_phrase,
    _palette,
    _render,
    canonical_scene,
)

__all__ = ["TASKS", "TASK_FORMAT_VERSION", "VE_LABELS", "NLVR_LABELS", "UNRENDERED_PROPERTIES", "generate_task_data", "task_paths"]

TASKS = ("retrieval", "ve", "nlvr")
TASK_FORMAT_VERSION = 1
JPEG_QUALITY = 95
VE_LABELS = ("entailment", "neutral", "contradiction")
NLVR_LABELS = ("True", "False")
_SPLITS = ("train", "val", "test")
#: default (num_train, num_val, num_test): images (retrieval, ve) or pairs (nlvr)
_DEFAULTS = {"retrieval": (3000, 52, 104), "ve": (2000, 150, 300), "nlvr": (12000, 200, 400)}

# Properties the renderer never shows: a statement giving one of them to an object that is
# in the picture is neither shown nor ruled out by it (VE "neutral").
_MATERIALS = ("wooden", "iron", "paper", "rubber", "copper", "leather", "cotton")
_FEELS = ("hot", "cold", "wet", "soft", "hard", "rough")
UNRENDERED_PROPERTIES = _MATERIALS + _FEELS

# Relation phrases; a statement never changes the axis of a scene (a "left of" scene is
# never described with "above"/"below"), so every relational text is clearly true or false.
_REL_PHRASES = {"left": ("left of", "to the left of"), "right": ("right of", "to the right of"), "above": ("above",), "below": ("below",)}

# Retrieval captions of a canonical scene (obj1 <relation> obj2, relation left/above):
# (orientation, template); "fwd" describes obj1 relative to obj2, "rev" obj2 relative to
# obj1.  {A}/{B}: "a red circle" (subject/object), {a}/{b}: "the red circle".  The first
# ones of each axis are the pretraining paraphrases (shapes.scene_captions), the others a
# different style (a small domain shift, as COCO captions vs web alt-texts).
_RETRIEVAL_TEMPLATES = {
    "left": (
        ("fwd", "{A} left of {B}"),
        ("rev", "{A} right of {B}"),
        ("fwd", "{A} to the left of {B}"),
        ("rev", "{A} to the right of {B}"),
        ("fwd", "a picture of {A} to the left of {B}"),
        ("rev", "a picture of {A} to the right of {B}"),
        ("fwd", "{A} placed left of {B}"),
        ("rev", "{A} placed to the right of {B}"),
        ("fwd", "{A} drawn to the left of {B}"),
        ("rev", "{A} drawn right of {B}"),
        ("fwd", "{a} left of {b}"),
        ("rev", "{a} to the right of {b}"),
        ("fwd", "{A} further left than {B}"),
        ("rev", "{A} further right than {B}"),
        ("fwd", "we see {A} to the left of {B}"),
        ("rev", "we see {A} right of {B}"),
    ),
    "above": (
        ("fwd", "{A} above {B}"),
        ("rev", "{A} below {B}"),
        ("fwd", "a picture of {A} above {B}"),
        ("rev", "a picture of {A} below {B}"),
        ("fwd", "{A} placed above {B}"),
        ("rev", "{A} placed below {B}"),
        ("fwd", "{A} drawn above {B}"),
        ("rev", "{A} drawn below {B}"),
        ("fwd", "{a} above {b}"),
        ("rev", "{a} below {b}"),
        ("fwd", "{A} higher than {B}"),
        ("rev", "{A} lower than {B}"),
        ("fwd", "{A} higher up than {B}"),
        ("rev", "{A} further down than {B}"),
        ("fwd", "we see {A} above {B}"),
        ("rev", "we see {A} below {B}"),
    ),
}
# VE statements.  {A}: "a red circle"; {M}: "a red wooden circle"; {a}: "the red circle".
_VE_OBJECT = ("we see {A}", "{A} can be seen")
_VE_RELATION = ("we see {A} {rel} {B}", "{A} can be seen {rel} {B}", "{A} {rel} {B}")
_VE_MATERIAL = ("we see {M}", "{M} can be seen")
_VE_FEEL = ("{a} felt {p}", "{a} would feel {p}")
# NLVR statements about a pair of pictures.
_NLVR_SIDE = ("in the {side} picture we see {A}", "we see {A} in the {side} picture")
_NLVR_EACH = ("we see {A} in each picture", "in each picture we see {A}")
_NLVR_ONE = ("we see {A} in one picture but not the other",)
_NLVR_NEITHER = ("we see {A} in neither picture",)
_NLVR_SIDE_RELATION = ("in the {side} picture we see {A} {rel} {B}",)
_NLVR_KINDS = ("side", "each", "one", "neither", "side_relation")
_NLVR_KIND_WEIGHTS = (0.3, 0.15, 0.15, 0.1, 0.3)

Scene = tuple
Obj = tuple  # (colour, shape)


# ------------------------------------------------------------------------------ paths
def task_paths(root: str, task: str) -> dict:
    """``{"dir", "train", "val", "test", "manifest", "image_root", "vocab"}`` of a task under ``root``.

    ``image_root`` is what the task's JSON image paths are relative to (``root/<task>``,
    or ``root/ve/images`` for the VE ids); ``vocab`` is the pretraining vocabulary.
    """
    _check_task(task)
    d = os.path.join(os.fspath(root), task)
    return {
        "dir": d,
        **{split: os.path.join(d, f"{split}.json") for split in _SPLITS},
        "manifest": os.path.join(d, "manifest.json"),
        "image_root": os.path.join(d, "images") if task == "ve" else d,
        "vocab": os.path.join(os.fspath(root), "vocab.txt"),
    }


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


# ---------------------------------------------------------------------------- texts
def _objects(scene: Scene) -> list[Obj]:
    return [(scene[0], scene[1]), (scene[3], scene[4])]


def _the(obj: Obj) -> str:
    return f"the {obj[0]} {obj[1]}"


def _a(obj: Obj) -> str:
    return _noun_phrase(*obj)


def _oriented(scene: Scene, rng: random.Random) -> Scene:
    """The scene as stated from either object's point of view (``A left of B`` or ``B right of A``)."""
    c1, s1, r, c2, s2 = scene
    return (c1, s1, r, c2, s2) if rng.random() < 0.5 else (c2, s2, _INVERSE[r], c1, s1)


def _relation_text(template: str, stmt: Scene, rng: random.Random, **extra: str) -> str:
    a, b = (stmt[0], stmt[1]), (stmt[3], stmt[4])
    return template.format(A=_a(a), B=_a(b), rel=rng.choice(_REL_PHRASES[stmt[2]]), **extra)


def _flipped(scene: Scene) -> Scene:
    """The same two objects in the converse relation on the same axis: false of ``scene``."""
    c1, s1, r, c2, s2 = scene
    return (c1, s1, _INVERSE[r], c2, s2)


def _attribute_swapped(scene: Scene) -> Scene:
    """Colours (or, for two objects of one colour, shapes) exchanged between the objects: false of ``scene``."""
    c1, s1, r, c2, s2 = scene
    return (c2, s1, r, c1, s2) if c1 != c2 else (c1, s2, r, c2, s1)


def _relation_holds(stmt: Scene, scene: Scene) -> bool | None:
    """True/False when ``stmt`` is clearly true/false of ``scene``; None when it is on the other axis."""
    present = set(_objects(scene))
    if not set(_objects(stmt)) <= present:
        return False
    if shapes._AXIS[stmt[2]] != shapes._AXIS[scene[2]]:
        return None
    return canonical_scene(stmt) == canonical_scene(scene)


def _retrieval_captions(scene: Scene, template_ids: list[int]) -> list[str]:
    c1, s1, r, c2, s2 = scene  # canonical: r is left or above
    fwd, rev = ((c1, s1), (c2, s2)), ((c2, s2), (c1, s1))
    out = []
    for t in template_ids:
        orient, template = _RETRIEVAL_TEMPLATES[r][t]
        x, y = fwd if orient == "fwd" else rev
        out.append(template.format(A=_a(x), B=_a(y), a=_the(x), b=_the(y)))
    return out


def task_words() -> set[str]:
    """Every word the task texts can contain: the templates' fixed words, the palette and the
    unrendered properties (the pretraining vocabulary holds each as one token)."""
    from albef.data.synthetic.shapes import COLORS, SHAPES

    return _template_words() | set(COLORS) | set(SHAPES)


def _template_words() -> set[str]:
    """Every fixed word the templates can produce (placeholders excluded)."""
    templates = [t for axis in _RETRIEVAL_TEMPLATES.values() for _, t in axis]
    templates += [*_VE_OBJECT, *_VE_RELATION, *_VE_MATERIAL, *_VE_FEEL]
    templates += [*_NLVR_SIDE, *_NLVR_EACH, *_NLVR_ONE, *_NLVR_NEITHER, *_NLVR_SIDE_RELATION]
    words = {w for t in templates for w in t.split() if not w.startswith("{")}
    words |= {w for phrases in _REL_PHRASES.values() for p in phrases for w in p.split()}
    words |= {"a", "an", "the", "left", "right"} | set(UNRENDERED_PROPERTIES)
    return words


# ------------------------------------------------------------------------ vocabulary
class _WordChecker:
    """Word-piece counts of words under the pretraining vocabulary; raises on ``[UNK]``."""

    def __init__(self, vocab_path: str):
        from albef.data.tokenization import build_tokenizer

        self.vocab_path = vocab_path
        self.tok = build_tokenizer(vocab_path)
        self.unk = self.tok.unk_token
        self.pieces: dict[str, int] = {}

    def check(self, words, what: str) -> None:
        bad = []
        for w in sorted(set(words) - set(self.pieces)):
            toks = self.tok.tokenize(w)
            if self.unk in toks or not toks:
                bad.append(w)
            else:
                self.pieces[w] = len(toks)
        if bad:
            raise ValueError(
                f"{what} {bad} cannot be tokenised without [UNK] by the pretraining vocabulary "
                f"{self.vocab_path} (a word may only use characters that occur in the pretraining "
                "captions, and inside a word only characters that occur inside a pretraining word)"
            )

    def max_tokens(self, texts) -> int:
        from albef.data.text import pre_caption

        longest = 0
        for text in texts:
            clean = pre_caption(text)
            if clean != text:  # cannot happen: texts are lower-case words without punctuation
                raise RuntimeError(f"text changes under pre_caption: {text!r} -> {clean!r}")
            words = clean.split(" ")
            self.check(words, "generated words")
            longest = max(longest, sum(self.pieces[w] for w in words))
        return longest


# ---------------------------------------------------------------------------- scenes
def _balanced(pool: list[Scene], n: int, rng: random.Random) -> list[Scene]:
    """``n`` scenes in passes over shuffled copies of ``pool`` (every scene equally often)."""
    out: list[Scene] = []
    while len(out) < n:
        perm = list(pool)
        rng.shuffle(perm)
        out.extend(perm[: n - len(out)])
    return out


def _minimal_pairs(colors, shapes_, n_pairs: int, rng: random.Random) -> list[tuple[str, Scene, Scene]]:
    """``n_pairs`` disjoint minimal pairs ``(swap kind, scene, partner)``.

    Each group key (colour pair, shape pair, axis) has exactly four scenes, which split
    into two pairs of the same swap kind (base + swap, and the other two).  The first pass
    takes one pair per key (so the first ``len(keys)`` pairs never share a key, like the
    pretraining test split), the second pass the complementary pairs.
    """
    keys = list(_all_group_keys(colors, shapes_))
    rng.shuffle(keys)
    swaps = ("color_swap", "shape_swap", "relation_swap")
    first, second = [], []
    for g, key in enumerate(keys):
        members = dict(_group_scenes(key, rng))
        kind = swaps[g % 3]
        others = [members[k] for k in swaps if k != kind]
        first.append((kind, members["base"], members[kind]))
        second.append((kind, others[0], others[1]))
    pairs = first + second
    if n_pairs > len(pairs):
        raise ValueError(f"retrieval val + test need {n_pairs} minimal pairs, but this world has only {len(pairs)}")
    return pairs[:n_pairs]


# ------------------------------------------------------------------------- builders
def _write_image(tmp: str, rel: str, scene: Scene, p: dict, tag: str) -> None:
    data = _render(scene, p["image_size"], random.Random(tag), p["jpeg_quality"])
    with open(os.path.join(tmp, rel), "wb") as f:
        f.write(data)


def _build_retrieval(p: dict, tag: str, colors, shapes_) -> tuple[dict, dict, dict, list]:
    """annotations per split, scenes per split, extra manifest items, images to render."""
    pool = _all_canonical_scenes(colors, shapes_)
    n_templates = {axis: len(t) for axis, t in _RETRIEVAL_TEMPLATES.items()}
    ann, scenes, renders = {}, {}, []

    # train: scenes in balanced passes; 3-5 distinct templates per image
    train_scenes = _balanced(pool, p["num_train"], random.Random(f"{tag}/train-scenes"))
    rng = random.Random(f"{tag}/train-captions")
    ann["train"], scenes["train"] = [], []
    for i, sc in enumerate(train_scenes):
        rel = f"images/train/{i:06d}.jpg"
        renders.append((rel, sc, f"{tag}/render/train/{i}"))
        ids = rng.sample(range(n_templates[sc[2]]), rng.randint(3, 5))
        for cap in _retrieval_captions(sc, ids):
            ann["train"].append({"image": rel, "caption": cap, "image_id": shapes.canonical_caption(sc)})
            scenes["train"].append(list(sc))

    # val/test: disjoint minimal pairs; both images of a pair use the same templates, so
    # each caption of one is a permutation of the words of the same caption of the other
    n_val, n_test = p["num_val"] // 2, p["num_test"] // 2
    pairs = _minimal_pairs(colors, shapes_, n_test + n_val, random.Random(f"{tag}/eval-pairs"))
    split_pairs = {"test": pairs[:n_test], "val": pairs[n_test:]}
    pair_index = {}
    for split in ("val", "test"):
        rng = random.Random(f"{tag}/{split}-captions")
        items = []  # (pair number, scene, template ids, kind)
        for k, (kind, sc_a, sc_b) in enumerate(split_pairs[split]):
            assert sc_a[2] == sc_b[2]
            ids = rng.sample(range(n_templates[sc_a[2]]), rng.randint(2, 4))
            items += [(k, sc_a, ids, kind), (k, sc_b, ids, kind)]
        random.Random(f"{tag}/{split}-order").shuffle(items)
        ann[split], scenes[split] = [], []
        where: dict[int, list[int]] = {}
        for i, (k, sc, ids, kind) in enumerate(items):
            rel = f"images/{split}/{i:06d}.jpg"
            renders.append((rel, sc, f"{tag}/render/{split}/{i}"))
            ann[split].append({"image": rel, "caption": _retrieval_captions(sc, ids)})
            scenes[split].append(list(sc))
            where.setdefault(k, []).append(i)
        pair_index[split] = [{"kind": split_pairs[split][k][0], "images": where[k]} for k in sorted(where)]
    return ann, scenes, {"pairs": pair_index}, renders


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
    for split in _SPLITS:
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
    for split in _SPLITS:
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


_BUILDERS = {"retrieval": _build_retrieval, "ve": _build_ve, "nlvr": _build_nlvr}


def _texts(task: str, entry: dict) -> list[str]:
    if task == "retrieval":
        return entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
    return [entry["sentence"]]


def _build(tmp: str, task: str, p: dict, vocab_path: str) -> None:
    tag = f"albef-shapes-tasks/v{TASK_FORMAT_VERSION}/{task}/{p['seed']}"
    colors, shapes_ = _palette(p["num_colors"], p["num_shapes"])
    checker = _WordChecker(vocab_path)
    checker.check(_template_words(), f"template words of the {task} task")
    checker.check(list(colors) + list(shapes_), "colour/shape words")

    ann, scenes, extra, renders = _BUILDERS[task](p, tag, colors, shapes_)
    max_tokens = checker.max_tokens(t for split in _SPLITS for e in ann[split] for t in _texts(task, e))

    os.makedirs(os.path.join(tmp, "images"))
    if task != "ve":  # ve keeps all splits in one folder (ids "<split>_<index>")
        for split in _SPLITS:
            os.makedirs(os.path.join(tmp, "images", split))
    for rel, sc, rtag in renders:
        _write_image(tmp, rel, sc, p, rtag)
    for split in _SPLITS:
        _dump_json(ann[split], os.path.join(tmp, f"{split}.json"))

    counts: dict[str, Any] = {split: len(ann[split]) for split in _SPLITS}
    if task == "nlvr":
        counts.update({f"{split}_images": 2 * len(ann[split]) for split in _SPLITS})
    else:
        counts.update({f"{split}_images": len({e["image"] for e in ann[split]}) for split in _SPLITS})
    if task == "retrieval":
        counts.update({f"{split}_captions": sum(len(_texts(task, e)) for e in ann[split]) for split in _SPLITS})
    manifest = {
        "format_version": TASK_FORMAT_VERSION,
        "task": task,
        "params": p,
        "counts": counts,
    }
    if task != "retrieval":
        order = VE_LABELS if task == "ve" else NLVR_LABELS
        manifest["label_counts"] = {
            split: {lab: Counter(e["label"] for e in ann[split])[lab] for lab in order} for split in _SPLITS
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
    _dump_json(manifest, os.path.join(tmp, "manifest.json"))  # written last: marks completion


# ------------------------------------------------------------------------- generate
def _read_json(path: str) -> Any:
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def _pretrain_info(root: str) -> dict:
    paths = shapes.synthetic_paths(root)
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
    for split in _SPLITS:
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
    statements per image) or pairs of images (nlvr); None gives the defaults
    (retrieval 3000/52/104, ve 2000/150/300, nlvr 12000/200/400).

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
