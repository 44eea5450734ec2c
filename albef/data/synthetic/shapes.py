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

Scenes and their captions are :mod:`.scenes`, drawing is :mod:`.render`.
``pretrain.json`` lists all of a scene's captions (:func:`~.scenes.scene_captions`) per
image; ``test.json`` has the single canonical caption.

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

import os
import random

from albef.data.synthetic.generated import build_dir_atomically, check_manifest, dump_json, is_empty_dir
from albef.data.synthetic.render import _MIN_IMAGE_SIZE, _render
from albef.data.synthetic.scenes import (
    COLORS,
    RELATIONS,
    SHAPES,
    Scene,
    _all_canonical_scenes,
    _all_group_keys,
    _group_scenes,
    _palette,
    canonical_caption,
    scene_captions,
)
from albef.data.synthetic.tasks.vocabulary import task_words

__all__ = ["FORMAT_VERSION", "generate_synthetic", "synthetic_paths"]

FORMAT_VERSION = 3  # 3: the vocabulary also holds the downstream tasks' words


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



def _build_vocab(tmp: str, paths: dict, entries: list[dict]) -> None:
    """``tmp/vocab.txt``: WordPiece vocabulary in which every caption word is one token, and
    so is every word the downstream tasks' texts use (:func:`.tasks.vocabulary.task_words`:
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
    dump_json(pretrain, paths["pretrain"])
    dump_json(test, paths["test"])

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
    dump_json(manifest, os.path.join(tmp, "manifest.json"))  # written last: marks completion


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

