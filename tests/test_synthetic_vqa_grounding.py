"""Tests of the synthetic VQA and grounding tasks (albef.data.synthetic.tasks) and of the
box-returning renderer (albef.data.synthetic.render._render_with_boxes).

The answer of every question and the referent of every expression are recomputed here
from the scenes stored in the task manifest by small parsers that are independent of the
generator's templates and code; boxes are checked against the pixels of the stored JPEGs.
"""
from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw
from conftest import tree_bytes

from albef.data.synthetic import render, shapes
from albef.data.synthetic.scenes import COLORS, SHAPES
from albef.data.synthetic.tasks import generate, vocabulary, vqa
from albef.data.synthetic.tasks.generate import generate_task_data, task_paths
from albef.metrics.box_iou import box_iou_official
from albef.metrics.vqa_accuracy import vqa_accuracy

# its tests share module fixtures (a trained model, generated data): one xdist worker builds them once
pytestmark = pytest.mark.xdist_group("synthetic_vqa_grounding")


SIZES = {
    "vqa": dict(num_train=12, num_val=4, num_test=5),
    "grounding": dict(num_train=10, num_val=4, num_test=5),
}
SPLITS = ("train", "val", "test")
RELATIONS = ("left", "right", "above", "below")
INV = {"left": "right", "right": "left", "above": "below", "below": "above"}
PHRASE = {"left of": "left", "right of": "right", "above": "above", "below": "below"}
COUNT_WORDS = ("none", "one", "two")


# --------------------------------------------------------------------------- helpers
def _pretraining_copy(src: str, dst: str) -> str:
    """Only what task generation reads (manifest, vocabulary) of the shared tiny data set,
    so this module never writes into the session fixture's directory."""
    os.makedirs(dst)
    for name in ("manifest.json", "vocab.txt"):
        shutil.copy(os.path.join(src, name), os.path.join(dst, name))
    return dst


def _load(root: str, task: str) -> dict:
    p = task_paths(root, task)
    names = {**{s: p[s] for s in SPLITS}, "manifest": p["manifest"]}
    names.update({k: p[k] for k in ("answer_list", "refs", "dets") if k in p})
    out = {}
    for key, path in names.items():
        with open(path, encoding="utf-8") as f:
            out[key] = json.load(f)
    return out


def _objs(scene) -> list[tuple[str, str]]:
    return [(scene[0], scene[1]), (scene[3], scene[4])]


def _facts(scene) -> set[tuple]:
    a, b, r = (scene[0], scene[1]), (scene[3], scene[4]), scene[2]
    return {(a, r, b), (b, INV[r], a)}


def _only(items: list):
    assert len(items) == 1, items
    return items[0]


def _vqa_answer(question: str, scene) -> tuple[str, str]:
    """(kind, the one correct answer) of a question about ``scene``, from its text."""
    objs = _objs(scene)
    m = re.fullmatch(r"what colou?r do we see on the (\w+)", question)
    if m:
        return "color", _only([o[0] for o in objs if o[1] == m.group(1)])
    m = re.fullmatch(r"what shape do we see in (\w+)", question)
    if m:
        return "shape", _only([o[1] for o in objs if o[0] == m.group(1)])
    m = re.fullmatch(r"where do we see the (\w+) (\w+) relative to the (\w+) (\w+)", question)
    if m:
        a, b = m.groups()[:2], m.groups()[2:]
        return "relation", _only([r for r in RELATIONS if (a, r, b) in _facts(scene)])
    m = re.fullmatch(r"what do we see (left of|right of|above|below) the (\w+) (\w+)", question)
    if m:
        rel, b = PHRASE[m.group(1)], m.groups()[1:]
        return "object", " ".join(_only([a for a in objs if (a, rel, b) in _facts(scene)]))
    m = re.fullmatch(r"how often do we see (?:(an?) )?(\w+)", question)
    if m:
        article, word = m.groups()
        if article:  # a shape: "a circle"
            assert word in SHAPES and article == ("an" if word[0] in "aeiou" else "a"), question
        else:
            assert word in COLORS, question
        return "count", COUNT_WORDS[sum(word in o for o in objs)]
    raise AssertionError(f"unparsed question: {question!r}")


def _referent(text: str, scene) -> tuple[str, int]:
    """(kind, index of the one object of ``scene`` that the expression names)."""
    objs = _objs(scene)

    def which(pred) -> int:
        return _only([i for i, o in enumerate(objs) if pred(o)])

    m = re.fullmatch(r"the (\w+) one", text)
    if m:
        return "color", which(lambda o: o[0] == m.group(1))
    m = re.fullmatch(r"the (?:(\w+) )?(\w+) (left of|right of|above|below) the (\w+) (\w+)", text)
    if m:
        c, s, rel, oc, os_ = m.groups()
        other = (oc, os_)
        i = which(lambda o: o[1] == s and (c is None or o[0] == c))
        assert (objs[i], PHRASE[rel], other) in _facts(scene), (text, scene)
        return "relation", i
    m = re.fullmatch(r"the (\w+) (\w+)", text)
    if m:
        return "color_shape", which(lambda o: o == m.groups())
    m = re.fullmatch(r"the (\w+)", text)
    if m:
        return "shape", which(lambda o: o[1] == m.group(1))
    raise AssertionError(f"unparsed expression: {text!r}")


def _old_render(scene, image_size, rng, jpeg_quality) -> bytes:
    """render._render as it was before _render_with_boxes (verbatim): the reference for
    the refactor, independent of the Pillow/libjpeg version of the machine."""
    c1, s1, r, c2, s2 = scene
    size_a = rng.uniform(*render._SIZE_RANGE) * image_size
    size_b = rng.uniform(*render._SIZE_RANGE) * image_size
    (xa, ya), (xb, yb) = render._place(r, size_a, size_b, image_size, rng)
    base = rng.randint(232, 246)
    bg = tuple(base + rng.randint(-6, 6) for _ in range(3))
    k = render._SUPERSAMPLE
    big = Image.new("RGB", (image_size * k, image_size * k), bg)
    draw = ImageDraw.Draw(big)
    order = [(s1, xa, ya, size_a, COLORS[c1]), (s2, xb, yb, size_b, COLORS[c2])]
    if rng.random() < 0.5:
        order.reverse()
    for shape, cx, cy, size, color in order:
        render._draw_shape(draw, shape, cx * k, cy * k, size * k, color)
    img = big.resize((image_size, image_size), Image.LANCZOS, reducing_gap=2.0)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=jpeg_quality, subsampling=0, optimize=False)
    return buf.getvalue()


def _pixels(root: str, task: str, rel: str) -> np.ndarray:
    with Image.open(os.path.join(task_paths(root, task)["image_root"], rel)) as im:
        assert im.format == "JPEG" and im.mode == "RGB"
        return np.asarray(im, dtype=np.float64)


def _inside(box, size: int, eps: float = 1e-6) -> bool:
    x, y, w, h = box
    return w > 0 and h > 0 and x >= -eps and y >= -eps and x + w <= size + eps and y + h <= size + eps


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pre(synthetic_root, tmp_path_factory) -> str:
    return _pretraining_copy(synthetic_root, str(tmp_path_factory.mktemp("vqa_grounding") / "shapes"))


@pytest.fixture(scope="module")
def made(pre) -> dict:
    """task -> (manifest returned, files loaded)."""
    return {task: (generate_task_data(pre, task, seed=0, **SIZES[task]), _load(pre, task)) for task in SIZES}


@pytest.fixture(scope="module")
def tok(pre):
    from albef.data.tokenization import build_tokenizer

    return build_tokenizer(os.path.join(pre, "vocab.txt"))


# -------------------------------------------------------------------- pure functions
def test_vqa_accuracy_formula():
    ten = lambda c: ["x"] * c + ["y"] * (10 - c)  # noqa: E731
    expected = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9, 4: 1.0, 6: 1.0, 10: 1.0}
    for c, acc in expected.items():
        assert vqa_accuracy("x", ten(c)) == pytest.approx(acc), c
    # c=3 of 10: leaving out one of the 3 leaves 2 matches (2/3), one of the 7 leaves 3 (1)
    assert vqa_accuracy("x", ten(3)) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy("z", ten(5)) == 0.0
    assert vqa_accuracy("x", ["x", "x", "y"]) == pytest.approx((2 * 1 / 3 + 1 * 2 / 3) / 3)
    with pytest.raises(ValueError):
        vqa_accuracy("x", [])


def test_box_iou_official():
    a = [0, 0, 10, 10]
    assert box_iou_official(a, a) == 1.0
    assert box_iou_official(a, [5, 0, 10, 10]) == pytest.approx(50 / 150)  # x 5..9 inclusive: 5 px
    assert box_iou_official(a, [2, 2, 4, 4]) == pytest.approx(16 / 100)  # contained
    assert box_iou_official(a, [20, 20, 5, 5]) == 0.0  # disjoint
    assert box_iou_official(a, [8, 8, 10, 10]) == pytest.approx(4 / 196)  # 2 x 2 px corner
    assert box_iou_official(a, [9, 0, 10, 10]) == 0.0  # one shared pixel column: official computeIoU needs x1 < x2
    assert box_iou_official([1.5, 2.0, 6.0, 4.0], [2.5, 2.0, 6.0, 4.0]) == pytest.approx(20 / 28)
    assert box_iou_official(a, [5, 0, 10, 10]) == box_iou_official([5, 0, 10, 10], a)


def test_render_refactor_is_byte_identical(synthetic_root):
    scenes = [("red", "circle", "left", "blue", "square"), ("green", "cross", "above", "green", "triangle"),
              ("orange", "square", "right", "purple", "square"), ("yellow", "triangle", "below", "red", "cross")]
    for size in (32, 64):
        for i in range(12):
            sc = scenes[i % 4]
            old = _old_render(sc, size, random.Random(f"t/{size}/{i}"), 95)
            assert render._render(sc, size, random.Random(f"t/{size}/{i}"), 95) == old
            data, boxes = render._render_with_boxes(sc, size, random.Random(f"t/{size}/{i}"), 95)
            assert data == old and len(boxes) == 2
            for x, y, w, h in boxes:
                assert w == h and _inside([x, y, w, h], size)
                lo, hi = (f * size for f in render._SIZE_RANGE)
                assert lo <= w <= hi
    # the shared pretraining data set: its files are what _render gives for their scenes
    with open(os.path.join(synthetic_root, "test.json")) as f:
        test = json.load(f)
    with open(os.path.join(synthetic_root, "manifest.json")) as f:
        p = json.load(f)["params"]
    for i, e in enumerate(test[:4]):
        m = re.fullmatch(r"an? (\w+) (\w+) (left of|above) an? (\w+) (\w+)", e["caption"][0])
        c1, s1, rel, c2, s2 = m.groups()
        sc = (c1, s1, PHRASE[rel], c2, s2)
        rng = random.Random(f"albef-shapes/v{shapes.FORMAT_VERSION}/{p['seed']}/render/test/{i}")
        with open(os.path.join(synthetic_root, e["image"]), "rb") as f:
            assert f.read() == _old_render(sc, p["image_size"], rng, p["jpeg_quality"])


def test_new_task_words_leave_the_pretraining_vocabulary_alone():
    words = vocabulary.task_words()
    for w in ("what", "colour", "where", "relative", "how", "often", "none", "two"):
        assert w not in words
    assert vocabulary._extra_template_words("vqa") >= {"what", "colour", "often", "none", "two"}
    assert vocabulary._extra_template_words("ve") == set()


# ------------------------------------------------------------------------- both tasks
def test_layout_paths_and_manifest(pre, made, tok):
    with open(os.path.join(pre, "manifest.json")) as f:
        pre_params = json.load(f)["params"]
    extra_files = {"vqa": ["answer_list.json"], "grounding": ["dets.json", "refs.json"]}
    for task in SIZES:
        p = task_paths(pre, task)
        assert p["image_root"] == p["dir"] == os.path.join(pre, task)
        assert sorted(os.listdir(p["dir"])) == sorted(["images", "manifest.json", "test.json", "train.json", "val.json", *extra_files[task]])
        assert sorted(os.listdir(os.path.join(p["dir"], "images"))) == ["test", "train", "val"]
        manifest, d = made[task]
        assert manifest == d["manifest"]
        assert manifest["task"] == task and manifest["format_version"] == generate.TASK_FORMAT_VERSION
        assert manifest["params"]["pretrain"]["params"] == pre_params
        assert all(manifest["params"][f"num_{s}"] == SIZES[task][f"num_{s}"] for s in SPLITS)
        assert manifest["colors"] == list(COLORS)[: pre_params["num_colors"]]
        assert manifest["shapes"] == list(SHAPES)[: pre_params["num_shapes"]]
        for split in SPLITS:
            n_images = SIZES[task][f"num_{split}"]
            assert manifest["counts"][split] == len(d[split])
            assert manifest["counts"][f"{split}_images"] == n_images == len({e["image"] for e in d[split]})
            assert len(manifest["scenes"][split]) == len(manifest["kinds"][split]) == len(d[split])
            on_disk = sorted(os.listdir(os.path.join(p["dir"], "images", split)))
            assert on_disk == [f"{i:06d}.jpg" for i in range(n_images)]
            for e in d[split]:
                assert re.fullmatch(rf"images/{split}/\d{{6}}\.jpg", e["image"])
        # every text tokenises without [UNK]; max_text_tokens is the longest (vqa: answers too)
        texts = [t for s in SPLITS for e in d[s] for t in ([e["question"], *e["answer"]] if task == "vqa" else [e["text"]])]
        lengths = []
        for t in texts:
            toks = tok.tokenize(t)
            assert tok.unk_token not in toks, (task, t, toks)
            lengths.append(len(toks))
        assert manifest["max_text_tokens"] == max(lengths)
        for key in ("unrendered_properties", "label_counts"):
            assert key not in manifest


def test_same_params_give_identical_files_and_other_seed_differs(pre, made, tmp_path):
    other = _pretraining_copy(pre, str(tmp_path / "copy"))
    reseeded = _pretraining_copy(pre, str(tmp_path / "reseeded"))
    for task in SIZES:
        assert generate_task_data(other, task, seed=0, **SIZES[task]) == made[task][0]
        assert tree_bytes(os.path.join(other, task)) == tree_bytes(os.path.join(pre, task)), task
        m1 = generate_task_data(reseeded, task, seed=1, **SIZES[task])
        assert m1["scenes"] != made[task][0]["scenes"]
        a, b = tree_bytes(os.path.join(pre, task)), tree_bytes(os.path.join(reseeded, task))
        assert all(a[f"{s}.json"] != b[f"{s}.json"] for s in SPLITS)
        # reused, not regenerated, with the same params; other params raise
        mtime = os.stat(task_paths(pre, task)["manifest"]).st_mtime_ns
        assert generate_task_data(pre, task, seed=0, **SIZES[task]) == made[task][0]
        assert os.stat(task_paths(pre, task)["manifest"]).st_mtime_ns == mtime
        with pytest.raises(ValueError, match="other parameters"):
            generate_task_data(pre, task, seed=0, **dict(SIZES[task], num_val=SIZES[task]["num_val"] + 1))


# ------------------------------------------------------------------------------- vqa
def test_vqa_format_and_answers(pre, made):
    manifest, d = made["vqa"]
    answer_list = d["answer_list"]
    colors, shapes_ = manifest["colors"], manifest["shapes"]
    expected = set(colors) | set(shapes_) | set(RELATIONS) | set(COUNT_WORDS) | {f"{c} {s}" for c in colors for s in shapes_}
    assert answer_list == sorted(expected)
    kind_of_answer = {**{c: "color" for c in colors}, **{s: "shape" for s in shapes_}, **{r: "relation" for r in RELATIONS},
                      **{w: "count" for w in COUNT_WORDS}, **{f"{c} {s}": "object" for c in colors for s in shapes_}}
    ids = []
    all_kinds = Counter()
    for split in SPLITS:
        correct = []
        per_image: dict[str, list[str]] = {}
        for e, scene, kind in zip(d[split], manifest["scenes"][split], manifest["kinds"][split]):
            assert list(e) == ["question_id", "question", "answer", "image", "dataset"]
            assert isinstance(e["question_id"], int) and isinstance(e["question"], str) and e["dataset"] == "vqa"
            assert isinstance(e["answer"], list) and len(e["answer"]) == 10 and all(isinstance(a, str) for a in e["answer"])
            ids.append(e["question_id"])
            counts = Counter(e["answer"]).most_common()
            top, n_top = counts[0]
            assert len(counts) == 1 or counts[1][1] < n_top  # strict plurality
            assert 6 <= n_top <= 10
            assert _vqa_answer(e["question"], scene) == (kind, top), (e, scene)
            assert top in answer_list and all(a in answer_list for a in e["answer"])
            assert {kind_of_answer[a] for a in e["answer"]} == {kind}  # annotators disagree within the kind
            assert vqa_accuracy(top, e["answer"]) == 1.0
            correct.append(top)
            per_image.setdefault(e["image"], []).append(kind)
            all_kinds[kind] += 1
        assert all(len(k) == 4 and len(set(k)) == 4 for k in per_image.values())  # 4 kinds per image
        assert manifest["answer_counts"][split] == dict(Counter(correct))
        if split == "train":
            c = Counter(correct)
            majority = max(c.values())
            assert manifest["majority_baseline"]["answer"] == min(a for a in c if c[a] == majority)
        else:
            maj = manifest["majority_baseline"]["answer"]
            acc = np.mean([vqa_accuracy(maj, e["answer"]) for e in d[split]])
            assert manifest["majority_baseline"][f"{split}_acc"] == pytest.approx(acc, abs=1e-6)
    assert sorted(ids) == list(range(len(ids)))  # unique over all splits
    assert set(all_kinds) == {"color", "shape", "relation", "object", "count"}


def test_vqa_generator_mixes_answers():
    """At a larger size (annotations only, no images): counts and disagreements vary."""
    colors, shapes_ = list(COLORS)[:5], list(SHAPES)[:3]
    ann, scenes, extra, renders = vqa._build_vqa(dict(num_train=400, num_val=1, num_test=1, seed=0), "test-tag", colors, shapes_)
    assert len(renders) == 402 and len(ann["train"]) == 1600
    counts = Counter(a for e, k in zip(ann["train"], extra["kinds"]["train"]) if k == "count"
                     for a in [Counter(e["answer"]).most_common(1)[0][0]])
    assert set(counts) == {"none", "one", "two"}
    total = sum(counts.values())
    assert 0.25 < counts["none"] / total < 0.55 and counts["two"] / total > 0.05
    n_correct = Counter(Counter(e["answer"]).most_common(1)[0][1] for e in ann["train"])
    assert set(n_correct) == {6, 7, 8, 9, 10}
    for e, sc, k in zip(ann["train"], scenes["train"], extra["kinds"]["train"]):
        assert _vqa_answer(e["question"], sc) == (k, Counter(e["answer"]).most_common(1)[0][0])


# ------------------------------------------------------------------------- grounding
def test_grounding_format_refs_and_ids(pre, made):
    manifest, d = made["grounding"]
    refs, dets = d["refs"], d["dets"]
    for e in d["train"]:
        assert list(e) == ["image", "text"] and isinstance(e["text"], str)
    train_per_image = Counter(e["image"] for e in d["train"])
    assert set(train_per_image.values()) == {3}
    ref_by_id = {r["ref_id"]: r for r in refs}
    assert len(ref_by_id) == len(refs) == len(d["val"]) + len(d["test"])
    assert sorted(ref_by_id) == list(range(len(refs)))
    image_ids: dict[str, int] = {}
    for split in ("val", "test"):
        for e in d[split]:
            assert list(e) == ["image", "text", "ref_id"] and isinstance(e["ref_id"], int)
            r = ref_by_id[e["ref_id"]]
            assert list(r) == ["ref_id", "image_id", "image", "bbox", "split", "text"]
            assert (r["image"], r["text"], r["split"]) == (e["image"], e["text"], split)
            assert image_ids.setdefault(r["image"], r["image_id"]) == r["image_id"]
        per_image = Counter(e["image"] for e in d[split])
        assert len(per_image) == SIZES["grounding"][f"num_{split}"] and set(per_image.values()) == {2}
    assert sorted(image_ids.values()) == list(range(len(image_ids)))  # one id per val/test image
    assert sorted(dets) == sorted(str(i) for i in image_ids.values())
    # every expression names exactly one object; val/test: one expression per object
    kinds = Counter()
    for split in SPLITS:
        objects = manifest["objects"][split]
        assert len(objects) == SIZES["grounding"][f"num_{split}"]
        refs_of_image: dict[str, list[int]] = {}
        for e, scene, kind, ref in zip(d[split], manifest["scenes"][split], manifest["kinds"][split], manifest["referents"][split]):
            assert _referent(e["text"], scene) == (kind, ref), (e, scene)
            i = int(e["image"][-10:-4])
            assert [(o["color"], o["shape"]) for o in objects[i]] == _objs(scene)
            if split != "train":
                assert ref_by_id[e["ref_id"]]["bbox"] == objects[i][ref]["bbox"]
            refs_of_image.setdefault(e["image"], []).append(ref)
            kinds[kind] += 1
        if split != "train":
            assert all(sorted(v) == [0, 1] for v in refs_of_image.values())
        else:  # three different expressions per image
            texts = Counter((e["image"], e["text"]) for e in d["train"])
            assert set(texts.values()) == {1}
    assert set(kinds) == {"color_shape", "shape", "color", "relation"}


def test_grounding_boxes_match_pixels(pre, made):
    manifest, d = made["grounding"]
    size = manifest["params"]["image_size"]
    for split in SPLITS:
        for i, objs in enumerate(manifest["objects"][split]):
            px = _pixels(pre, "grounding", f"images/{split}/{i:06d}.jpg")
            outside = np.ones(px.shape[:2], dtype=bool)
            for o in objs:
                x, y, w, h = o["bbox"]
                assert _inside(o["bbox"], size) and w == h
                # the centre of every shape's box is filled with its colour (triangle, cross too)
                cx, cy = x + w / 2, y + h / 2
                core = px[int(cy - 0.15 * h): int(np.ceil(cy + 0.15 * h)), int(cx - 0.15 * w): int(np.ceil(cx + 0.15 * w))]
                mean = core.reshape(-1, 3).mean(0)
                assert np.abs(mean - np.array(COLORS[o["color"]])).max() < 40, (split, i, o, mean)
                outside[max(0, int(y) - 1): int(np.ceil(y + h)) + 1, max(0, int(x) - 1): int(np.ceil(x + w)) + 1] = False
            # nothing but (near-white) background outside the boxes
            assert px[outside].min() > 200, (split, i)


def test_grounding_detections(pre, made):
    manifest, d = made["grounding"]
    size = manifest["params"]["image_size"]
    dets = d["dets"]
    image_id_of = {r["image"]: r["image_id"] for r in d["refs"]}
    chance: dict[str, list[float]] = {}
    for split in ("val", "test"):
        for i, objs in enumerate(manifest["objects"][split]):
            cands = dets[str(image_id_of[f"images/{split}/{i:06d}.jpg"])]
            assert len(cands) == 5
            gts = [o["bbox"] for o in objs]
            for c in cands:
                assert len(c) == 4 and _inside(c, size), c
            for g in gts:  # each object was "detected"
                assert max(box_iou_official(c, g) for c in cands) >= 0.7
                assert sum(box_iou_official(c, g) >= 0.5 for c in cands) == 1
            distractors = [c for c in cands if all(box_iou_official(c, g) < 0.3 for g in gts)]
            assert len(distractors) == 3
        for e in d[split]:
            ref = next(r for r in d["refs"] if r["ref_id"] == e["ref_id"])
            cands = dets[str(ref["image_id"])]
            chance.setdefault(split, []).append(sum(box_iou_official(c, ref["bbox"]) >= 0.5 for c in cands) / len(cands))
        assert manifest["chance_acc"][split] == pytest.approx(np.mean(chance[split]), abs=1e-6)
        assert manifest["chance_acc"][split] == pytest.approx(0.2)
    # the candidate order is shuffled: the true boxes are found at several positions
    positions = Counter()
    for r in d["refs"]:
        cands = dets[str(r["image_id"])]
        positions[next(j for j, c in enumerate(cands) if box_iou_official(c, r["bbox"]) >= 0.5)] += 1
    assert len(positions) > 2
