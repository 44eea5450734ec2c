"""What the task generators share: the splits, scene and object helpers, and the texts
that state a relation (see :mod:`albef.data.synthetic.tasks`).

A task builder is ``build(p, tag, colors, shapes_) -> (ann, scenes, extra, renders)``:
``p`` the task's params, ``tag`` the prefix of every random stream's seed string, the
world's palette; it returns the annotations per split, the scene(s) of each entry per
split, further manifest items (``extra["files"]``: further JSON files by name) and the
images to write, ``(relative path, scene, render tag[, jpeg bytes already rendered])``.
"""
from __future__ import annotations

import random

from albef.data.synthetic.scenes import _AXIS, _INVERSE, _noun_phrase, canonical_scene

SPLITS = ("train", "val", "test")

Scene = tuple  # (colour1, shape1, relation, colour2, shape2)
Obj = tuple  # (colour, shape)

# Relation phrases; a statement never changes the axis of a scene (a "left of" scene is
# never described with "above"/"below"), so every relational text is clearly true or false.
_REL_PHRASES = {"left": ("left of", "to the left of"), "right": ("right of", "to the right of"), "above": ("above",), "below": ("below",)}


def _objects(scene: Scene) -> list[Obj]:
    return [(scene[0], scene[1]), (scene[3], scene[4])]


def _the(obj: Obj) -> str:
    return f"the {obj[0]} {obj[1]}"


def _a(obj: Obj) -> str:
    return _noun_phrase(*obj)


def _words(obj: Obj) -> str:
    """``"red circle"``: an object without article (a VQA answer, part of a question)."""
    return f"{obj[0]} {obj[1]}"


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
    if _AXIS[stmt[2]] != _AXIS[scene[2]]:
        return None
    return canonical_scene(stmt) == canonical_scene(scene)


def _balanced(pool: list[Scene], n: int, rng: random.Random) -> list[Scene]:
    """``n`` scenes in passes over shuffled copies of ``pool`` (every scene equally often)."""
    out: list[Scene] = []
    while len(out) < n:
        perm = list(pool)
        rng.shuffle(perm)
        out.extend(perm[: n - len(out)])
    return out
