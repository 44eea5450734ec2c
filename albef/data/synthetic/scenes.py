"""The shapes world's scenes: colours, shapes, relations, and the captions of a scene.

A scene is ``(colour1, shape1, relation, colour2, shape2)`` with the two objects never
identical.  ``A left of B`` is the same scene as ``B right of A`` (and ``A above B`` as
``B below A``); the canonical form uses only ``left`` and ``above``.

Captions of a canonical scene, where ``A``/``B`` are noun phrases ``"a <colour> <shape>"``
(``"an orange ..."`` for orange)::

    left:   "A left of B"  (canonical)      above:  "A above B"  (canonical)
            "B right of A"                          "B below A"
            "A to the left of B"
            "B to the right of A"

Under a horizontal flip the swap ``{left: right, right: left}`` keeps every caption true.
Pure symbols, no pixels (:mod:`.render` draws a scene) and no files (:mod:`.shapes`
writes the pretraining dataset, :mod:`.tasks` the downstream ones): every generator of
the world builds on this module and it imports none of them.
"""
from __future__ import annotations

import itertools
import random

__all__ = ["COLORS", "SHAPES", "RELATIONS", "canonical_scene", "canonical_caption", "scene_captions"]

#: Colour name -> RGB, chosen far apart from each other and from the light background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 215, 30),
    "purple": (140, 50, 180),
    "orange": (250, 140, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
_INVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}
_AXIS = {"left": "x", "right": "x", "above": "y", "below": "y"}
_CANONICAL_RELATION = {"x": "left", "y": "above"}

Scene = tuple  # (colour1, shape1, relation, colour2, shape2)


# ----------------------------------------------------------------------------- scenes
def canonical_scene(scene: Scene) -> Scene:
    """The canonical form of a scene: ``right``/``below`` become the converse ``left``/``above``."""
    c1, s1, r, c2, s2 = scene
    if r not in _INVERSE:
        raise ValueError(f"unknown relation {r!r}; expected one of {RELATIONS}")
    if (c1, s1) == (c2, s2):
        raise ValueError(f"the two objects of a scene must differ: {scene}")
    if r in ("right", "below"):
        return (c2, s2, _INVERSE[r], c1, s1)
    return (c1, s1, r, c2, s2)


def _phrase(relation: str) -> str:
    return {"left": "left of", "right": "right of", "above": "above", "below": "below"}[relation]


def _noun_phrase(color: str, shape: str) -> str:
    """``"a red circle"``, ``"an orange square"``."""
    return f"{'an' if color[0] in 'aeiou' else 'a'} {color} {shape}"


def canonical_caption(scene: Scene) -> str:
    """``"a red circle left of a blue square"`` (scene canonicalised first)."""
    c1, s1, r, c2, s2 = canonical_scene(scene)
    return f"{_noun_phrase(c1, s1)} {_phrase(r)} {_noun_phrase(c2, s2)}"


def scene_captions(scene: Scene) -> list[str]:
    """All paraphrases of a scene, canonical caption first; each is literally true of it."""
    c1, s1, r, c2, s2 = canonical_scene(scene)
    a, b = _noun_phrase(c1, s1), _noun_phrase(c2, s2)
    if r == "left":
        return [
            f"{a} left of {b}",
            f"{b} right of {a}",
            f"{a} to the left of {b}",
            f"{b} to the right of {a}",
        ]
    return [f"{a} above {b}", f"{b} below {a}"]


def _palette(num_colors: int = len(COLORS), num_shapes: int = len(SHAPES)) -> tuple[list[str], list[str]]:
    """The first ``num_colors`` colours and ``num_shapes`` shapes (a smaller, denser world)."""
    return list(COLORS)[:num_colors], list(SHAPES)[:num_shapes]


def _all_canonical_scenes(colors=tuple(COLORS), shapes=SHAPES) -> list[Scene]:
    objects = [(c, s) for c in colors for s in shapes]
    return [
        (o1[0], o1[1], r, o2[0], o2[1])
        for r in ("left", "above")
        for o1, o2 in itertools.permutations(objects, 2)
    ]


def _all_group_keys(colors=tuple(COLORS), shapes=SHAPES) -> list[tuple]:
    """(colour pair, shape pair, axis): each key defines one test group of 4 scenes."""
    return [
        (cp, sp, axis)
        for cp in itertools.combinations(colors, 2)
        for sp in itertools.combinations(shapes, 2)
        for axis in ("x", "y")
    ]


def _group_scenes(key: tuple, rng: random.Random) -> list[tuple[str, Scene]]:
    (ca, cb), (sa, sb), axis = key
    c1, c2 = (ca, cb) if rng.random() < 0.5 else (cb, ca)
    s1, s2 = (sa, sb) if rng.random() < 0.5 else (sb, sa)
    r = _CANONICAL_RELATION[axis]
    raw = [
        ("base", (c1, s1, r, c2, s2)),
        ("color_swap", (c2, s1, r, c1, s2)),
        ("shape_swap", (c1, s2, r, c2, s1)),
        ("relation_swap", (c1, s1, _INVERSE[r], c2, s2)),
    ]
    return [(kind, canonical_scene(sc)) for kind, sc in raw]

