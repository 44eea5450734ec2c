"""Tests of the downstream task data: the SNLI-VE and NLVR2 readers (official JSON formats),
their error reporting, the task collator and the config path (build_dataset, loaders,
synthetic task generation, a dataset's own sampler)."""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, Sampler, Subset
from conftest import write_json

from albef.data.build import (
    build_collator,
    build_dataset,
    build_test_loader,
    build_train_loader,
    build_train_sampler,
    prepare_synthetic,
)
from albef.data.collate import ImageTextCollator
from albef.data.datasets import DataError
from albef.data.datasets.nlvr2 import NLVR2JSON
from albef.data.datasets.visual_entailment import VisualEntailmentJSON
from albef.data.samplers import InfiniteSampler
from albef.data.text import pre_caption
from albef.data.tokenization import tokenize
from albef.data.transforms import TestTransform as EvalTransform
from albef.data.transforms import TrainTransform
from albef.registry import ComponentError
from albef.utils import comm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
RES = 8
EVAL_T = {"image_res": RES, "mean": MEAN, "std": STD}
TRAIN_T = {
    "image_res": RES, "crop_scale": [0.5, 1.0], "hflip_prob": 0.5, "hflip_swap_words": {"left": "right", "right": "left"},
    "randaugment": {"num_ops": 2, "magnitude": 7}, "mean": MEAN, "std": STD,
}
# plain resize, no augmentation: a train sample is predictable (red stays red)
PLAIN_TRAIN_T = {"image_res": RES, "crop_scale": None, "hflip_prob": 0.0, "randaugment": None, "mean": MEAN, "std": STD}


# --------------------------------------------------------------------------- helpers
@pytest.fixture()
def image_dir(tmp_path):
    """Real tiny JPEGs: solid red / blue / green, a noise image, a truncated JPEG, a text file."""
    d = tmp_path / "imgs"
    d.mkdir()
    for name, rgb in (("red", (255, 0, 0)), ("blue", (0, 0, 255)), ("green", (0, 255, 0))):
        Image.new("RGB", (24, 20), rgb).save(d / f"{name}.jpg", quality=95)
    noise = np.random.RandomState(0).randint(0, 256, (20, 24, 3), dtype=np.uint8)
    noise[:, :12] //= 4  # dark left half: not mirror-symmetric
    Image.fromarray(noise).save(d / "noise.jpg", quality=95)
    raw = (d / "red.jpg").read_bytes()
    (d / "trunc.jpg").write_bytes(raw[: len(raw) // 2])
    (d / "notimg.jpg").write_text("this is not an image\n")
    return d



def _dominant(img: torch.Tensor) -> str:
    """'red' / 'green' / 'blue' for a normalised [3, H, W] image of one solid colour."""
    return ("red", "green", "blue")[int(img.mean(dim=(1, 2)).argmax())]


@pytest.fixture()
def data_log(caplog):
    """caplog for ``albef.data`` even after setup_logger() stopped the ``albef`` loggers' propagation."""
    lg = logging.getLogger("albef.data")
    lg.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.WARNING)
    yield caplog
    lg.removeHandler(caplog.handler)


def _ve_anns():
    return [
        {"image": "red", "sentence": "A Man's dog, running!!", "label": "entailment"},
        {"image": "blue", "sentence": "two-year-old boy/girl", "label": "neutral"},
        {"image": "green", "sentence": "(Hello) world.", "label": "contradiction"},
    ]


def _nlvr_anns():
    return [
        {"images": ["red.jpg", "blue.jpg"], "sentence": "The LEFT picture is red.", "label": "True"},
        {"images": ["blue.jpg", "red.jpg"], "sentence": "the left-picture is red!", "label": "False"},
    ]


# --------------------------------------------------------------------------- readers: good files
def test_ve_reader_samples_and_labels(tmp_path, image_dir):
    ann = write_json(tmp_path / "ve_test.json", _ve_anns())
    ds = VisualEntailmentJSON(ann, image_root=str(image_dir), is_train=False, transforms=EVAL_T)
    assert len(ds) == 3 and ds.text_field == "sentence"
    # official mapping: contradiction 0, neutral 1, entailment 2; class_names aligned with it
    assert [ds[i]["label"] for i in range(3)] == [2, 1, 0]
    assert tuple(ds.class_names) == ("contradiction", "neutral", "entailment")
    assert all(ds.class_names[v] == k for k, v in VisualEntailmentJSON.LABELS.items())
    # the id has no extension: image_root/<id>.jpg
    assert [r["images"] for r in ds.records] == [[str(image_dir / f"{c}.jpg")] for c in ("red", "blue", "green")]
    for i, (colour, text) in enumerate([("red", "a mans dog running"), ("blue", "two year old boy girl"), ("green", "hello world")]):
        s = ds[i]
        assert set(s) == {"image", "sentence", "label", "index", "skipped"}
        assert isinstance(s["image"], torch.Tensor) and s["image"].dtype == torch.float32
        assert s["image"].shape == (3, RES, RES)
        assert _dominant(s["image"]) == colour
        assert s["sentence"] == text == pre_caption(_ve_anns()[i]["sentence"])
        assert type(s["label"]) is int and s["index"] == i and s["skipped"] == []
    # max_words reaches pre_caption
    short = VisualEntailmentJSON(ann, image_root=str(image_dir), is_train=False, transforms=EVAL_T, max_words=2)
    assert short[0]["sentence"] == "a mans"
    # a tuple key (epoch, index), as the training sampler yields, works in eval mode too
    assert ds[(3, 1)]["index"] == 1


def test_nlvr_reader_samples_pair_order_and_labels(tmp_path, image_dir):
    anns = _nlvr_anns() + [{"images": ["green.jpg", "red.jpg"], "sentence": "json bool", "label": True}]
    ann = write_json(tmp_path / "nlvr_dev.json", anns)
    for is_train, t in ((False, EVAL_T), (True, PLAIN_TRAIN_T)):
        ds = NLVR2JSON(ann, image_root=str(image_dir), is_train=is_train, transforms=t)
        assert len(ds) == 3 and ds.text_field == "sentence"
        assert [ds[i]["label"] for i in range(3)] == [1, 0, 1]  # "True" 1, "False" 0 (a JSON bool tolerated)
        for i, (left, right) in enumerate([("red", "blue"), ("blue", "red"), ("green", "red")]):
            s = ds[i]
            assert set(s) == {"image", "sentence", "label", "index", "skipped"}
            assert s["image"].shape == (2, 3, RES, RES) and s["image"].dtype == torch.float32
            assert (_dominant(s["image"][0]), _dominant(s["image"][1])) == (left, right)
            assert s["index"] == i and s["skipped"] == [] and type(s["label"]) is int
        assert ds[0]["sentence"] == "the left picture is red"
        assert ds[1]["sentence"] == "the left picture is red"
    assert tuple(NLVR2JSON.class_names) == ("false", "true")
    assert NLVR2JSON.class_names[NLVR2JSON.LABELS["True"]] == "true"
    assert ds.records[0]["images"] == [str(image_dir / "red.jpg"), str(image_dir / "blue.jpg")]


def test_train_vs_eval_transforms(tmp_path, image_dir):
    ann = write_json(tmp_path / "ve.json", [{"image": "noise", "sentence": "a dot to the left of a box", "label": "neutral"}])
    img = Image.open(image_dir / "noise.jpg").convert("RGB")

    ev = VisualEntailmentJSON(ann, image_root=str(image_dir), is_train=False, transforms=TRAIN_T)
    assert isinstance(ev.transform, EvalTransform) and not ev.is_train
    expected = EvalTransform(RES, MEAN, STD)(img)
    for key in (0, (0, 0), (5, 0)):  # eval: the same plain resize, never flipped, whatever the epoch
        s = ev[key]
        assert torch.allclose(s["image"], expected) and s["sentence"] == "a dot to the left of a box"

    tr = VisualEntailmentJSON(ann, image_root=str(image_dir), is_train=True, transforms=TRAIN_T, seed=3)
    assert isinstance(tr.transform, TrainTransform) and tr.is_train
    a, b = tr[(0, 0)], tr[(0, 0)]
    assert torch.equal(a["image"], b["image"]) and a["sentence"] == b["sentence"]  # deterministic per (seed, epoch, index)
    epochs = [tr[(e, 0)]["image"] for e in range(4)]
    assert not all(torch.allclose(x, expected, atol=1e-3) for x in epochs)  # augmented
    assert any(not torch.equal(epochs[0], x) for x in epochs[1:])  # differently per epoch

    # a training flip mirrors the image and swaps left/right in the sentence (VE has one image)
    flip_t = dict(PLAIN_TRAIN_T, hflip_prob=1.0, hflip_swap_words={"left": "right", "right": "left"})
    fl = VisualEntailmentJSON(ann, image_root=str(image_dir), is_train=True, transforms=flip_t)
    s = fl[0]
    assert s["sentence"] == "a dot to the right of a box"
    assert torch.allclose(s["image"], EvalTransform(RES, MEAN, STD)(ImageOps.mirror(img)), atol=1e-5)
    assert not torch.allclose(s["image"], expected, atol=1e-3)

    # an NLVR pair is never flipped: "left picture" keeps naming the first image
    pair = write_json(tmp_path / "nlvr.json", [{"images": ["noise.jpg", "red.jpg"], "sentence": "the left picture", "label": "True"}])
    s = NLVR2JSON(pair, image_root=str(image_dir), is_train=True, transforms=flip_t)[0]
    assert s["sentence"] == "the left picture"
    assert torch.allclose(s["image"][0], expected, atol=1e-5) and _dominant(s["image"][1]) == "red"


def test_readers_accept_several_files_and_a_single_path(tmp_path, image_dir):
    a = write_json(tmp_path / "a.json", _ve_anns()[:2])
    b = write_json(tmp_path / "b.json", _ve_anns()[2:])
    ds = VisualEntailmentJSON([a, b], image_root=str(image_dir), is_train=False, transforms=EVAL_T)
    assert len(ds) == 3 and [ds[i]["label"] for i in range(3)] == [2, 1, 0]
    assert ds.records[2]["where"] == f"{b}: entry 0"
    assert len(NLVR2JSON(write_json(tmp_path / "n.json", _nlvr_anns()), image_root=str(image_dir), is_train=False, transforms=EVAL_T)) == 2


# --------------------------------------------------------------------------- readers: malformed files
VE_OK = {"image": "red", "sentence": "a red thing", "label": "entailment"}
NLVR_OK = {"images": ["red.jpg", "blue.jpg"], "sentence": "a red thing", "label": "True"}

MALFORMED = [
    # (reader, bad entry, words the message must contain besides the file and "entry 2")
    (VisualEntailmentJSON, {"sentence": "x", "label": "neutral"}, ["'image'"]),
    (VisualEntailmentJSON, {"image": "red", "label": "neutral"}, ["'sentence'"]),
    (VisualEntailmentJSON, {"image": "red", "sentence": "x"}, ["'label'"]),
    (VisualEntailmentJSON, {"image": "red", "sentence": "x", "label": "maybe"}, ["'maybe'", "entailment"]),
    (VisualEntailmentJSON, {"image": "red", "sentence": "x", "label": "Entailment"}, ["'Entailment'"]),
    (VisualEntailmentJSON, {"image": "red", "sentence": "x", "label": 2}, ["'label'"]),
    (VisualEntailmentJSON, {"image": "red", "sentence": 5, "label": "neutral"}, ["'sentence'"]),
    (VisualEntailmentJSON, {"image": ["red"], "sentence": "x", "label": "neutral"}, ["'image'"]),
    (VisualEntailmentJSON, {"image": "red", "sentence": "?!", "label": "neutral"}, ["empty", "'?!'"]),
    (VisualEntailmentJSON, "just a string", ["not a JSON object"]),
    (NLVR2JSON, {"sentence": "x", "label": "True"}, ["'images'"]),
    (NLVR2JSON, {"images": ["red.jpg", "blue.jpg"], "label": "True"}, ["'sentence'"]),
    (NLVR2JSON, {"images": ["red.jpg", "blue.jpg"], "sentence": "x"}, ["'label'"]),
    (NLVR2JSON, {"images": ["red.jpg", "blue.jpg"], "sentence": "x", "label": "yes"}, ["'yes'", "True"]),
    (NLVR2JSON, {"images": ["red.jpg", "blue.jpg"], "sentence": "x", "label": "true"}, ["'true'"]),
    (NLVR2JSON, {"images": ["red.jpg", "blue.jpg"], "sentence": "x", "label": 1}, ["label", "1"]),
    (NLVR2JSON, {"images": ["red.jpg", "blue.jpg"], "sentence": "x", "label": ["True"]}, ["label"]),
    (NLVR2JSON, {"images": "red.jpg", "sentence": "x", "label": "True"}, ["'images'"]),
    (NLVR2JSON, {"images": ["red.jpg"], "sentence": "x", "label": "True"}, ["'images'", "two"]),
    (NLVR2JSON, {"images": ["red.jpg", "blue.jpg", "green.jpg"], "sentence": "x", "label": "True"}, ["'images'", "two"]),
    (NLVR2JSON, {"images": ["red.jpg", 7], "sentence": "x", "label": "True"}, ["'images'", "two"]),
    (NLVR2JSON, {"images": ["red.jpg", ""], "sentence": "x", "label": "True"}, ["'images'", "two"]),
    (NLVR2JSON, {"images": ["red.jpg", "blue.jpg"], "sentence": "...", "label": "False"}, ["empty"]),
    (NLVR2JSON, ["red.jpg", "blue.jpg", "x", "True"], ["not a JSON object"]),
]


@pytest.mark.parametrize("cls,bad,words", MALFORMED, ids=[f"{c.__name__[:4]}-{i}" for i, (c, _, _) in enumerate(MALFORMED)])
def test_malformed_entry_names_file_and_entry(tmp_path, image_dir, cls, bad, words):
    ok = VE_OK if cls is VisualEntailmentJSON else NLVR_OK
    ann = write_json(tmp_path / "anns.json", [ok, ok, bad, ok])
    for is_train in (True, False):  # checked when the file is read, in either mode
        with pytest.raises(DataError) as ei:
            cls(ann, image_root=str(image_dir), is_train=is_train, transforms=EVAL_T if not is_train else TRAIN_T)
        msg = str(ei.value)
        assert ann in msg and "entry 2" in msg, msg
        for w in words:
            assert w in msg, (w, msg)


def test_malformed_entry_in_second_file(tmp_path, image_dir):
    a = write_json(tmp_path / "a.json", [NLVR_OK] * 3)
    b = write_json(tmp_path / "b.json", [NLVR_OK, {"images": ["red.jpg"], "sentence": "x", "label": "True"}])
    with pytest.raises(DataError) as ei:
        NLVR2JSON([a, b], image_root=str(image_dir), transforms=EVAL_T, is_train=False)
    assert b in str(ei.value) and "entry 1" in str(ei.value) and a not in str(ei.value)


@pytest.mark.parametrize("cls", [VisualEntailmentJSON, NLVR2JSON])
def test_bad_annotation_files(tmp_path, image_dir, cls):
    ok = VE_OK if cls is VisualEntailmentJSON else NLVR_OK
    missing = str(tmp_path / "no_such.json")
    with pytest.raises(DataError) as ei:
        cls(missing, image_root=str(image_dir), is_train=False, transforms=EVAL_T)
    assert missing in str(ei.value) and "not found" in str(ei.value)
    not_list = write_json(tmp_path / "dict.json", {"0": ok})
    with pytest.raises(DataError) as ei:
        cls(not_list, image_root=str(image_dir), is_train=False, transforms=EVAL_T)
    assert not_list in str(ei.value) and "list" in str(ei.value)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"image": ')
    with pytest.raises(DataError) as ei:
        cls(str(broken), image_root=str(image_dir), is_train=False, transforms=EVAL_T)
    assert str(broken) in str(ei.value)
    empty = write_json(tmp_path / "empty.json", [])
    with pytest.raises(DataError) as ei:
        cls(empty, image_root=str(image_dir), is_train=False, transforms=EVAL_T)
    assert empty in str(ei.value)
    with pytest.raises(DataError, match="empty"):
        cls([], image_root=str(image_dir), is_train=False, transforms=EVAL_T)


def _latin1_ve_file(path) -> int:
    """An SNLI-VE file written in Latin-1 ("café" as one byte 0xE9) past the first 8 KiB (a
    text stream's first read); returns that byte's offset in the file."""
    anns = [dict(VE_OK, sentence=f"a red thing number {i}") for i in range(400)] + [dict(VE_OK, sentence="a red café")]
    data = json.dumps(anns, ensure_ascii=False).encode("latin-1")
    path.write_bytes(data)
    assert len(data) > 8192 and data.count(b"\xe9") == 1
    return data.index(b"\xe9")


def test_annotation_file_not_utf8_names_file_and_byte(tmp_path, image_dir):
    latin = tmp_path / "ve_latin1.json"
    pos = _latin1_ve_file(latin)
    with pytest.raises(DataError) as ei:
        VisualEntailmentJSON(str(latin), image_root=str(image_dir), is_train=False, transforms=EVAL_T)
    msg = str(ei.value)
    assert str(latin) in msg and "UTF-8" in msg and f"byte {pos} " in msg, msg


def test_annotation_file_not_utf8_through_the_cli(synthetic_root, tmp_path, image_dir):
    from conftest import TINY, run_cli

    latin = tmp_path / "ve_latin1.json"
    pos = _latin1_ve_file(latin)
    r = run_cli(["--config-file", TINY, f"data.synthetic.root={synthetic_root}", "eval.retrieval=null", "train.max_iter=1",
                 f"output_dir={tmp_path / 'out'}", f"data.train={{name: VisualEntailmentJSON, ann_files: [{latin}], image_root: {image_dir}}}"])
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "UnicodeDecodeError" not in r.stderr, r.stderr[-3000:]
    assert str(latin) in r.stderr and f"byte {pos} " in r.stderr


# --------------------------------------------------------------------------- bad images
def _ve_with_bad_images():
    return [
        {"image": "red", "sentence": "first", "label": "entailment"},  # 0
        {"image": "missing", "sentence": "gone", "label": "neutral"},  # 1: no file
        {"image": "trunc", "sentence": "half a file", "label": "contradiction"},  # 2: truncated JPEG
        {"image": "blue", "sentence": "fourth", "label": "neutral"},  # 3
        {"image": "notimg", "sentence": "text file", "label": "entailment"},  # 4: not an image (wraps to 0)
    ]


def test_ve_train_skips_bad_images_to_next_entry(tmp_path, image_dir):
    ann = write_json(tmp_path / "ve_train.json", _ve_with_bad_images())
    ds = VisualEntailmentJSON(ann, image_root=str(image_dir), is_train=True, transforms=PLAIN_TRAIN_T)
    assert len(ds) == 5  # images are read lazily: nothing dropped at load
    s = ds[1]  # missing -> truncated -> entry 3
    assert s["index"] == 3 and s["label"] == 1 and s["sentence"] == "fourth" and _dominant(s["image"]) == "blue"
    assert [p for p, _ in s["skipped"]] == [str(image_dir / "missing.jpg"), str(image_dir / "trunc.jpg")]
    reasons = dict(s["skipped"])
    assert "not found" in reasons[str(image_dir / "missing.jpg")] and f"{ann}: entry 1" in reasons[str(image_dir / "missing.jpg")]
    assert "truncated" in reasons[str(image_dir / "trunc.jpg")].lower() and f"{ann}: entry 2" in reasons[str(image_dir / "trunc.jpg")]
    s = ds[(2, 4)]  # the last entry is bad: wraps round to entry 0
    assert s["index"] == 0 and s["label"] == 2 and _dominant(s["image"]) == "red"
    assert s["skipped"][0][0] == str(image_dir / "notimg.jpg") and f"{ann}: entry 4" in s["skipped"][0][1]
    assert ds[0]["skipped"] == [] and ds[0]["index"] == 0


def test_ve_strict_names_the_image(tmp_path, image_dir):
    ann = write_json(tmp_path / "ve.json", _ve_with_bad_images())
    for is_train in (True, False):
        ds = VisualEntailmentJSON(ann, image_root=str(image_dir), is_train=is_train, transforms=PLAIN_TRAIN_T if is_train else EVAL_T, strict=True)
        assert ds[0]["skipped"] == []
        for i, name in ((1, "missing.jpg"), (2, "trunc.jpg"), (4, "notimg.jpg")):
            with pytest.raises(DataError) as ei:
                ds[i]
            assert str(image_dir / name) in str(ei.value) and f"entry {i}" in str(ei.value)


def test_ve_eval_bad_image_is_grey_with_warning(tmp_path, image_dir, data_log):
    ann = write_json(tmp_path / "ve_test.json", _ve_with_bad_images())
    ds = VisualEntailmentJSON(ann, image_root=str(image_dir), is_train=False, transforms=EVAL_T)
    samples = [ds[i] for i in range(len(ds))]
    assert len(ds) == 5 and [s["index"] for s in samples] == list(range(5))
    assert [s["label"] for s in samples] == [2, 1, 0, 1, 2]  # nothing dropped, labels aligned
    assert [s["sentence"] for s in samples] == ["first", "gone", "half a file", "fourth", "text file"]
    for i, name in ((1, "missing.jpg"), (2, "trunc.jpg"), (4, "notimg.jpg")):
        assert torch.equal(samples[i]["image"], torch.zeros(3, RES, RES))
        assert [p for p, _ in samples[i]["skipped"]] == [str(image_dir / name)]
        warned = [r.getMessage() for r in data_log.records if r.levelno == logging.WARNING and str(image_dir / name) in r.getMessage()]
        assert warned and f"{ann}: entry {i}" in warned[0]
    assert _dominant(samples[3]["image"]) == "blue" and samples[3]["skipped"] == []


def test_nlvr_one_bad_image_of_the_pair(tmp_path, image_dir, data_log):
    anns = [
        {"images": ["red.jpg", "missing.jpg"], "sentence": "right is gone", "label": "True"},  # 0: right bad
        {"images": ["trunc.jpg", "blue.jpg"], "sentence": "left is broken", "label": "False"},  # 1: left bad
        {"images": ["green.jpg", "blue.jpg"], "sentence": "both fine", "label": "False"},  # 2
    ]
    ann = write_json(tmp_path / "nlvr.json", anns)
    tr = NLVR2JSON(ann, image_root=str(image_dir), is_train=True, transforms=PLAIN_TRAIN_T)
    s = tr[0]
    assert s["index"] == 2 and s["label"] == 0 and s["sentence"] == "both fine"
    assert (_dominant(s["image"][0]), _dominant(s["image"][1])) == ("green", "blue")
    assert [p for p, _ in s["skipped"]] == [str(image_dir / "missing.jpg"), str(image_dir / "trunc.jpg")]
    assert f"{ann}: entry 0" in s["skipped"][0][1] and f"{ann}: entry 1" in s["skipped"][1][1]

    strict = NLVR2JSON(ann, image_root=str(image_dir), is_train=True, transforms=PLAIN_TRAIN_T, strict=True)
    for i, bad, good in ((0, "missing.jpg", "red.jpg"), (1, "trunc.jpg", "blue.jpg")):
        with pytest.raises(DataError) as ei:
            strict[i]
        assert str(image_dir / bad) in str(ei.value) and str(image_dir / good) not in str(ei.value)

    ev = NLVR2JSON(ann, image_root=str(image_dir), is_train=False, transforms=EVAL_T)
    samples = [ev[i] for i in range(3)]
    assert [s["label"] for s in samples] == [1, 0, 0] and [s["index"] for s in samples] == [0, 1, 2]
    assert all(s["image"].shape == (2, 3, RES, RES) for s in samples)
    assert torch.equal(samples[0]["image"][1], torch.zeros(3, RES, RES))  # the bad right image is grey
    assert torch.equal(samples[1]["image"][0], torch.zeros(3, RES, RES))  # the bad left image is grey
    # only the unreadable image of a pair is replaced: its partner is the real picture
    assert _dominant(samples[0]["image"][0]) == "red" and _dominant(samples[1]["image"][1]) == "blue"
    assert [p for p, _ in samples[0]["skipped"]] == [str(image_dir / "missing.jpg")]
    assert [p for p, _ in samples[1]["skipped"]] == [str(image_dir / "trunc.jpg")]
    msgs = [r.getMessage() for r in data_log.records if r.levelno == logging.WARNING]
    assert any(str(image_dir / "missing.jpg") in m and f"{ann}: entry 0" in m for m in msgs)
    assert any(str(image_dir / "trunc.jpg") in m and f"{ann}: entry 1" in m for m in msgs)
    assert not any(str(image_dir / "red.jpg") in m for m in msgs)

    strict_ev = NLVR2JSON(ann, image_root=str(image_dir), is_train=False, transforms=EVAL_T, strict=True)
    with pytest.raises(DataError) as ei:
        strict_ev[0]
    assert str(image_dir / "missing.jpg") in str(ei.value)


def test_train_all_images_bad_is_an_error(tmp_path, image_dir):
    ann = write_json(tmp_path / "ve.json", [{"image": "missing", "sentence": "x", "label": "neutral"}, {"image": "notimg", "sentence": "y", "label": "neutral"}])
    ds = VisualEntailmentJSON(ann, image_root=str(image_dir), is_train=True, transforms=PLAIN_TRAIN_T)
    with pytest.raises(DataError) as ei:
        ds[0]
    assert str(image_dir / "missing.jpg") in str(ei.value) and str(image_dir / "notimg.jpg") in str(ei.value)


# --------------------------------------------------------------------------- collator
def test_collator_on_ve_batch(tmp_path, image_dir, tokenizer):
    ann = write_json(tmp_path / "ve.json", _ve_with_bad_images())
    ds = VisualEntailmentJSON(ann, image_root=str(image_dir), is_train=True, transforms=PLAIN_TRAIN_T)
    samples = [ds[0], ds[1], ds[3]]  # ds[1] stepped over two bad images
    col = ImageTextCollator(tokenizer, max_tokens=12, text_field=ds.text_field, with_image_ids=False)
    batch = col(samples)
    assert set(batch) == {"image", "input_ids", "attention_mask", "label", "index", "skipped"}
    assert batch["image"].shape == (3, 3, RES, RES)
    assert torch.equal(batch["image"][2], samples[2]["image"])
    ref = tokenize(tokenizer, [s["sentence"] for s in samples], 12)
    assert torch.equal(batch["input_ids"], ref["input_ids"]) and torch.equal(batch["attention_mask"], ref["attention_mask"])
    assert batch["input_ids"].shape[0] == 3 and batch["input_ids"].shape[1] <= 12
    assert batch["label"].dtype == torch.int64 and batch["label"].tolist() == [2, 1, 1]
    assert batch["index"].dtype == torch.int64 and batch["index"].tolist() == [0, 3, 3]
    assert batch["skipped"] == samples[1]["skipped"] and len(batch["skipped"]) == 2

    # image_id: dropped without ids, kept (int64) with them
    with_ids = [dict(s, image_id=10 + k) for k, s in enumerate(samples)]
    assert "image_id" not in col(with_ids)
    kept = ImageTextCollator(tokenizer, max_tokens=12, text_field="sentence", with_image_ids=True)(with_ids)
    assert kept["image_id"].dtype == torch.int64 and kept["image_id"].tolist() == [10, 11, 12]

    with pytest.raises(ValueError) as ei:
        ImageTextCollator(None, text_field="sentence")(samples)
    assert "sentence" in str(ei.value) and "tokenizer" in str(ei.value)


def test_collator_on_nlvr_batch(tmp_path, image_dir, tokenizer):
    anns = _nlvr_anns() + [{"images": ["red.jpg", "missing.jpg"], "sentence": "bad right", "label": "True"}]
    ann = write_json(tmp_path / "nlvr.json", anns)
    ev = NLVR2JSON(ann, image_root=str(image_dir), is_train=False, transforms=EVAL_T)
    samples = [ev[2], ev[0], ev[1], ev[2]]
    batch = ImageTextCollator(tokenizer, max_tokens=10, text_field="sentence")(samples)
    assert set(batch) == {"image", "input_ids", "attention_mask", "label", "index", "skipped"}
    assert batch["image"].shape == (4, 2, 3, RES, RES)
    assert (_dominant(batch["image"][1, 0]), _dominant(batch["image"][1, 1])) == ("red", "blue")
    assert (_dominant(batch["image"][2, 0]), _dominant(batch["image"][2, 1])) == ("blue", "red")
    assert batch["label"].dtype == torch.int64 and batch["label"].tolist() == [1, 1, 0, 1]
    ref = tokenize(tokenizer, [s["sentence"] for s in samples], 10)
    assert torch.equal(batch["input_ids"], ref["input_ids"]) and torch.equal(batch["attention_mask"], ref["attention_mask"])
    bad = str(image_dir / "missing.jpg")
    assert [p for p, _ in batch["skipped"]] == [bad, bad]  # concatenated in sample order


# --------------------------------------------------------------------------- config path
def _task_cfg(task, synthetic_root, tmp_path, *overrides):
    from albef.config import load_config

    return load_config(os.path.join(REPO, "tests", "configs", f"tiny_{task}.yaml"),
                       [f"data.synthetic.root={synthetic_root}", f"output_dir={tmp_path / 'out'}", *overrides])


TASK_CASES = {
    # task: (dataset class, image dims per sample, number of classes, entries per split)
    "ve": (VisualEntailmentJSON, (3, 32, 32), 3, {"train": 72, "val": 18, "test": 27}),
    "nlvr": (NLVR2JSON, (2, 3, 32, 32), 2, {"train": 24, "val": 8, "test": 10}),
}


@pytest.mark.parametrize("task", sorted(TASK_CASES))
def test_config_builds_task_datasets(task, synthetic_root, tmp_path):
    cls, _, n_cls, sizes = TASK_CASES[task]
    cfg = _task_cfg(task, synthetic_root, tmp_path)
    prepare_synthetic(cfg)
    task_dir = os.path.join(synthetic_root, task)
    for split in ("train", "val", "test"):
        assert os.path.isfile(os.path.join(task_dir, f"{split}.json"))
        ds = build_dataset(cfg, split)
        assert type(ds) is cls and ds.is_train == (split == "train")
        assert isinstance(ds.transform, TrainTransform if split == "train" else EvalTransform)
        with open(os.path.join(task_dir, f"{split}.json")) as f:
            anns = json.load(f)
        assert len(ds) == len(anns) == sizes[split]
        # the records follow the JSON file, with the official label mapping
        assert [r["label"] for r in ds.records] == [cls.LABELS[a["label"]] for a in anns]
        assert sorted({r["label"] for r in ds.records}) == list(range(n_cls))
        if task == "ve":
            assert ds.records[0]["images"] == [os.path.join(task_dir, "images", anns[0]["image"] + ".jpg")]
        else:
            assert ds.records[0]["images"] == [os.path.join(task_dir, p) for p in anns[0]["images"]]
        if split != "train":
            s = ds[1]
            assert s["sentence"] == pre_caption(anns[1]["sentence"]) and s["skipped"] == []
    with pytest.raises(ValueError, match="bogus"):
        build_dataset(cfg, "bogus")
    assert build_dataset(_task_cfg(task, synthetic_root, tmp_path, "data.val=null"), "val") is None


@pytest.mark.parametrize("task", sorted(TASK_CASES))
def test_config_train_and_test_loaders(task, synthetic_root, tmp_path, tokenizer):
    cls, dims, n_cls, sizes = TASK_CASES[task]
    cfg = _task_cfg(task, synthetic_root, tmp_path)
    prepare_synthetic(cfg)
    train = build_dataset(cfg, "train")
    col = build_collator(cfg, train, tokenizer)
    assert col.text_field == "sentence" and build_collator(cfg, Subset(train, [0, 1]), tokenizer).text_field == "sentence"

    loader = build_train_loader(cfg, train, tokenizer)
    assert loader.drop_last and loader.batch_size == cfg.train.batch_size == 8
    it = iter(loader)
    for _ in range(4):  # more than one epoch of nlvr (24 entries)
        b = next(it)
        assert set(b) == {"image", "input_ids", "attention_mask", "label", "index", "skipped"}
        assert b["image"].shape == (8, *dims)
        assert b["input_ids"].shape[0] == 8 and b["input_ids"].shape[1] <= cfg.data.max_tokens
        assert b["attention_mask"].shape == b["input_ids"].shape
        assert b["label"].dtype == torch.int64 and b["label"].tolist() == [train.records[i]["label"] for i in b["index"].tolist()]
        assert 0 <= int(b["label"].min()) and int(b["label"].max()) < n_cls
        assert b["skipped"] == []

    test = build_dataset(cfg, "test")
    batches = list(build_test_loader(cfg, test, tokenizer, batch_size=4))
    assert [len(b["index"]) for b in batches][:-1] == [4] * (len(batches) - 1)  # nothing dropped, last one short
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(sizes["test"]))
    assert torch.cat([b["label"] for b in batches]).tolist() == [r["label"] for r in test.records]
    assert batches[0]["image"].shape == (4, *dims)
    ref = tokenize(tokenizer, [test[i]["sentence"] for i in range(4)], cfg.data.max_tokens)
    assert torch.equal(batches[0]["input_ids"], ref["input_ids"])


def test_config_synthetic_task_errors(synthetic_root, tmp_path):
    cfg = _task_cfg("ve", synthetic_root, tmp_path, "data.synthetic_task.num_trian=3")
    with pytest.raises(ComponentError) as ei:
        prepare_synthetic(cfg)
    assert "num_trian" in str(ei.value) and "num_train" in str(ei.value)
    cfg = _task_cfg("ve", synthetic_root, tmp_path, f"data.synthetic_task.root={tmp_path}")
    with pytest.raises(ComponentError, match="root"):
        prepare_synthetic(cfg)
    cfg = _task_cfg("ve", synthetic_root, tmp_path, "data.synthetic_task.task=captioning")
    with pytest.raises(DataError, match="captioning"):
        prepare_synthetic(cfg)
    cfg = _task_cfg("nlvr", synthetic_root, tmp_path)
    cfg.data.synthetic = None
    with pytest.raises(ComponentError) as ei:
        prepare_synthetic(cfg)
    assert "data.synthetic_task" in str(ei.value) and "data.synthetic" in str(ei.value)


# --------------------------------------------------------------------------- a dataset's own sampler
class _ListSampler(Sampler):
    def __init__(self, order):
        self.order = list(order)

    def __iter__(self):
        return iter(self.order)

    def __len__(self):
        return len(self.order)


class _OwnSamplerDataset(Dataset):
    text_field = "sentence"

    def __init__(self):
        self.calls = []

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return {"image": torch.full((3, 4, 4), float(i)), "sentence": f"item {i}", "label": i % 2, "index": i, "skipped": []}

    def build_sampler(self, seed, rank, world_size, start):
        self.calls.append(dict(seed=seed, rank=rank, world_size=world_size, start=start))
        return _ListSampler([5, 4, 3, 2, 1, 0, 5, 4, 3, 2])


def test_dataset_with_own_sampler(tiny_cfg, tokenizer, monkeypatch):
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    cfg = tiny_cfg("train.batch_size=4", "train.seed=7")
    ds = _OwnSamplerDataset()
    loader = build_train_loader(cfg, ds, tokenizer, start_iter=3)
    assert ds.calls == [dict(seed=7, rank=1, world_size=2, start=3 * 4 * 2)]
    assert isinstance(loader.sampler, _ListSampler)
    batches = list(loader)  # 10 indices, batch 4, drop_last: two batches
    assert [b["index"].tolist() for b in batches] == [[5, 4, 3, 2], [1, 0, 5, 4]]
    assert batches[0]["image"].shape == (4, 3, 4, 4) and "input_ids" in batches[0]

    # without build_sampler: an InfiniteSampler resumed at the same position
    plain = Subset(ds, range(6))
    s = build_train_sampler(cfg, plain, start_iter=3)
    assert isinstance(s, InfiniteSampler)
    assert (s.size, s.seed, s.rank, s.world_size, s.start) == (6, 7, 1, 2, 24)


def test_loader_classes_take_objects_not_the_config(tiny_cfg, tokenizer):
    """The builder makes the collator and the sampler; a loader class is built from them
    directly, with plain arguments, and gives the batches the config path gives."""
    from albef.data.loaders import MapStyleLoader

    cfg = tiny_cfg("train.batch_size=4", "train.seed=3", "data.num_workers=0")
    ds = _OwnSamplerDataset()
    via_cfg = [b["index"].tolist() for b in build_train_loader(cfg, ds, tokenizer, start_iter=1)]
    direct = MapStyleLoader(ds, collate_fn=build_collator(cfg, ds, tokenizer), sampler=build_train_sampler(cfg, ds, start_iter=1),
                            batch_size=4, seed=3)
    assert [b["index"].tolist() for b in direct] == via_cfg == [[5, 4, 3, 2], [1, 0, 5, 4]]
    assert ds.calls[-1] == dict(seed=3, rank=0, world_size=1, start=4)
    with pytest.raises(ValueError, match="MapStyleLoader needs a map-style dataset.*StreamingLoader"):
        MapStyleLoader(ds, collate_fn=build_collator(cfg, ds, tokenizer), sampler=None, batch_size=4)
