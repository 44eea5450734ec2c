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
    root/vqa/                             image root: root/vqa
      images/{train,val,test}/000000.jpg  one scene per image, 4 questions of different kinds each
      {train,val,test}.json  [{"question_id": int (unique over all splits), "question": str,
                               "answer": [10 annotator answers], "image": "images/train/000000.jpg",
                               "dataset": "vqa"}, ...]
                             6-10 annotators give the correct answer (always the strict
                             plurality), the others a wrong answer of the same kind
      answer_list.json       every candidate answer, sorted: colours, shapes, relations,
                             "none"/"one"/"two" and every "<colour> <shape>"
    root/grounding/                       image root: root/grounding
      images/{train,val,test}/000000.jpg
      train.json  [{"image": "images/train/000000.jpg", "text": str}, ...]  3 expressions per image
      {val,test}.json  [{"image": ..., "text": str, "ref_id": int}, ...]  one expression per object
      refs.json   [{"ref_id", "image_id", "image", "bbox": [x, y, w, h], "split": "val" | "test",
                    "text"}, ...]  every val/test expression; bbox: the referent's box in pixels
      dets.json   {"<image_id>": [[x, y, w, h], ...]}  candidate boxes of every val/test image: both
                  objects' boxes jittered (IoU >= 0.7 with the truth) and 3 distractors (IoU < 0.3
                  with each object), shuffled
    root/<task>/manifest.json  format version, params (incl. the pretraining params),
                               counts, label counts (ve, nlvr), and the scene(s) of every entry

A scene is ``(colour1, shape1, relation, colour2, shape2)`` as in :mod:`.shapes`; every
text is derived from the scene(s) of its image(s) and is literally true or false of them
as labelled.  The manifest stores, per split, ``scenes[split][i]``: the canonical scene of
entry ``i`` (retrieval, ve, vqa, grounding) or the ``[left, right]`` scenes (nlvr), and ``kinds[split][i]``,
how the text was made.

VQA questions (kinds "color", "shape", "relation", "object", "count"; one correct answer each)::

    what colour do we see on the circle                    -> red      (the shape is unique in the scene)
    what shape do we see in red                            -> circle   (the colour is unique in the scene)
    where do we see the red circle relative to the blue square -> left / right / above / below
    what do we see left of the blue square                 -> red circle
    how often do we see a circle / how often do we see red -> none / one / two

The manifest also holds ``answer_counts[split]`` (correct answers) and ``majority_baseline``
(the most common correct train answer and its val/test accuracy under :func:`vqa_accuracy`).

Grounding expressions (kinds "color_shape", "shape", "color", "relation"), each naming
exactly one of the two objects: "the red circle", "the circle" (shape unique), "the red one"
(colour unique), "the circle left of the blue square" / "the red circle left of the blue
square".  The manifest also holds ``referents[split][i]`` (0 or 1: which object of the
scene), ``objects[split][image]`` (both objects with their boxes) and ``chance_acc[split]``
(picking a candidate box at random; IoU >= 0.5 by :func:`box_iou_official`, the official
inclusive-pixel ``computeIoU``).  Boxes are ``[x, y, w, h]`` floats (2 decimals): each shape's
square bounding box (:func:`.shapes._render_with_boxes`).

Vocabulary: the pretraining vocabulary holds the special tokens, the characters of the
pretraining captions (``##`` continuations only of characters that occur inside a word)
and every pretraining caption word.  With the default world (5 colours, 3 shapes) ``s`` and
``y`` occur only word-initially, so e.g. "is", "has", "pictures" and "heavy" become
``[UNK]``; the templates avoid them (e.g. "we see ...", "... can be seen", "in each
picture").  Every template word is checked with the pretraining tokenizer before anything
is written, and a ValueError names the words that cannot be tokenised.  The pretraining
vocabulary holds every retrieval/ve/nlvr word as one token (:func:`task_words`, used by
``shapes._build_vocab``); the vqa and grounding words are not added (the pretraining data
stays byte-identical), so several of them ("what", "colour", "where", "relative", "how",
"often", "none", "two", ...) are split into word pieces; ``manifest["max_text_tokens"]`` is
the longest text in word pieces (without [CLS]/[SEP]; vqa: questions and answers).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from typing import Any

from albef.data.synthetic import shapes
from albef.evaluation.vqa_accuracy import vqa_accuracy  # noqa: F401  (exported: the manifest's baseline uses it)
from albef.data.synthetic.generated import build_dir_atomically, check_manifest, is_empty_dir
from albef.data.synthetic.shapes import (
    _INVERSE,
    _all_canonical_scenes,
    _all_group_keys,
    _dump_json,
    _group_scenes,
    _noun_phrase,
    _palette,
    _phrase,
    _render,
    _render_with_boxes,
    canonical_scene,
)

__all__ = [
    "TASKS", "TASK_FORMAT_VERSION", "VE_LABELS", "NLVR_LABELS", "VQA_KINDS", "VQA_COUNTS", "GROUNDING_KINDS",
    "UNRENDERED_PROPERTIES", "generate_task_data", "task_paths", "vqa_accuracy", "box_iou_official",
]

TASKS = ("retrieval", "ve", "nlvr", "vqa", "grounding")
TASK_FORMAT_VERSION = 1
JPEG_QUALITY = 95
VE_LABELS = ("entailment", "neutral", "contradiction")
NLVR_LABELS = ("True", "False")
_SPLITS = ("train", "val", "test")
#: default (num_train, num_val, num_test): images (retrieval, ve, vqa, grounding) or pairs (nlvr)
_DEFAULTS = {
    "retrieval": (3000, 52, 104),
    "ve": (2000, 150, 300),
    "nlvr": (12000, 200, 400),
    "vqa": (2000, 150, 300),
    "grounding": (2000, 150, 300),
}

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
# VQA questions, one template per kind (each has exactly one correct answer of its kind).
# {shape}/{color}: a palette word; {a}/{b}: "red circle"; {rel}: "left of", "above", ...;
# {A}: "a circle".  Their words are checked with the pretraining tokenizer but are not part
# of task_words() (the pretraining vocabulary stays as it is): most fall into word pieces.
VQA_KINDS = ("color", "shape", "relation", "object", "count")
VQA_COUNTS = ("none", "one", "two")  # answers of "count" questions: 0, 1, 2 objects
_VQA_TEMPLATES = {
    "color": "what colour do we see on the {shape}",  # only when the shape is unique in the scene
    "shape": "what shape do we see in {color}",  # only when the colour is unique in the scene
    "relation": "where do we see the {a} relative to the {b}",  # -> left / right / above / below
    "object": "what do we see {rel} the {b}",  # -> "red circle"
    "count_shape": "how often do we see {A}",  # -> none / one / two
    "count_color": "how often do we see {color}",
}
_VQA_QUESTIONS_PER_IMAGE = 4  # of 4 different kinds
_VQA_NUM_ANSWERS = 10  # annotators per question, as in VQA v2
_VQA_CORRECT_ANNOTATORS = (10, 9, 8, 7, 6)  # drawn uniformly; the rest give a wrong answer
_VQA_COUNT_ABSENT = 0.4  # share of count questions about an attribute not in the picture
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

Scene = tuple
Obj = tuple  # (colour, shape)


# ------------------------------------------------------------------------------ paths
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
        **{split: os.path.join(d, f"{split}.json") for split in _SPLITS},
        "manifest": os.path.join(d, "manifest.json"),
        "image_root": os.path.join(d, "images") if task == "ve" else d,
        "vocab": os.path.join(os.fspath(root), "vocab.txt"),
        **({"answer_list": os.path.join(d, "answer_list.json")} if task == "vqa" else {}),
        **({"refs": os.path.join(d, "refs.json"), "dets": os.path.join(d, "dets.json")} if task == "grounding" else {}),
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


def _extra_template_words(task: str) -> set[str]:
    """The fixed words of the vqa / grounding templates and answers (empty for the other
    tasks).  Not in :func:`task_words`: the pretraining vocabulary does not change for them,
    and the words must only tokenise without [UNK] (most become several word pieces)."""
    if task == "vqa":
        templates = list(_VQA_TEMPLATES.values())
        words = set(VQA_COUNTS) | set(shapes.RELATIONS) | {"a", "an"}
    elif task == "grounding":
        templates = list(_GROUNDING_TEMPLATES.values())
        words = set()
    else:
        return set()
    words |= {w for t in templates for w in t.split() if not w.startswith("{")}
    words |= {w for r in shapes.RELATIONS for w in _phrase(r).split()}
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


# ------------------------------------------------------------------------------- vqa
def _words(obj: Obj) -> str:
    """``"red circle"``: an object without article (a VQA answer, part of a question)."""
    return f"{obj[0]} {obj[1]}"


def _vqa_questions(sc: Scene) -> dict[str, list[tuple[str, str, str | None]]]:
    """kind -> ``[(question, correct answer, plausible wrong answer or None)]`` of the kinds
    that do not need a random choice (all but "count"); each question has one correct answer."""
    objs = _objects(sc)
    out: dict[str, list] = {k: [] for k in VQA_KINDS if k != "count"}
    for o, other in ((objs[0], objs[1]), (objs[1], objs[0])):
        if o[1] != other[1]:  # the shape names one object
            out["color"].append((_VQA_TEMPLATES["color"].format(shape=o[1]), o[0], other[0] if other[0] != o[0] else None))
        if o[0] != other[0]:  # the colour names one object
            out["shape"].append((_VQA_TEMPLATES["shape"].format(color=o[0]), o[1], other[1] if other[1] != o[1] else None))
    c1, s1, r, c2, s2 = sc
    for st in ((c1, s1, r, c2, s2), (c2, s2, _INVERSE[r], c1, s1)):  # either object's point of view
        a, b = (st[0], st[1]), (st[3], st[4])
        out["relation"].append((_VQA_TEMPLATES["relation"].format(a=_words(a), b=_words(b)), st[2], _INVERSE[st[2]]))
        out["object"].append((_VQA_TEMPLATES["object"].format(rel=_phrase(st[2]), b=_words(b)), _words(a), _words(b)))
    return out


def _vqa_count_question(sc: Scene, colors, shapes_, rng: random.Random) -> tuple[str, str, None]:
    """"how often do we see a circle / red" about a palette shape or colour seen 0, 1 or 2
    times: absent in about _VQA_COUNT_ABSENT of the questions, otherwise one in the picture
    (the one both objects share, when there is one, half of the time)."""
    objs = _objects(sc)
    n_of = {("shape", s): sum(o[1] == s for o in objs) for s in shapes_}
    n_of.update({("color", c): sum(o[0] == c for o in objs) for c in colors})
    absent = [k for k, n in n_of.items() if n == 0]
    present = [k for k, n in n_of.items() if n > 0]
    twice = [k for k in present if n_of[k] == 2]
    if absent and rng.random() < _VQA_COUNT_ABSENT:
        key = rng.choice(absent)
    elif twice and rng.random() < 0.5:
        key = twice[0]
    else:
        key = rng.choice(present)
    what, word = key
    if what == "shape":
        question = _VQA_TEMPLATES["count_shape"].format(A=f"{'an' if word[0] in 'aeiou' else 'a'} {word}")
    else:
        question = _VQA_TEMPLATES["count_color"].format(color=word)
    return question, VQA_COUNTS[n_of[key]], None


def _vqa_annotators(correct: str, plausible: str | None, pool: list[str], rng: random.Random) -> list[str]:
    """_VQA_NUM_ANSWERS annotator answers: ``k`` of _VQA_CORRECT_ANNOTATORS give the correct
    one, each other one a wrong answer of the same kind (``plausible`` half of the time, when
    given); k >= 6 of 10, so the correct answer is always the strict plurality."""
    k = rng.choice(_VQA_CORRECT_ANNOTATORS)
    others = [a for a in pool if a != correct]
    wrong = [plausible if plausible is not None and rng.random() < 0.5 else rng.choice(others)
             for _ in range(_VQA_NUM_ANSWERS - k)]
    answers = [correct] * k + wrong
    rng.shuffle(answers)
    return answers


def _vqa_answer_pools(colors, shapes_) -> dict[str, list[str]]:
    """kind -> every answer a question of that kind can have."""
    return {
        "color": list(colors),
        "shape": list(shapes_),
        "relation": list(shapes.RELATIONS),
        "object": [_words((c, s)) for c in colors for s in shapes_],
        "count": list(VQA_COUNTS),
    }


def _build_vqa(p: dict, tag: str, colors, shapes_):
    """One scene per image (balanced passes), _VQA_QUESTIONS_PER_IMAGE questions of different
    kinds per image, each with _VQA_NUM_ANSWERS annotator answers."""
    pool = _all_canonical_scenes(colors, shapes_)
    answer_pools = _vqa_answer_pools(colors, shapes_)
    ann, scenes, kinds, correct, renders = {}, {}, {}, {}, []
    question_id = 0
    for split in _SPLITS:
        split_scenes = _balanced(pool, p[f"num_{split}"], random.Random(f"{tag}/{split}-scenes"))
        rng = random.Random(f"{tag}/{split}-questions")
        answer_rng = random.Random(f"{tag}/{split}-answers")
        ann[split], scenes[split], kinds[split], correct[split] = [], [], [], []
        for i, sc in enumerate(split_scenes):
            rel = f"images/{split}/{i:06d}.jpg"
            renders.append((rel, sc, f"{tag}/render/{split}/{i}"))
            fixed = _vqa_questions(sc)
            available = [k for k in VQA_KINDS if k == "count" or fixed[k]]  # >= 4: colour or shape differs
            for kind in rng.sample(available, _VQA_QUESTIONS_PER_IMAGE):
                if kind == "count":
                    question, answer, plausible = _vqa_count_question(sc, colors, shapes_, rng)
                else:
                    question, answer, plausible = rng.choice(fixed[kind])
                answers = _vqa_annotators(answer, plausible, answer_pools[kind], answer_rng)
                ann[split].append({"question_id": question_id, "question": question, "answer": answers,
                                   "image": rel, "dataset": "vqa"})
                scenes[split].append(list(sc))
                kinds[split].append(kind)
                correct[split].append(answer)
                question_id += 1
    answer_list = sorted({a for answers in answer_pools.values() for a in answers})
    train_counts = Counter(correct["train"])
    majority = min(train_counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    baseline = {"answer": majority}
    for split in ("val", "test"):
        accs = [vqa_accuracy(majority, e["answer"]) for e in ann[split]]
        baseline[f"{split}_acc"] = round(sum(accs) / len(accs), 6)
    extra = {
        "kinds": kinds,
        # how often each correct answer occurs
        "answer_counts": {split: dict(sorted(Counter(correct[split]).items())) for split in _SPLITS},
        # always answering the most common correct answer of train (official VQA accuracy)
        "majority_baseline": baseline,
        "files": {"answer_list.json": answer_list},
    }
    return ann, scenes, extra, renders


# ------------------------------------------------------------------------- grounding
def box_iou_official(a, b) -> float:
    """IoU of two ``[x, y, w, h]`` boxes as the official evaluation computes it (REFER's
    ``computeIoU``): :func:`albef.modeling.gradcam.box_iou_inclusive`, on plain lists."""
    import torch

    from albef.modeling.gradcam import box_iou_inclusive

    return float(box_iou_inclusive(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)))


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
    lo, hi = (f * image_size for f in shapes._SIZE_RANGE)
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
    for split in _SPLITS:
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
    max_tokens = checker.max_tokens(t for split in _SPLITS for e in ann[split] for t in _texts(task, e))

    os.makedirs(os.path.join(tmp, "images"))
    if task != "ve":  # ve keeps all splits in one folder (ids "<split>_<index>")
        for split in _SPLITS:
            os.makedirs(os.path.join(tmp, "images", split))
    for rel, sc, rtag, *data in renders:  # (rel, scene, render tag[, jpeg bytes already rendered])
        if data:
            with open(os.path.join(tmp, rel), "wb") as f:
                f.write(data[0])
        else:
            _write_image(tmp, rel, sc, p, rtag)
    for split in _SPLITS:
        _dump_json(ann[split], os.path.join(tmp, f"{split}.json"))
    for name, obj in files.items():
        _dump_json(obj, os.path.join(tmp, name))

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
    if task in ("ve", "nlvr"):
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
