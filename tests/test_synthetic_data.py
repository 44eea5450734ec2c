"""Tests of the built-in synthetic shapes world (albef.data.synthetic.shapes, .scenes, .render)."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import re
import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from conftest import tree_bytes

from albef.data.synthetic import render, shapes
from albef.data.synthetic.scenes import COLORS, canonical_caption, canonical_scene, scene_captions
from albef.data.synthetic.shapes import generate_synthetic, synthetic_paths

# its tests share module fixtures (a trained model, generated data): one xdist worker builds them once
pytestmark = pytest.mark.xdist_group("synthetic_data")


SMALL = dict(seed=0, image_size=32, num_train_images=50, num_test_groups=5)

_CAPTION_RE = re.compile(
    r"^an? (\w+) (\w+) (left of|right of|to the left of|to the right of|above|below) an? (\w+) (\w+)$"
)



def _load(root: str):
    p = synthetic_paths(root)
    with open(p["pretrain"]) as f:
        pretrain = json.load(f)
    with open(p["test"]) as f:
        test = json.load(f)
    return pretrain, test


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic") / "shapes")
    manifest = generate_synthetic(root, **SMALL)
    return root, manifest


# ------------------------------------------------------------------ determinism
def test_same_params_give_identical_files(small, tmp_path):
    root, manifest = small
    other = str(tmp_path / "again")
    manifest2 = generate_synthetic(other, **SMALL)
    assert manifest2 == manifest
    a, b = tree_bytes(root), tree_bytes(other)
    assert sorted(a) == sorted(b)
    assert any(k.endswith(".jpg") for k in a) and "vocab.txt" in a
    for k in a:
        assert a[k] == b[k], f"{k} differs between two generations with the same params"


def test_different_seed_gives_different_data(small, tmp_path):
    root, _ = small
    other = str(tmp_path / "seed1")
    generate_synthetic(other, **{**SMALL, "seed": 1})
    a, b = tree_bytes(root), tree_bytes(other)
    assert a["pretrain.json"] != b["pretrain.json"]
    assert a["test.json"] != b["test.json"]
    assert a[os.path.join("images", "train", "000000.jpg")] != b[os.path.join("images", "train", "000000.jpg")]


def test_existing_root_is_reused_and_mismatch_raises(small, tmp_path):
    root, manifest = small
    stamp = os.path.getmtime(os.path.join(root, "manifest.json"))
    assert generate_synthetic(root, **SMALL) == manifest  # reused, not regenerated
    assert os.path.getmtime(os.path.join(root, "manifest.json")) == stamp
    with pytest.raises(ValueError) as e:
        generate_synthetic(root, **{**SMALL, "seed": 7})
    msg = str(e.value)
    assert root in msg and "'seed': 0" in msg and "'seed': 7" in msg
    with pytest.raises(ValueError, match="num_train_images"):
        generate_synthetic(root, **{**SMALL, "num_train_images": 51})
    # a non-empty directory that is not a dataset
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match=re.escape(str(foreign))):
        generate_synthetic(str(foreign), **SMALL)


# --------------------------------------------------------------------- formats
def test_json_formats_and_images(small):
    root, manifest = small
    paths = synthetic_paths(root)
    assert paths == {
        "pretrain": os.path.join(root, "pretrain.json"),
        "test": os.path.join(root, "test.json"),
        "vocab": os.path.join(root, "vocab.txt"),
        "image_root": root,
    }
    pretrain, test = _load(root)
    assert isinstance(pretrain, list) and len(pretrain) == SMALL["num_train_images"]
    assert isinstance(test, list) and len(test) == 4 * SMALL["num_test_groups"]
    for split, anns in (("train", pretrain), ("test", test)):
        for i, ann in enumerate(anns):
            assert set(ann) == ({"image", "caption", "image_id"} if split == "train" else {"image", "caption"})
            assert ann["image"] == f"images/{split}/{i:06d}.jpg"  # relative to image_root
            assert isinstance(ann["caption"], list) and all(isinstance(c, str) and c for c in ann["caption"])
            assert _CAPTION_RE.match(ann["caption"][0]), ann["caption"][0]
            with Image.open(os.path.join(paths["image_root"], ann["image"])) as img:
                assert img.format == "JPEG" and img.mode == "RGB"
                assert img.size == (SMALL["image_size"], SMALL["image_size"])
    for ann in pretrain:
        assert len(ann["caption"]) >= 2 and len(set(ann["caption"])) == len(ann["caption"])
        # the image id names the scene: its canonical caption, which is among the captions
        assert ann["image_id"] == ann["caption"][0]
    for ann in test:
        assert len(ann["caption"]) == 1
    assert manifest["params"] == {**SMALL, "holdout_test_scenes": True, "jpeg_quality": 95, "num_colors": 6, "num_shapes": 4, "test_group_size": 4}
    assert manifest["counts"]["train_images"] == len(pretrain)
    assert manifest["counts"]["test_images"] == len(test)
    with open(os.path.join(root, "manifest.json")) as f:
        assert json.load(f) == manifest


# ------------------------------------------------------------------ test split
def test_test_groups_are_hard_negatives(small):
    root, manifest = small
    _, test = _load(root)
    caps = [a["caption"][0] for a in test]
    assert len(set(caps)) == len(caps)
    # canonical captions name a scene up to the converse, so unique captions = unique scenes
    for c in caps:
        assert canonical_caption(_parse(c)) == c
    bags = Counter(tuple(sorted(c.split())) for c in caps)
    for c in caps:
        assert bags[tuple(sorted(c.split()))] - 1 >= 1, f"no hard negative for {c!r}"
    groups = manifest["test_groups"]
    assert len(groups) == SMALL["num_test_groups"]
    assert sorted(i for g in groups for i in g.values()) == list(range(len(test)))
    for g in groups:
        assert set(g) == {"base", "color_swap", "shape_swap", "relation_swap"}
        scenes = {k: _parse(caps[i]) for k, i in g.items()}
        assert len({tuple(sorted(caps[i].split())) for i in g.values()}) == 1
        c1, s1, r, c2, s2 = scenes["base"]
        assert c1 != c2 and s1 != s2
        assert scenes["color_swap"] == (c2, s1, r, c1, s2)
        assert scenes["shape_swap"] == (c1, s2, r, c2, s1)
        inv = {"left": "right", "above": "below"}[r]
        assert canonical_scene(scenes["relation_swap"]) == canonical_scene((c1, s1, inv, c2, s2))
    # groups are not contiguous in test.json
    assert [sorted(g.values()) for g in groups] != [list(range(4 * k, 4 * k + 4)) for k in range(len(groups))]


def test_holdout_excludes_test_scenes_from_training(small, tmp_path):
    # 1500 train images cover every one of the 1104 canonical scenes that training may use,
    # so a test scene leaking into training would show up here
    many = {**SMALL, "num_train_images": 1500}
    for root in (small[0], str(tmp_path / "holdout")):
        if root != small[0]:
            m = generate_synthetic(root, **many)
            assert m["counts"]["heldout_scenes"] == 4 * SMALL["num_test_groups"]
        pretrain, test = _load(root)
        train_caps = {c for a in pretrain for c in a["caption"]}
        for a in test:
            scene = _parse(a["caption"][0])
            assert a["caption"][0] not in train_caps
            assert not set(scene_captions(scene)) & train_caps  # converse / paraphrases too
    # without holdout it still works, and the test scenes do show up in training
    other = str(tmp_path / "no_holdout")
    m = generate_synthetic(other, **{**many, "holdout_test_scenes": False})
    assert m["counts"]["heldout_scenes"] == 0
    pretrain2, test2 = _load(other)
    train_caps2 = {c for a in pretrain2 for c in a["caption"]}
    assert all(a["caption"][0] in train_caps2 for a in test2)


def test_train_and_test_renders_differ(small):
    root, _ = small
    tree = tree_bytes(root)
    train = {v for k, v in tree.items() if k.startswith(os.path.join("images", "train"))}
    test = {v for k, v in tree.items() if k.startswith(os.path.join("images", "test"))}
    assert len(train) == SMALL["num_train_images"] and len(test) == 4 * SMALL["num_test_groups"]
    assert not train & test


# --------------------------------------------------------------- relation truth
def _parse(caption: str):
    m = _CAPTION_RE.match(caption)
    assert m, caption
    c1, s1, rel, c2, s2 = m.groups()
    r = {"left of": "left", "to the left of": "left", "right of": "right", "to the right of": "right"}.get(rel, rel)
    return (c1, s1, r, c2, s2)


def _colour_pixels(img: np.ndarray, colour: str) -> np.ndarray:
    """(y, x) of the pixels clearly of ``colour`` (nearest palette colour and close to it)."""
    pal = np.array(list(COLORS.values()), dtype=np.float32)
    d = np.linalg.norm(img[:, :, None, :].astype(np.float32) - pal[None, None], axis=-1)
    idx = list(COLORS).index(colour)
    mask = (d.argmin(-1) == idx) & (d[:, :, idx] < 50)
    return np.argwhere(mask)


def test_captions_are_true_of_their_images(small):
    root, _ = small
    pretrain, test = _load(root)
    size = SMALL["image_size"]
    checked = 0
    for ann in test + pretrain:
        with Image.open(os.path.join(root, ann["image"])) as im:
            img = np.asarray(im.convert("RGB"))
        for cap in ann["caption"]:
            c1, s1, r, c2, s2 = _parse(cap)
            assert (c1, s1) != (c2, s2)
            if c1 == c2:
                continue
            p1, p2 = _colour_pixels(img, c1), _colour_pixels(img, c2)
            assert len(p1) >= 10 and len(p2) >= 10, (ann["image"], cap)
            for p in (p1, p2):  # objects stay inside the image with a margin
                assert p.min() >= 2 and p.max() <= size - 3, (ann["image"], cap)
            (y1, x1), (y2, x2) = p1.mean(0), p2.mean(0)
            ok = {"left": x1 < x2, "right": x1 > x2, "above": y1 < y2, "below": y1 > y2}[r]
            assert ok, f"{ann['image']}: {cap!r} is false (centroids {x1:.1f},{y1:.1f} vs {x2:.1f},{y2:.1f})"
            # unambiguous: the on-axis distance clearly exceeds the off-axis one
            on, off = (abs(x1 - x2), abs(y1 - y2)) if r in ("left", "right") else (abs(y1 - y2), abs(x1 - x2))
            assert on > off + 2, (ann["image"], cap)
            checked += 1
    assert checked >= 50


def test_placement_constraints():
    rng = random.Random(0)
    for size in (32, 64, 224):
        for _ in range(2000):
            r = rng.choice(["left", "right", "above", "below"])
            sa, sb = (rng.uniform(*render._SIZE_RANGE) * size for _ in range(2))
            (xa, ya), (xb, yb) = render._place(r, sa, sb, size, rng)
            for (x, y), s in (((xa, ya), sa), ((xb, yb), sb)):
                assert 3 <= x - s / 2 and x + s / 2 <= size - 3
                assert 3 <= y - s / 2 and y + s / 2 <= size - 3
            dx, dy = xb - xa, yb - ya  # B relative to A
            on, off = (dx, dy) if r in ("left", "right") else (dy, dx)
            sign = 1 if r in ("left", "above") else -1
            assert sign * on >= (sa + sb) / 2 + 2  # boxes separated: no overlap
            assert abs(off) <= 0.5 * abs(on)


# ----------------------------------------------------------------------- vocab
def _bert_tokenizer(vocab: str, n_tokens: int):
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast(vocab_file=vocab, do_lower_case=True)
    if len(tok) != n_tokens:  # transformers >= 5 ignores vocab_file (keeps only the 5 specials)
        tok = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    assert len(tok) == n_tokens
    return tok


def test_vocab_tokenises_every_caption_word_whole(small):
    root, _ = small
    vocab = synthetic_paths(root)["vocab"]
    with open(vocab) as f:
        tokens = f.read().splitlines()
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(set(tokens)) == len(tokens)
    tok = _bert_tokenizer(vocab, len(tokens))
    pretrain, test = _load(root)
    words = {w for a in pretrain + test for c in a["caption"] for w in c.split()}
    assert {"left", "right", "above", "below", "of", "to", "the"} <= words
    for w in sorted(words):
        ids = tok(w, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, (w, tok.convert_ids_to_tokens(ids))
    for a in test + pretrain[:10]:
        for c in a["caption"]:
            assert tok.convert_ids_to_tokens(tok(c, add_special_tokens=False)["input_ids"]) == c.split()


# ----------------------------------------------------------------- concurrency
_CONCURRENT = dict(SMALL, num_train_images=300)


@pytest.mark.slow
def test_concurrent_generation(tmp_path):
    parent = tmp_path / "shared"
    parent.mkdir()
    root = str(parent / "shapes")
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = [pool.apply_async(generate_synthetic, (root,), _CONCURRENT) for _ in range(2)]
        manifests = [r.get(timeout=120) for r in results]
    assert manifests[0] == manifests[1]
    assert manifests[0]["params"] == {**_CONCURRENT, "holdout_test_scenes": True, "jpeg_quality": 95, "num_colors": 6, "num_shapes": 4, "test_group_size": 4}
    assert os.listdir(parent) == ["shapes"]  # no leftover temp dirs
    assert os.path.isfile(os.path.join(root, "manifest.json"))
    assert len(os.listdir(os.path.join(root, "images", "train"))) == _CONCURRENT["num_train_images"]
    ref = str(tmp_path / "ref")
    generate_synthetic(ref, **_CONCURRENT)
    assert tree_bytes(ref) == tree_bytes(root)


def test_lost_rename_race_uses_existing_root(tmp_path, monkeypatch):
    """Another process renames its copy into place first: ours is discarded, theirs used."""
    parent = tmp_path / "race"
    parent.mkdir()
    root = str(parent / "shapes")
    winner = str(tmp_path / "winner")
    expected = generate_synthetic(winner, **SMALL)
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append((src, dst))
        shutil.copytree(winner, dst)  # the other process wins the race
        return real_rename(src, dst)  # fails: dst exists and is not empty

    monkeypatch.setattr(shapes.os, "rename", rename)
    assert generate_synthetic(root, **SMALL) == expected
    assert len(calls) == 1 and ".tmp-" in calls[0][0]
    assert os.listdir(parent) == ["shapes"]
    assert tree_bytes(root) == tree_bytes(winner)


def test_smaller_world_uses_the_first_colours_and_shapes(tmp_path):
    root = str(tmp_path / "small_world")
    m = generate_synthetic(root, seed=0, image_size=32, num_train_images=60, num_test_groups=4, num_colors=3, num_shapes=2)
    pretrain, test = _load(root)
    words = {w for a in pretrain + test for c in a["caption"] for w in c.split()}
    assert {"red", "green", "blue"} <= words and not words & {"yellow", "purple", "orange", "triangle", "cross"}
    assert m["shapes"] == ["circle", "square"] and list(m["colors"]) == ["red", "green", "blue"]
    # 3 colour pairs x 1 shape pair x 2 axes = 6 possible groups
    with pytest.raises(ValueError, match="num_test_groups"):
        generate_synthetic(str(tmp_path / "too_many"), image_size=32, num_train_images=10, num_test_groups=7, num_colors=3, num_shapes=2)


def test_minimal_pairs_rotate_the_swap_kind(tmp_path):
    root = str(tmp_path / "pairs")
    m = generate_synthetic(root, seed=1, image_size=32, num_train_images=40, num_test_groups=6, test_group_size=2)
    _, test = _load(root)
    assert len(test) == 12
    kinds = []
    for g in m["test_groups"]:
        assert set(g) == {"base", next(k for k in g if k != "base")} and len(g) == 2
        kinds.append(next(k for k in g if k != "base"))
        a, b = (test[i]["caption"][0] for i in g.values())
        assert sorted(a.split()) == sorted(b.split()) and a != b  # same words, another binding
    assert set(kinds) == {"color_swap", "shape_swap", "relation_swap"}
