"""A built-in, deterministic "shapes world" image-text dataset.

Every image shows exactly two coloured shapes in a spatial relation, described by
captions such as ``"a red circle left of a blue square"``.  The data is written as
real JPEG files plus JSON in the official ALBEF formats, so the framework's default
job can pretrain on a laptop CPU and then be evaluated on image-text retrieval::

    root/
      images/train/000000.jpg ...   RGB JPEG, image_size x image_size
      images/test/000000.jpg ...
      pretrain.json   [{"image": "images/train/000000.jpg", "caption": [str, ...], "image_id": str}, ...]
      test.json       [{"image": "images/test/000000.jpg", "caption": [str]}, ...]
      vocab.txt       WordPiece vocabulary: every caption word and every word of the
                      downstream tasks' texts is one token (see _build_vocab)
      manifest.json   format version, params, counts, test groups; marks a complete dataset

Scenes
------
A scene is ``(colour1, shape1, relation, colour2, shape2)`` with the two objects never
identical.  ``A left of B`` is the same scene as ``B right of A`` (and ``A above B`` as
``B below A``); the canonical form uses only ``left`` and ``above``.

Captions of a canonical scene, where ``A``/``B`` are noun phrases ``"a <colour> <shape>"``
(``"an orange ..."`` for orange)::

    left:   "A left of B"  (canonical)      above:  "A above B"  (canonical)
            "B right of A"                          "B below A"
            "A to the left of B"
            "B to the right of A"

``pretrain.json`` lists all of a scene's captions per image; ``test.json`` has the single
canonical caption.  Under a horizontal flip the swap ``{left: right, right: left}`` keeps
every caption true.

Test split
----------
``num_test_groups`` groups of 4 scenes sharing the same two colours, the same two shapes
and the same axis: the base ``(c1, s1, r, c2, s2)`` (c1 != c2, s1 != s2), its colour swap
``(c2, s1, r, c1, s2)``, its shape swap ``(c1, s2, r, c2, s1)`` and its relation swap
``(c1, s1, inverse(r), c2, s2)`` (canonically ``(c2, s2, r, c1, s1)``).  The four canonical
captions are permutations of the same words, so each is a hard negative for the others.
Groups never share a scene.  With ``holdout_test_scenes`` no test scene appears in training.
``test_group_size`` < 4 keeps the base and ``test_group_size - 1`` of the swaps (which swap
kinds rotates from group to group); 2 gives minimal pairs.
"""
from __future__ import annotations

import io
import itertools
import json
import os
import random
from typing import Any

from PIL import Image, ImageDraw

from albef.data.synthetic.generated import build_dir_atomically, check_manifest, is_empty_dir

__all__ = [
    "COLORS",
    "SHAPES",
    "RELATIONS",
    "FORMAT_VERSION",
    "canonical_scene",
    "canonical_caption",
    "scene_captions",
    "generate_synthetic",
    "synthetic_paths",
]

FORMAT_VERSION = 3  # 3: the vocabulary also holds the downstream tasks' words

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

_SUPERSAMPLE = 4  # draw at 4x, downsample with LANCZOS (anti-aliasing)
_MARGIN_PX = 3.0  # objects stay this far inside the image border
_GAP_PX = 2.0  # minimum gap between the two objects' boxes along the relation axis
_OFF_AXIS_RATIO = 0.5  # |off-axis centre distance| <= ratio * on-axis centre distance
_SIZE_RANGE = (0.22, 0.34)  # shape box side as a fraction of image_size
_MIN_IMAGE_SIZE = 32

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


# ---------------------------------------------------------------------------- drawing
def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, size: float, color: tuple) -> None:
    h = size / 2.0
    x0, y0, x1, y1 = cx - h, cy - h, cx + h, cy + h
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=color)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=color)
    elif shape == "triangle":  # pointing up, filling the box
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=color)
    elif shape == "cross":  # plus sign, arms one third of the box thick
        t = size / 6.0
        draw.rectangle([cx - t, y0, cx + t, y1], fill=color)
        draw.rectangle([x0, cy - t, x1, cy + t], fill=color)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _place(relation: str, size_a: float, size_b: float, image_size: int, rng: random.Random):
    """Centres (xa, ya), (xb, yb) such that object A is clearly ``relation`` of object B.

    Along the relation axis the boxes are separated by at least _GAP_PX; the off-axis
    centre distance is at most _OFF_AXIS_RATIO times the on-axis one; both boxes are at
    least _MARGIN_PX inside the image.
    """
    ha, hb = size_a / 2.0, size_b / 2.0
    lo_a, hi_a = _MARGIN_PX + ha, image_size - _MARGIN_PX - ha
    lo_b, hi_b = _MARGIN_PX + hb, image_size - _MARGIN_PX - hb
    dmin = ha + hb + _GAP_PX
    # on-axis: "first" is the object with the smaller coordinate (left / above)
    first_is_a = relation in ("left", "above")
    (lo_f, hi_f), (lo_s, hi_s) = ((lo_a, hi_a), (lo_b, hi_b)) if first_is_a else ((lo_b, hi_b), (lo_a, hi_a))
    f_hi = min(hi_f, hi_s - dmin)
    if f_hi < lo_f:
        raise ValueError("image_size too small to place two objects")  # guarded by _MIN_IMAGE_SIZE
    pf = rng.uniform(lo_f, f_hi)
    ps = rng.uniform(max(lo_s, pf + dmin), hi_s)
    on_a, on_b = (pf, ps) if first_is_a else (ps, pf)
    # off-axis: close enough that the relation stays unambiguous
    d = abs(on_b - on_a)
    off_a = rng.uniform(lo_a, hi_a)
    lo, hi = max(lo_b, off_a - _OFF_AXIS_RATIO * d), min(hi_b, off_a + _OFF_AXIS_RATIO * d)
    if hi < lo:  # cannot happen for the size range used; fall back to the nearest valid value
        hi = lo = min(max(off_a, lo_b), hi_b)
    off_b = rng.uniform(lo, hi)
    if _AXIS[relation] == "x":
        return (on_a, off_a), (on_b, off_b)
    return (off_a, on_a), (off_b, on_b)


def _render_with_boxes(scene: Scene, image_size: int, rng: random.Random, jpeg_quality: int) -> tuple[bytes, list[list[float]]]:
    """The JPEG bytes of ``scene`` and the boxes ``[[x, y, w, h] of object 1, [x, y, w, h] of
    object 2]`` (objects in the order of the scene tuple): each shape's square bounding box
    in pixels of the stored image, as floats (``x, y``: top-left corner; ``w == h``: the
    shape's size).  The circle is inscribed in its box, the triangle and the cross span it.
    """
    c1, s1, r, c2, s2 = scene
    size_a = rng.uniform(*_SIZE_RANGE) * image_size
    size_b = rng.uniform(*_SIZE_RANGE) * image_size
    (xa, ya), (xb, yb) = _place(r, size_a, size_b, image_size, rng)
    base = rng.randint(232, 246)
    bg = tuple(base + rng.randint(-6, 6) for _ in range(3))  # near-white, slightly tinted
    k = _SUPERSAMPLE
    big = Image.new("RGB", (image_size * k, image_size * k), bg)
    draw = ImageDraw.Draw(big)
    order = [(s1, xa, ya, size_a, COLORS[c1]), (s2, xb, yb, size_b, COLORS[c2])]
    if rng.random() < 0.5:
        order.reverse()  # objects never overlap; this only keeps drawing order unbiased
    for shape, cx, cy, size, color in order:
        _draw_shape(draw, shape, cx * k, cy * k, size * k, color)
    # box-reduce 4x -> 2x, then LANCZOS 2x -> 1x: same look as plain LANCZOS, twice as fast
    img = big.resize((image_size, image_size), Image.LANCZOS, reducing_gap=2.0)
    buf = io.BytesIO()
    # 4:4:4 chroma (subsampling=0): small images keep their colours crisp
    img.save(buf, format="JPEG", quality=jpeg_quality, subsampling=0, optimize=False)
    boxes = [[cx - size / 2.0, cy - size / 2.0, size, size] for cx, cy, size in ((xa, ya, size_a), (xb, yb, size_b))]
    return buf.getvalue(), boxes


def _render(scene: Scene, image_size: int, rng: random.Random, jpeg_quality: int) -> bytes:
    """The JPEG bytes of ``scene`` (see :func:`_render_with_boxes`)."""
    return _render_with_boxes(scene, image_size, rng, jpeg_quality)[0]


# --------------------------------------------------------------------------- generate
def synthetic_paths(root: str) -> dict:
    """Paths of a generated dataset: pretrain/test annotation files, vocab and image root."""
    return {
        "pretrain": os.path.join(root, "pretrain.json"),
        "test": os.path.join(root, "test.json"),
        "vocab": os.path.join(root, "vocab.txt"),
        "image_root": root,
    }


def _params(seed, image_size, num_train_images, num_test_groups, holdout_test_scenes, jpeg_quality, num_colors, num_shapes, test_group_size) -> dict:
    return {
        "test_group_size": int(test_group_size),
        "num_colors": int(num_colors),
        "num_shapes": int(num_shapes),
        "seed": int(seed),
        "image_size": int(image_size),
        "num_train_images": int(num_train_images),
        "num_test_groups": int(num_test_groups),
        "holdout_test_scenes": bool(holdout_test_scenes),
        "jpeg_quality": int(jpeg_quality),
    }


def _check_params(p: dict) -> None:
    if p["image_size"] < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {_MIN_IMAGE_SIZE}, got {p['image_size']}")
    if p["num_train_images"] < 1:
        raise ValueError(f"num_train_images must be >= 1, got {p['num_train_images']}")
    if not 2 <= p["num_colors"] <= len(COLORS):
        raise ValueError(f"num_colors must be in [2, {len(COLORS)}], got {p['num_colors']}")
    if not 2 <= p["num_shapes"] <= len(SHAPES):
        raise ValueError(f"num_shapes must be in [2, {len(SHAPES)}], got {p['num_shapes']}")
    n_groups = len(_all_group_keys(*_palette(p["num_colors"], p["num_shapes"])))
    if not 2 <= p["test_group_size"] <= 4:
        raise ValueError(f"test_group_size must be 2, 3 or 4, got {p['test_group_size']}")
    if not 1 <= p["num_test_groups"] <= n_groups:
        raise ValueError(f"num_test_groups must be in [1, {n_groups}], got {p['num_test_groups']}")
    if not 1 <= p["jpeg_quality"] <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {p['jpeg_quality']}")


def _dump_json(obj: Any, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def _build_vocab(tmp: str, paths: dict, entries: list[dict]) -> None:
    """``tmp/vocab.txt``: WordPiece vocabulary in which every caption word is one token, and
    so is every word the downstream tasks' texts use (:mod:`albef.data.synthetic.tasks`:
    "picture", "neither", "wooden", ...), as a real BERT vocabulary covers the language and
    not only the pretraining captions. Pretraining never sees those words (their embeddings
    stay untrained until a task fine-tunes them); without them they would fall apart into
    single characters, which a two-layer text encoder cannot compose in a short fine-tuning.

    The tokenizers trainer breaks ties between equally frequent merges in hash order, so
    its intermediate sub-word pieces (and the order of all tokens) change from process to
    process.  To keep the files byte-identical, the trained vocabulary is rewritten in a
    canonical form: the special tokens first (same ids), then the trained alphabet (single
    characters and their ``##`` continuations, a deterministic set) and every caption word
    as a whole token, each sorted.
    """
    from albef.data.vocab import SPECIAL_TOKENS, build_wordpiece_vocab

    vocab_path = build_wordpiece_vocab([paths["pretrain"], paths["test"]], out_dir=tmp, vocab_size=200)
    with open(vocab_path, "r", encoding="utf-8") as f:
        trained = [line.rstrip("\n") for line in f if line.strip()]
    from albef.data.synthetic.tasks import task_words  # a function-level import: tasks imports this module

    caption_words = {w for e in entries for c in e["caption"] for w in c.split(" ")}
    words = caption_words | task_words()
    alphabet = {t for t in trained if t not in SPECIAL_TOKENS and (len(t) == 1 or (len(t) == 3 and t.startswith("##")))}
    missing_chars = sorted({ch for w in caption_words for ch in w} - alphabet)
    if missing_chars:  # cannot happen: the trainer's alphabet covers the corpus
        raise RuntimeError(f"trained vocabulary lacks characters {missing_chars}")
    tokens = list(SPECIAL_TOKENS) + sorted(alphabet) + sorted(words - alphabet)
    with open(vocab_path, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")


def _build(tmp: str, p: dict) -> None:
    seed, size, q = p["seed"], p["image_size"], p["jpeg_quality"]
    tag = f"albef-shapes/v{FORMAT_VERSION}/{seed}"

    # --- test scenes: distinct groups, so scenes never repeat across groups
    group_rng = random.Random(f"{tag}/test-groups")
    colors, shapes = _palette(p["num_colors"], p["num_shapes"])
    keys = group_rng.sample(_all_group_keys(colors, shapes), p["num_test_groups"])
    test_items = []  # (group index, kind, scene)
    swaps = ("color_swap", "shape_swap", "relation_swap")
    for g, key in enumerate(keys):
        members = _group_scenes(key, group_rng)
        if p["test_group_size"] < 4:
            # base plus test_group_size - 1 of the swaps, rotating which swap comes first
            chosen = {swaps[(g + j) % 3] for j in range(p["test_group_size"] - 1)}
            members = [(k, sc) for k, sc in members if k == "base" or k in chosen]
        for kind, scene in members:
            test_items.append((g, kind, scene))
    test_scenes = {sc for _, _, sc in test_items}
    assert len(test_scenes) == len(test_items), "test scenes must be unique"
    random.Random(f"{tag}/test-order").shuffle(test_items)

    # --- train scenes: balanced passes over shuffled scene lists
    pool = _all_canonical_scenes(colors, shapes)
    if p["holdout_test_scenes"]:
        pool = [sc for sc in pool if sc not in test_scenes]
    train_rng = random.Random(f"{tag}/train-scenes")
    train_scenes: list[Scene] = []
    while len(train_scenes) < p["num_train_images"]:
        perm = list(pool)
        train_rng.shuffle(perm)
        train_scenes.extend(perm[: p["num_train_images"] - len(train_scenes)])

    # --- images and annotations
    for split in ("train", "test"):
        os.makedirs(os.path.join(tmp, "images", split))
    pretrain = []
    for i, scene in enumerate(train_scenes):
        rel = f"images/train/{i:06d}.jpg"
        data = _render(scene, size, random.Random(f"{tag}/render/train/{i}"), q)
        with open(os.path.join(tmp, rel), "wb") as f:
            f.write(data)
        # image_id names the scene: every render of a scene shows the same content, so
        # its captions are positives (ITC) and never negatives (ITM) of one another.
        pretrain.append({"image": rel, "caption": scene_captions(scene), "image_id": canonical_caption(scene)})
    test = []
    groups: dict[int, dict[str, int]] = {}
    for i, (g, kind, scene) in enumerate(test_items):
        rel = f"images/test/{i:06d}.jpg"
        data = _render(scene, size, random.Random(f"{tag}/render/test/{i}"), q)
        with open(os.path.join(tmp, rel), "wb") as f:
            f.write(data)
        test.append({"image": rel, "caption": [canonical_caption(scene)]})
        groups.setdefault(g, {})[kind] = i
    paths = synthetic_paths(tmp)
    _dump_json(pretrain, paths["pretrain"])
    _dump_json(test, paths["test"])

    _build_vocab(tmp, paths, pretrain + test)

    manifest = {
        "format_version": FORMAT_VERSION,
        "params": p,
        "counts": {
            "train_images": len(pretrain),
            "train_captions": sum(len(e["caption"]) for e in pretrain),
            "train_scenes": len(set(train_scenes)),
            "test_images": len(test),
            "test_groups": len(groups),
            "heldout_scenes": len(test_scenes) if p["holdout_test_scenes"] else 0,
        },
        "colors": {k: list(COLORS[k]) for k in colors},
        "shapes": list(shapes),
        "relations": list(RELATIONS),
        # keeps every caption true under a horizontal flip (data.transforms.hflip_swap_words)
        "hflip_swap_words": {"left": "right", "right": "left"},
        # indices into test.json of each group's base / color_swap / shape_swap / relation_swap
        "test_groups": [groups[g] for g in sorted(groups)],
    }
    _dump_json(manifest, os.path.join(tmp, "manifest.json"))  # written last: marks completion


def generate_synthetic(
    root: str,
    seed: int = 0,
    image_size: int = 64,
    num_train_images: int = 6000,
    num_test_groups: int = 25,
    holdout_test_scenes: bool = True,
    jpeg_quality: int = 95,
    num_colors: int = 6,
    num_shapes: int = 4,
    test_group_size: int = 4,
) -> dict:
    """Generate the dataset under `root` if it is not there yet (or was generated with other
    parameters, in which case raise ValueError naming root, the stored and the requested params);
    return the manifest dict. Deterministic: same params -> byte-identical files.

    Safe when several processes call it at once: each builds into its own temporary
    directory next to ``root`` and renames it into place; a loser of that race deletes
    its copy and uses the winner's (after checking its manifest).
    """
    params = _params(seed, image_size, num_train_images, num_test_groups, holdout_test_scenes, jpeg_quality, num_colors, num_shapes, test_group_size)
    _check_params(params)
    root = os.fspath(root)
    if os.path.exists(root) and not is_empty_dir(root):
        return check_manifest(root, "synthetic dataset", FORMAT_VERSION, params)

    build_dir_atomically(root, lambda tmp: _build(tmp, params))
    return check_manifest(root, "synthetic dataset", FORMAT_VERSION, params)

