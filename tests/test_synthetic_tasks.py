"""Tests of the synthetic downstream tasks (albef.data.synthetic.tasks).

The truth of every text is recomputed here from the scenes stored in the task manifest by
a small parser/checker that is independent of the generator's templates and code.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from collections import Counter

import pytest
from PIL import Image
from conftest import tree_bytes

from albef.data.synthetic.shapes import generate_synthetic
from albef.data.synthetic.tasks import generate, nlvr, ve
from albef.data.synthetic.tasks.generate import generate_task_data, task_paths

# its tests share module fixtures (a trained model, generated data): one xdist worker builds them once
pytestmark = pytest.mark.xdist_group("synthetic_tasks")


TASKS = ("retrieval", "ve", "nlvr")  # the tasks tested here (vqa, grounding: test_synthetic_vqa_grounding.py)

PRETRAIN = dict(seed=0, image_size=32, num_train_images=48, num_test_groups=3, num_colors=5,
                num_shapes=3, test_group_size=2, holdout_test_scenes=False)
SIZES = {
    "retrieval": dict(num_train=40, num_val=8, num_test=12),
    "ve": dict(num_train=30, num_val=6, num_test=9),
    "nlvr": dict(num_train=40, num_val=10, num_test=12),
}
SPLITS = ("train", "val", "test")
COLORS = ("red", "green", "blue", "yellow", "purple")  # the first 5 colours of the world
SHAPES = ("circle", "square", "triangle")
# properties no render shows (material, temperature, texture): this test's own list
UNRENDERED = {"wooden", "iron", "paper", "rubber", "copper", "leather", "cotton", "hot", "cold", "wet", "soft", "hard", "rough"}
INV = {"left": "right", "right": "left", "above": "below", "below": "above"}
AXIS = {"left": "x", "right": "x", "above": "y", "below": "y"}


# --------------------------------------------------------------------------- helpers

def _load(root: str, task: str) -> dict:
    p = task_paths(root, task)
    out = {}
    for split in SPLITS:
        with open(p[split], encoding="utf-8") as f:
            out[split] = json.load(f)
    with open(p["manifest"], encoding="utf-8") as f:
        out["manifest"] = json.load(f)
    return out


def _copy_pretraining(src: str, dst: str) -> str:
    """A copy of the pretraining dataset only (no task folders)."""
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if d == src and (n in TASKS or ".tmp-" in n)])
    return dst


def _image_files(root: str, task: str, data: dict) -> dict[str, list[str]]:
    image_root = task_paths(root, task)["image_root"]
    files = {}
    for split in SPLITS:
        if task == "retrieval":
            rels = [e["image"] for e in data[split]]
        elif task == "ve":
            rels = [e["image"] + ".jpg" for e in data[split]]  # the official SNLI-VE reader appends .jpg
        else:
            rels = [im for e in data[split] for im in e["images"]]
        files[split] = [os.path.join(image_root, r) for r in dict.fromkeys(rels)]
    return files


# ---- an independent checker of statements about scenes
_NP = r"(?:an?|the) (\w+) (\w+)"
_REL = r"(left of|to the left of|further left than|right of|to the right of|further right than|above|higher than|higher up than|below|lower than|further down than)"
_REL_OF = {"left of": "left", "to the left of": "left", "further left than": "left",
           "right of": "right", "to the right of": "right", "further right than": "right",
           "above": "above", "higher than": "above", "higher up than": "above",
           "below": "below", "lower than": "below", "further down than": "below"}


def _objs(scene) -> set[tuple[str, str]]:
    return {(scene[0], scene[1]), (scene[3], scene[4])}


def _facts(scene) -> set[tuple]:
    a, b, r = (scene[0], scene[1]), (scene[3], scene[4]), scene[2]
    return {(a, r, b), (b, INV[r], a)}


def _relation_truth(scene, a, r, b) -> bool | None:
    """True / False, or None when neither clearly (both objects there, the other axis)."""
    if (a, r, b) in _facts(scene):
        return True
    if not {a, b} <= _objs(scene) or AXIS[r] == AXIS[scene[2]]:
        return False
    return None


def _np_ok(m_groups) -> None:
    for i in range(0, len(m_groups), 2):
        assert m_groups[i] in COLORS and m_groups[i + 1] in SHAPES, m_groups


def _articles_ok(text: str) -> None:
    words = text.split()
    for w, nxt in zip(words, words[1:]):
        if w in ("a", "an"):
            assert w == ("an" if nxt[0] in "aeiou" else "a"), text


def _relation_statement(text: str, prefix: str = "", suffix: str = ""):
    """(obj_a, relation, obj_b) of "<prefix>NP [placed|drawn|can be seen] REL NP<suffix>", else None."""
    m = re.fullmatch(prefix + _NP + r" (?:placed |drawn |can be seen )?" + _REL + " " + _NP + suffix, text)
    if not m:
        return None
    c1, s1, rel, c2, s2 = m.groups()
    _np_ok((c1, s1, c2, s2))
    return (c1, s1), _REL_OF[rel], (c2, s2)


def _ve_truth(text: str, scene) -> str:
    """The label of a VE statement about ``scene``, recomputed from the text."""
    _articles_ok(text)
    for form in (r"we see " + _NP, _NP + r" can be seen"):
        m = re.fullmatch(form, text)
        if m:
            _np_ok(m.groups())
            return "entailment" if tuple(m.groups()) in _objs(scene) else "contradiction"
    for form in (r"we see an? (\w+) (\w+) (\w+)", r"an? (\w+) (\w+) (\w+) can be seen"):
        m = re.fullmatch(form, text)
        if m:
            c, prop, s = m.groups()
            assert c in COLORS and s in SHAPES and prop in UNRENDERED, text
            assert (c, s) in _objs(scene), f"neutral statement about an absent object: {text} / {scene}"
            return "neutral"
    m = re.fullmatch(r"the (\w+) (\w+) (?:felt|would feel) (\w+)", text)
    if m:
        c, s, prop = m.groups()
        assert c in COLORS and s in SHAPES and prop in UNRENDERED, text
        assert (c, s) in _objs(scene), f"neutral statement about an absent object: {text} / {scene}"
        return "neutral"
    for prefix in ("we see ", ""):
        st = _relation_statement(text, prefix=prefix)
        if st:
            truth = _relation_truth(scene, *st)
            assert truth is not None, f"ambiguous statement {text!r} of {scene}"
            return "entailment" if truth else "contradiction"
    raise AssertionError(f"unparsed VE statement: {text!r}")


def _nlvr_truth(text: str, left, right) -> bool:
    """The truth of an NLVR statement about the pair (left, right), recomputed from the text."""
    _articles_ok(text)
    pics = {"left": left, "right": right}
    for form in (r"in the (left|right) picture we see " + _NP + "$", r"we see " + _NP + r" in the (left|right) picture"):
        m = re.fullmatch(form, text)
        if m:
            g = m.groups()
            side, c, s = (g[0], g[1], g[2]) if g[0] in pics else (g[2], g[0], g[1])
            _np_ok((c, s))
            return (c, s) in _objs(pics[side])
    m = re.fullmatch(r"in the (left|right) picture we see " + _NP + " " + _REL + " " + _NP, text)
    if m:
        side, c1, s1, rel, c2, s2 = m.groups()
        _np_ok((c1, s1, c2, s2))
        truth = _relation_truth(pics[side], (c1, s1), _REL_OF[rel], (c2, s2))
        assert truth is not None, f"ambiguous statement {text!r} of {pics[side]}"
        return truth
    for form, rule in (
        (r"(?:we see " + _NP + r" in each picture|in each picture we see " + _NP + ")", lambda l, r: l and r),
        (r"we see " + _NP + r" in one picture but not the other", lambda l, r: l != r),
        (r"we see " + _NP + r" in neither picture", lambda l, r: not (l or r)),
    ):
        m = re.fullmatch(form, text)
        if m:
            c, s = [g for g in m.groups() if g is not None]
            _np_ok((c, s))
            return rule((c, s) in _objs(left), (c, s) in _objs(right))
    raise AssertionError(f"unparsed NLVR statement: {text!r}")


def _caption_relation(text: str):
    _articles_ok(text)
    st = _relation_statement(text, prefix=r"(?:a picture of |we see )?")
    assert st is not None, f"unparsed caption: {text!r}"
    return st


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pre(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("tasks") / "shapes")
    generate_synthetic(root, **PRETRAIN)
    return root


@pytest.fixture(scope="module")
def made(pre) -> dict:
    """task -> (manifest returned, files loaded)."""
    out = {}
    for task in TASKS:
        manifest = generate_task_data(pre, task, seed=0, **SIZES[task])
        out[task] = (manifest, _load(pre, task))
    return out


@pytest.fixture(scope="module")
def tokenizer(pre):
    from albef.data.tokenization import build_tokenizer

    return build_tokenizer(os.path.join(pre, "vocab.txt"))


# ------------------------------------------------------------------ layout & formats
def test_paths_and_layout(pre, made):
    for task in TASKS:
        p = task_paths(pre, task)
        assert p["dir"] == os.path.join(pre, task)
        assert p["vocab"] == os.path.join(pre, "vocab.txt")
        assert p["image_root"] == (os.path.join(pre, "ve", "images") if task == "ve" else os.path.join(pre, task))
        assert sorted(os.listdir(p["dir"])) == ["images", "manifest.json", "test.json", "train.json", "val.json"]
        for split in SPLITS:
            assert p[split] == os.path.join(pre, task, f"{split}.json")
    assert sorted(os.listdir(os.path.join(pre, "retrieval", "images"))) == ["test", "train", "val"]
    assert sorted(os.listdir(os.path.join(pre, "nlvr", "images"))) == ["test", "train", "val"]
    assert not [n for n in os.listdir(pre) if ".tmp-" in n]
    with pytest.raises(ValueError, match="unknown task"):
        task_paths(pre, "captioning")


def test_retrieval_json_format(made):
    _, d = made["retrieval"]
    assert len({e["image"] for e in d["train"]}) == SIZES["retrieval"]["num_train"]
    per_image = Counter(e["image"] for e in d["train"])
    assert set(per_image.values()) <= {3, 4, 5}
    for e in d["train"]:
        assert set(e) == {"image", "caption", "image_id"}
        assert all(isinstance(e[k], str) for k in e)
        assert re.fullmatch(r"images/train/\d{6}\.jpg", e["image"])
    for split in ("val", "test"):
        assert len(d[split]) == SIZES["retrieval"][f"num_{split}"]
        for e in d[split]:
            assert set(e) == {"image", "caption"}
            assert re.fullmatch(rf"images/{split}/\d{{6}}\.jpg", e["image"])
            assert isinstance(e["caption"], list) and 2 <= len(e["caption"]) <= 4
            assert all(isinstance(c, str) and c for c in e["caption"])
            assert len(set(e["caption"])) == len(e["caption"])


def test_ve_json_format(made):
    _, d = made["ve"]
    for split in SPLITS:
        assert len(d[split]) == 3 * SIZES["ve"][f"num_{split}"]
        for e in d[split]:
            assert set(e) == {"image", "sentence", "label"}
            assert all(isinstance(e[k], str) for k in e)
            assert e["label"] in ("entailment", "neutral", "contradiction")
            assert re.fullmatch(rf"{split}_\d{{6}}", e["image"]), e["image"]  # an id, without extension
        # three statements per image, one per label
        by_image: dict[str, list[str]] = {}
        for e in d[split]:
            by_image.setdefault(e["image"], []).append(e["label"])
        assert len(by_image) == SIZES["ve"][f"num_{split}"]
        assert all(sorted(v) == ["contradiction", "entailment", "neutral"] for v in by_image.values())


def test_nlvr_json_format(made):
    _, d = made["nlvr"]
    for split in SPLITS:
        assert len(d[split]) == SIZES["nlvr"][f"num_{split}"]
        for e in d[split]:
            assert set(e) == {"images", "sentence", "label"}
            assert isinstance(e["images"], list) and len(e["images"]) == 2
            assert all(isinstance(im, str) and re.fullmatch(rf"images/{split}/\d{{6}}\.jpg", im) for im in e["images"])
            assert e["images"][0] != e["images"][1]
            assert isinstance(e["sentence"], str)
            assert e["label"] in ("True", "False") and isinstance(e["label"], str)  # strings, as the official data


def test_images_exist_open_and_are_new_renders(pre, made):
    pre_hashes = {hashlib.sha256(b).hexdigest() for rel, b in tree_bytes(os.path.join(pre, "images")).items()}
    for task in TASKS:
        _, d = made[task]
        files = _image_files(pre, task, d)
        seen: dict[str, str] = {}
        for split in SPLITS:
            for path in files[split]:
                with Image.open(path) as im:
                    assert im.format == "JPEG" and im.mode == "RGB" and im.size == (32, 32), path
                with open(path, "rb") as f:
                    h = hashlib.sha256(f.read()).hexdigest()
                assert h not in pre_hashes, f"{path} is a pretraining image"
                assert seen.setdefault(h, split) == split, f"{path} also in split {seen[h]}"
        # no stray files: exactly the referenced images are on disk
        referenced = {os.path.normpath(p) for split in SPLITS for p in files[split]}
        on_disk = {os.path.normpath(os.path.join(task_paths(pre, task)["dir"], "images", r))
                   for r in tree_bytes(os.path.join(task_paths(pre, task)["dir"], "images"))}
        assert referenced == on_disk, task


def test_manifest_counts_params_and_scenes(pre, made):
    with open(os.path.join(pre, "manifest.json")) as f:
        pre_manifest = json.load(f)
    for task in TASKS:
        manifest, d = made[task]
        assert manifest == d["manifest"]
        p = manifest["params"]
        assert p["task"] == task and p["seed"] == 0 and p["jpeg_quality"] == 95
        assert (p["image_size"], p["num_colors"], p["num_shapes"]) == (32, 5, 3)
        assert p["pretrain"]["params"] == pre_manifest["params"]
        assert p["pretrain"]["format_version"] == pre_manifest["format_version"]
        assert all(p[f"num_{s}"] == SIZES[task][f"num_{s}"] for s in SPLITS)
        assert manifest["format_version"] == generate.TASK_FORMAT_VERSION
        for split in SPLITS:
            assert manifest["counts"][split] == len(d[split])
            assert len(manifest["scenes"][split]) == len(d[split])
            for sc in manifest["scenes"][split]:
                for scene in (sc if task == "nlvr" else [sc]):
                    c1, s1, r, c2, s2 = scene
                    assert c1 in COLORS and c2 in COLORS and s1 in SHAPES and s2 in SHAPES
                    assert r in ("left", "above") and (c1, s1) != (c2, s2)  # canonical
            if task != "retrieval":
                assert len(manifest["kinds"][split]) == len(d[split])


# ------------------------------------------------------------------- determinism
def test_same_params_give_identical_files_and_other_seed_differs(pre, made, tmp_path):
    other = _copy_pretraining(pre, str(tmp_path / "copy"))
    reseeded = _copy_pretraining(pre, str(tmp_path / "reseeded"))
    for task in TASKS:
        m = generate_task_data(other, task, seed=0, **SIZES[task])
        assert m == made[task][0]
        assert tree_bytes(os.path.join(other, task)) == tree_bytes(os.path.join(pre, task)), task
        m1 = generate_task_data(reseeded, task, seed=1, **SIZES[task])
        assert m1["params"]["seed"] == 1 and m1["scenes"] != m["scenes"]
        a, b = tree_bytes(os.path.join(pre, task)), tree_bytes(os.path.join(reseeded, task))
        for split in SPLITS:
            assert a[f"{split}.json"] != b[f"{split}.json"], (task, split)
        shared = [k for k in a if k.endswith(".jpg") and k in b]
        assert shared and all(a[k] != b[k] for k in shared), task  # every image re-rendered


def test_existing_dir_is_reused_and_mismatch_raises(pre, made):
    for task in TASKS:
        manifest_path = task_paths(pre, task)["manifest"]
        mtime = os.stat(manifest_path).st_mtime_ns
        assert generate_task_data(pre, task, seed=0, **SIZES[task]) == made[task][0]
        assert os.stat(manifest_path).st_mtime_ns == mtime  # not regenerated
    sizes = dict(SIZES["ve"], num_train=SIZES["ve"]["num_train"] + 1)
    with pytest.raises(ValueError) as e:
        generate_task_data(pre, "ve", seed=0, **sizes)
    msg = str(e.value)
    assert os.path.join(pre, "ve") in msg and "stored" in msg and "requested" in msg
    assert f"'num_train': {sizes['num_train']}" in msg and f"'num_train': {SIZES['ve']['num_train']}" in msg
    with pytest.raises(ValueError, match="other parameters"):
        generate_task_data(pre, "nlvr", seed=3, **SIZES["nlvr"])
    with pytest.raises(ValueError, match="other parameters"):  # defaults differ from the small sizes
        generate_task_data(pre, "retrieval")


def test_incomplete_task_dir_raises(pre, tmp_path):
    root = _copy_pretraining(pre, str(tmp_path / "copy"))
    os.makedirs(os.path.join(root, "nlvr", "images"))
    with pytest.raises(ValueError, match="no manifest.json"):
        generate_task_data(root, "nlvr", **SIZES["nlvr"])


def test_missing_pretraining_root_raises(tmp_path):
    for root in (str(tmp_path / "nothing"), str(tmp_path)):
        with pytest.raises(ValueError) as e:
            generate_task_data(root, "ve", num_train=2, num_val=1, num_test=1)
        assert root in str(e.value) and "pretraining" in str(e.value)
    assert not os.path.exists(tmp_path / "nothing")


def test_bad_arguments_raise(pre, tmp_path):
    root = _copy_pretraining(pre, str(tmp_path / "copy"))
    with pytest.raises(ValueError, match="unknown task"):
        generate_task_data(root, "captioning")
    with pytest.raises(ValueError, match="num_test"):
        generate_task_data(root, "retrieval", num_train=4, num_val=2, num_test=3)  # pairs: even
    with pytest.raises(ValueError, match="num_val"):
        generate_task_data(root, "nlvr", num_train=4, num_val=0, num_test=2)
    with pytest.raises(ValueError, match="minimal pairs"):  # 10 colour pairs x 3 shape pairs x 2 axes x 2
        generate_task_data(root, "retrieval", num_train=4, num_val=2, num_test=242)
    assert not [n for n in os.listdir(root) if n in TASKS or ".tmp-" in n]


def test_lost_rename_race_uses_the_winner(pre, made, tmp_path, monkeypatch):
    root = _copy_pretraining(pre, str(tmp_path / "race"))
    winner = os.path.join(pre, "nlvr")
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append((src, dst))
        shutil.copytree(winner, dst)  # another process renames its copy into place first
        return real_rename(src, dst)  # fails: dst exists and is not empty

    monkeypatch.setattr(generate.os, "rename", rename)
    assert generate_task_data(root, "nlvr", seed=0, **SIZES["nlvr"]) == made["nlvr"][0]
    assert len(calls) == 1 and ".tmp-" in calls[0][0]
    assert not [n for n in os.listdir(root) if ".tmp-" in n]
    assert tree_bytes(os.path.join(root, "nlvr")) == tree_bytes(winner)


def test_concurrent_callers(pre, made, tmp_path):
    root = _copy_pretraining(pre, str(tmp_path / "concurrent"))
    results, errors = [], []

    def work():
        try:
            results.append(generate_task_data(root, "retrieval", seed=0, **SIZES["retrieval"]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 3 and all(r == made["retrieval"][0] for r in results)
    assert not [n for n in os.listdir(root) if ".tmp-" in n]
    assert tree_bytes(os.path.join(root, "retrieval")) == tree_bytes(os.path.join(pre, "retrieval"))


# -------------------------------------------------------------------- vocabulary
def test_every_text_tokenises_without_unk(made, tokenizer):
    from albef.data.text import pre_caption

    for task in TASKS:
        manifest, d = made[task]
        longest = 0
        for split in SPLITS:
            for e in d[split]:
                texts = e["caption"] if task == "retrieval" and isinstance(e["caption"], list) else [e.get("caption", e.get("sentence"))]
                for text in texts:
                    assert pre_caption(text) == text
                    toks = tokenizer.tokenize(pre_caption(text))
                    assert tokenizer.unk_token not in toks, (task, text, toks)
                    longest = max(longest, len(toks))
        assert manifest["max_text_tokens"] == longest, task


def test_vocabulary_constraint_is_real_and_checked(pre, tokenizer, tmp_path, monkeypatch):
    # words the templates must avoid: characters (or word-internal characters) never in pretraining captions
    for word in ("image", "is", "has", "pictures", "heavy"):
        assert tokenizer.unk_token in tokenizer.tokenize(word), word
    assert tokenizer.unk_token not in tokenizer.tokenize("picture")
    root = _copy_pretraining(pre, str(tmp_path / "copy"))
    monkeypatch.setattr(ve, "_VE_OBJECT", ("there is {A}",))
    with pytest.raises(ValueError, match=r"\['is'\].*\[UNK\]") as e:
        generate_task_data(root, "ve", num_train=3, num_val=1, num_test=1)
    assert "vocab.txt" in str(e.value)
    assert not os.path.exists(os.path.join(root, "ve"))
    assert not [n for n in os.listdir(root) if ".tmp-" in n]


# ------------------------------------------------------------ labels vs scenes
def test_label_balance(made):
    manifest, d = made["ve"]
    for split in SPLITS:
        counts = Counter(e["label"] for e in d[split])
        n = SIZES["ve"][f"num_{split}"]
        assert counts == {"entailment": n, "neutral": n, "contradiction": n}
        assert manifest["label_counts"][split] == dict(counts)
    manifest, d = made["nlvr"]
    for split in SPLITS:
        counts = Counter(e["label"] for e in d[split])
        n = SIZES["nlvr"][f"num_{split}"]
        assert counts == {"True": n // 2, "False": n - n // 2}
        assert manifest["label_counts"][split] == dict(counts)


def test_ve_labels_match_scenes(made):
    manifest, d = made["ve"]
    kinds = Counter()
    for split in SPLITS:
        for e, scene, kind in zip(d[split], manifest["scenes"][split], manifest["kinds"][split]):
            assert _ve_truth(e["sentence"], scene) == e["label"], (e, scene)
            kinds[(e["label"], kind)] += 1
    # contradictions mix absent objects with relational/attribute falsehoods
    assert kinds[("contradiction", "absent_object")] > 0
    assert kinds[("contradiction", "relation_flip")] + kinds[("contradiction", "attribute_swap")] > 0


def test_ve_generator_mixes_statement_kinds():
    """At a larger size (annotations only, no images): about half of each label's kinds."""
    colors, shapes_ = list(COLORS), list(SHAPES)
    p = dict(num_train=600, num_val=1, num_test=1, seed=0)
    ann, scenes, extra, _ = ve._build_ve(p, "test-tag", colors, shapes_)
    kinds = Counter((e["label"], k) for e, k in zip(ann["train"], extra["kinds"]["train"]))
    assert 0.4 < kinds[("contradiction", "absent_object")] / 600 < 0.6
    assert 0.4 < kinds[("entailment", "object")] / 600 < 0.6
    assert 0.4 < kinds[("neutral", "material")] / 600 < 0.6
    for e, sc in zip(ann["train"], scenes["train"]):
        assert _ve_truth(e["sentence"], sc) == e["label"]


def test_nlvr_labels_match_scenes(made):
    manifest, d = made["nlvr"]
    for split in SPLITS:
        for e, (left, right) in zip(d[split], manifest["scenes"][split]):
            assert _nlvr_truth(e["sentence"], left, right) == (e["label"] == "True"), (e, left, right)


def test_nlvr_generator_balances_each_kind():
    """At a larger size (annotations only): every kind of sentence is True about half the time."""
    p = dict(num_train=2000, num_val=1, num_test=1, seed=0)
    ann, scenes, extra, _ = nlvr._build_nlvr(p, "test-tag", list(COLORS), list(SHAPES))
    by_kind: dict[str, Counter] = {}
    for e, k, (left, right) in zip(ann["train"], extra["kinds"]["train"], scenes["train"]):
        by_kind.setdefault(k.split("/")[0], Counter())[e["label"]] += 1
        assert _nlvr_truth(e["sentence"], left, right) == (e["label"] == "True")
    assert set(by_kind) == {"side", "each", "one", "neither", "side_relation"}
    for k, c in by_kind.items():
        assert 0.4 < c["True"] / (c["True"] + c["False"]) < 0.6, (k, c)


def test_nlvr_sentence_form_is_read_back_from_the_text():
    """projects/synthetic_tasks/analyze_synthetic_nlvr.py groups sentences by the form the generator drew:
    reading it back from the sentence alone must agree on every entry."""
    p = dict(num_train=600, num_val=1, num_test=1, seed=3)
    ann, _, extra, _ = nlvr._build_nlvr(p, "test-tag", list(COLORS), list(SHAPES))
    forms = Counter()
    for e, k in zip(ann["train"], extra["kinds"]["train"]):
        assert nlvr.nlvr_sentence_form(e["sentence"]) == k.split("/")[0], (e["sentence"], k)
        forms[k.split("/")[0]] += 1
    assert set(forms) == {"side", "each", "one", "neither", "side_relation"}


def test_nlvr_images_belong_to_one_pair_and_split(made):
    _, d = made["nlvr"]
    seen = set()
    for split in SPLITS:
        for e in d[split]:
            for im in e["images"]:
                assert im.startswith(f"images/{split}/") and im not in seen
                seen.add(im)


def test_retrieval_captions_are_true_of_their_scenes(made):
    manifest, d = made["retrieval"]
    for split in SPLITS:
        for e, scene in zip(d[split], manifest["scenes"][split]):
            caps = e["caption"] if isinstance(e["caption"], list) else [e["caption"]]
            for cap in caps:
                assert _relation_truth(scene, *_caption_relation(cap)) is True, (cap, scene)
    # a domain shift: most captions are not in the pretraining style
    pretrain_style = re.compile(r"^an? \w+ \w+ (left of|right of|to the left of|to the right of|above|below) an? \w+ \w+$")
    train_caps = [e["caption"] for e in d["train"]]
    assert 0 < sum(bool(pretrain_style.match(c)) for c in train_caps) < len(train_caps) / 2


def test_retrieval_image_ids(made):
    manifest, d = made["retrieval"]
    id_of: dict[str, str] = {}
    for e, scene in zip(d["train"], manifest["scenes"]["train"]):
        assert id_of.setdefault(e["image"], e["image_id"]) == e["image_id"]  # captions of an image share its id
    scene_of: dict[str, tuple] = {}
    for e, scene in zip(d["train"], manifest["scenes"]["train"]):
        assert scene_of.setdefault(e["image"], tuple(scene)) == tuple(scene)
    # one id per scene: renders of the same scene show the same content (positives of each other)
    ids_of_scene: dict[tuple, set] = {}
    for image, sid in id_of.items():
        ids_of_scene.setdefault(scene_of[image], set()).add(sid)
    assert all(len(v) == 1 for v in ids_of_scene.values())
    assert len({next(iter(v)) for v in ids_of_scene.values()}) == len(ids_of_scene)


def test_retrieval_eval_splits_are_minimal_pairs(pre, made):
    manifest, d = made["retrieval"]
    train_images = {e["image"] for e in d["train"]}
    scenes = {}
    for split in ("val", "test"):
        assert not {e["image"] for e in d[split]} & train_images
        scenes[split] = [tuple(s) for s in manifest["scenes"][split]]
        assert len(set(scenes[split])) == len(scenes[split])
        words = [[sorted(c.split()) for c in e["caption"]] for e in d[split]]
        for i, e in enumerate(d[split]):
            partners = [j for j in range(len(d[split])) if j != i and words[j] == words[i]]
            assert len(partners) == 1, (split, i, e)  # a partner made of the same words
            j = partners[0]
            assert scenes[split][i] != scenes[split][j]
            # the partner's captions are all false of this image: a hard negative
            for cap in d[split][j]["caption"]:
                assert _relation_truth(scenes[split][i], *_caption_relation(cap)) is False
        pairs = manifest["pairs"][split]
        assert len(pairs) == len(d[split]) // 2
        assert sorted(i for p in pairs for i in p["images"]) == list(range(len(d[split])))
        assert {p["kind"] for p in pairs} <= {"color_swap", "shape_swap", "relation_swap"}
    assert not set(scenes["val"]) & set(scenes["test"])
    # like the pretraining test split: each test pair comes from its own group (colours, shapes, axis)
    keys = [(frozenset((s[0], s[3])), frozenset((s[1], s[4])), s[2]) for s in scenes["test"]]
    assert len(set(keys)) == len(keys) // 2
    # val and test images are new renders (files differ from train's)
    trees = {split: set(tree_bytes(os.path.join(pre, "retrieval", "images", split)).values()) for split in SPLITS}
    assert not (trees["val"] | trees["test"]) & trees["train"]
