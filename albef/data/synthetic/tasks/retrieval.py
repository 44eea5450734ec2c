"""The synthetic retrieval task (image-text retrieval, COCO/Flickr30k format)::

    root/retrieval/                       image root: root/retrieval
      images/{train,val,test}/000000.jpg
      train.json  [{"image": "images/train/000000.jpg", "caption": str, "image_id": str}, ...]
                  one entry per caption, 3-5 captions per image; image_id names the scene
                  (renders of one scene show the same content: positives of each other, as in pretraining)
      val.json    [{"image": "images/val/000000.jpg", "caption": [str, ...]}, ...]   2-4 captions
      test.json   (as val.json) minimal pairs: each image has a partner whose captions
                  use the same words (a colour, shape or relation swap)

Train images show scenes in balanced passes; val/test are disjoint minimal pairs (as the
pretraining test groups: a colour, shape or relation swap), recorded in the manifest's
``pairs[split]``.
"""
from __future__ import annotations

import random

from albef.data.synthetic.scenes import _all_canonical_scenes, _all_group_keys, _group_scenes, canonical_caption
from albef.data.synthetic.tasks.common import Scene, _a, _balanced, _the

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


def _retrieval_captions(scene: Scene, template_ids: list[int]) -> list[str]:
    c1, s1, r, c2, s2 = scene  # canonical: r is left or above
    fwd, rev = ((c1, s1), (c2, s2)), ((c2, s2), (c1, s1))
    out = []
    for t in template_ids:
        orient, template = _RETRIEVAL_TEMPLATES[r][t]
        x, y = fwd if orient == "fwd" else rev
        out.append(template.format(A=_a(x), B=_a(y), a=_the(x), b=_the(y)))
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
            ann["train"].append({"image": rel, "caption": cap, "image_id": canonical_caption(sc)})
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
