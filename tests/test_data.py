"""Tests of the data pipeline: caption preprocessing, transforms, sampler, JSON datasets,
tokenizer, collate function and tools/build_vocab.py."""
from __future__ import annotations

import itertools
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import write_json

from albef.data.datasets import DataError
from albef.data.datasets.pretrain_json import PretrainJSON
from albef.data.datasets.retrieval_eval import RetrievalEvalJSON
from albef.data.samplers import InfiniteSampler
from albef.data.text import pre_caption
from albef.data.collate import PretrainCollator
from albef.data.tokenization import TokenizerError, build_tokenizer, tokenize
from albef.data.transforms import OFFICIAL_AUGS, PairedHorizontalFlip, RandomAugment, TrainTransform
from albef.data.transforms import TestTransform as EvalTransform

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


# ---------------------------------------------------------------------- pre_caption


def _official_pre_caption(caption, max_words):
    """Verbatim copy of the official ALBEF dataset/utils.py:pre_caption."""
    caption = re.sub(
        r"([,.'!?\"()*#:;~])",
        '',
        caption.lower(),
    ).replace('-', ' ').replace('/', ' ').replace('<person>', 'person')

    caption = re.sub(
        r"\s{2,}",
        ' ',
        caption,
    )
    caption = caption.rstrip('\n')
    caption = caption.strip(' ')

    # truncate caption
    caption_words = caption.split(' ')
    if len(caption_words) > max_words:
        caption = ' '.join(caption_words[:max_words])

    return caption


PRE_CAPTION_CASES = [
    # (input, max_words, expected) -- expected outputs written by hand from the official rules
    ("A man's dog, running!!", 30, "a mans dog running"),
    ("Two-year-old boy/girl", 30, "two year old boy girl"),
    ("<person> rides a horse.", 30, "person rides a horse"),
    ("<PERSON> waves", 30, "person waves"),  # lowercased first, then replaced
    ("  lots   of    spaces  ", 30, "lots of spaces"),
    ("line one\nline two\n", 30, "line one\nline two"),  # a single inner newline survives
    ("ends with newlines\n\n", 30, "ends with newlines"),  # the run becomes one space, then stripped
    ("\n leading newline", 30, "leading newline"),
    ("tab\there", 30, "tab\there"),
    ("(Hello) *world* #1: ~test; \"quoted\"?", 30, "hello world 1 test quoted"),
    ("a - b", 30, "a b"),
    ("A.B.C", 30, "abc"),
    ("hello&world [x] {y} <z>", 30, "hello&world [x] {y} <z>"),  # not in the official list
    ("it's 5 o'clock", 30, "its 5 oclock"),
    ("?!", 30, ""),
    ("one two three four five", 3, "one two three"),
    ("one two three", 3, "one two three"),
    ("a  b  c  d", 2, "a b"),  # truncation counts words after collapsing spaces
    ("x--y//z w", 2, "x y"),
    ("one\ntwo three four", 2, "one\ntwo three"),  # official: split on ' ' only
    ("Café Über-Cool", 30, "café über cool"),
]


@pytest.mark.parametrize("text,max_words,expected", PRE_CAPTION_CASES)
def test_pre_caption_hand_written(text, max_words, expected):
    assert pre_caption(text, max_words) == expected
    assert _official_pre_caption(text, max_words) == expected  # the hand-written value is the official one


def test_pre_caption_default_max_words_is_30():
    words = " ".join(f"w{i}" for i in range(40))
    assert pre_caption(words) == " ".join(f"w{i}" for i in range(30))


def test_pre_caption_matches_official_on_random_strings():
    rng = random.Random(0)
    alphabet = "aB -/<>person,.'!?\"()*#:;~\n\t xyz"
    for _ in range(500):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        if rng.random() < 0.3:
            s += " <person> "
        mw = rng.randint(1, 8)
        assert pre_caption(s, mw) == _official_pre_caption(s, mw), repr(s)


# ---------------------------------------------------------------------- transforms


def _asym_image(w=24, h=16, seed=0) -> Image.Image:
    arr = (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)
    return Image.fromarray(arr)


def test_paired_flip_swaps_words_and_mirrors():
    img = _asym_image()
    flip = PairedHorizontalFlip(1.0, {"left": "right", "right": "left"})
    out, cap = flip(img, "a red circle left of a blue square right here", random.Random(0))
    assert cap == "a red circle right of a blue square left here"  # simultaneous swap, not sequential
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img)[:, ::-1])
    assert not np.array_equal(np.asarray(out), np.asarray(img))


def test_paired_flip_whole_words_only():
    flip = PairedHorizontalFlip(1.0, {"left": "right", "right": "left"})
    _, cap = flip(_asym_image(), "leftover rights left", random.Random(0))
    assert cap == "leftover rights right"


def test_paired_flip_empty_map_keeps_caption():
    img = _asym_image()
    out, cap = PairedHorizontalFlip(1.0, {})(img, "a circle left of a square", random.Random(0))
    assert cap == "a circle left of a square"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img)[:, ::-1])
    out, cap = PairedHorizontalFlip(1.0, None)(img, "left", random.Random(0))
    assert cap == "left"


def test_paired_flip_prob_zero_and_rate():
    img = _asym_image()
    out, cap = PairedHorizontalFlip(0.0, {"left": "right"})(img, "left", random.Random(0))
    assert cap == "left" and out is img
    flip = PairedHorizontalFlip(0.5, {"left": "right"})
    rng = random.Random(1)
    flips = sum(flip(img, "left", rng)[1] == "right" for _ in range(400))
    assert 150 < flips < 250


def _train_transform(res=16, randaug=True, crop=(0.2, 1.0)):
    return TrainTransform(res, crop, {"num_ops": 2, "magnitude": 7} if randaug else None, MEAN, STD)


def test_train_transform_deterministic_per_seed():
    t = _train_transform()
    img = _asym_image(48, 40)
    a = t(img, random.Random(123))
    b = t(img, random.Random(123))
    assert a.shape == (3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b)
    others = [t(img, random.Random(s)) for s in range(124, 130)]
    assert any(not torch.equal(a, o) for o in others)


def test_train_transform_leaves_global_rng_alone():
    t = _train_transform()
    img = _asym_image(48, 40)
    random.seed(5)
    torch.manual_seed(5)
    np.random.seed(5)
    t(img, random.Random(0))
    assert random.random() == random.Random(5).random()
    g = torch.Generator().manual_seed(5)
    assert torch.equal(torch.rand(3), torch.rand(3, generator=g))


def test_transform_normalisation():
    grey = Image.new("RGB", (30, 20), (128, 64, 200))
    for t in (_train_transform(res=8, randaug=False, crop=None), EvalTransform(8, MEAN, STD)):
        out = t(grey, random.Random(0))
        assert out.shape == (3, 8, 8)
        for c, v in enumerate((128, 64, 200)):
            expect = (v / 255 - MEAN[c]) / STD[c]
            assert torch.allclose(out[c], torch.full((8, 8), expect), atol=1e-5)


def test_test_transform_resizes_without_crop():
    # a left half black / right half white image stays split in the middle after a plain resize
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, 20:] = 255
    out = EvalTransform(10, [0, 0, 0], [1, 1, 1])(Image.fromarray(arr))
    assert out.shape == (3, 10, 10)
    assert out[:, :, :4].max() < 0.05 and out[:, :, 6:].min() > 0.95


def test_random_augment_rejects_unknown_ops():
    with pytest.raises(ValueError) as ei:
        RandomAugment(2, 7, ["Identity", "Solarize", "Rotat"])
    msg = str(ei.value)
    assert "Solarize" in msg and "Rotat" in msg
    for op in OFFICIAL_AUGS:
        assert op in msg


def test_random_augment_each_op_runs():
    img = _asym_image(32, 32)
    for op in OFFICIAL_AUGS:
        out = RandomAugment(1, 7, [op])(img, random.Random(0))
        assert out.size == img.size and out.mode == "RGB"


def test_random_augment_changes_image():
    img = _asym_image(32, 32)
    ra = RandomAugment(2, 7, ["Rotate"])
    outs = [np.asarray(ra(img, random.Random(s))) for s in range(8)]
    assert any(not np.array_equal(o, np.asarray(img)) for o in outs)


# ---------------------------------------------------------------------- sampler


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_sampler_epochs_are_permutations():
    n = 7
    stream = _take(InfiniteSampler(n, seed=3), 4 * n)
    for e in range(4):
        chunk = stream[e * n : (e + 1) * n]
        assert all(ep == e for ep, _ in chunk)
        assert sorted(i for _, i in chunk) == list(range(n))
    perms = [tuple(i for _, i in stream[e * n : (e + 1) * n]) for e in range(4)]
    assert len(set(perms)) > 1  # reshuffled each epoch
    assert _take(InfiniteSampler(n, seed=3), 4 * n) == stream  # deterministic
    assert _take(InfiniteSampler(n, seed=4), 4 * n) != stream


def test_sampler_no_shuffle():
    assert [i for _, i in _take(InfiniteSampler(3, shuffle=False), 7)] == [0, 1, 2, 0, 1, 2, 0]


@pytest.mark.parametrize("world", [2, 3])
def test_sampler_ranks_interleave_to_global_stream(world):
    n = 10
    glob = _take(InfiniteSampler(n, seed=1), 6 * world * 5)
    per_rank = [_take(InfiniteSampler(n, seed=1, rank=r, world_size=world), 30) for r in range(world)]
    merged = [per_rank[j % world][j // world] for j in range(30 * world)]
    assert merged == glob[: 30 * world]
    # disjoint and complete within an epoch
    first_epoch = [x for r in per_rank for x in r if x[0] == 0]
    assert sorted(i for _, i in first_epoch) == list(range(n))


@pytest.mark.parametrize("k", [0, 1, 9, 10, 23])
def test_sampler_start_skips(k):
    n = 10
    glob = _take(InfiniteSampler(n, seed=2), 60)
    assert _take(InfiniteSampler(n, seed=2, start=k), 60 - k) == glob[k:]
    # and per rank with a resume position
    r0 = _take(InfiniteSampler(n, seed=2, rank=0, world_size=2, start=k), 15)
    r1 = _take(InfiniteSampler(n, seed=2, rank=1, world_size=2, start=k), 15)
    assert [x for pair in zip(r0, r1) for x in pair] == glob[k : k + 30]


def test_sampler_rejects_empty():
    with pytest.raises(ValueError):
        InfiniteSampler(0)


# ---------------------------------------------------------------------- PretrainJSON

TRANSFORMS = {
    "image_res": 16, "crop_scale": [0.5, 1.0], "hflip_prob": 0.5, "hflip_swap_words": {},
    "randaugment": {"num_ops": 2, "magnitude": 7}, "mean": MEAN, "std": STD,
}


@pytest.fixture()
def image_dir(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for name, seed in (("a.jpg", 0), ("b.jpg", 1), ("c.jpg", 2)):
        _asym_image(40, 32, seed).save(d / name, quality=95)
    raw = (d / "a.jpg").read_bytes()
    (d / "trunc.jpg").write_bytes(raw[: len(raw) // 2])
    (d / "notimg.jpg").write_text("this is not an image\n")
    return d



def _pretrain_anns():
    return [
        {"image": "a.jpg", "caption": "A red square."},  # 0
        {"image": "missing.jpg", "caption": "gone"},  # 1
        {"image": "trunc.jpg", "caption": "half a file"},  # 2
        {"image": "notimg.jpg", "caption": "text file"},  # 3
        {"image": "b.jpg", "caption": ["a blue circle", "a blue disc"]},  # 4
        {"image": "c.jpg", "caption": "?!"},  # 5: empty after pre_caption
        {"image": "a.jpg", "caption": "the same red square"},  # 6: same image as entry 0
    ]


def test_pretrain_json_skips_bad_images(tmp_path, image_dir):
    ann = write_json(tmp_path / "pairs.json", _pretrain_anns())
    ds = PretrainJSON([ann], image_root=str(image_dir), transforms=TRANSFORMS, seed=0)
    assert len(ds) == 6  # the empty-caption entry is dropped at load
    assert ds.load_report == [(f"{ann}:5", "empty caption")]
    assert str(image_dir / "c.jpg") not in ds.paths

    s = ds[0]
    assert s["caption"] == "a red square" and s["skipped"] == []
    assert s["image"].shape == (3, 16, 16)

    s = ds[1]  # missing -> truncated -> not an image -> b.jpg
    assert s["caption"] in ("a blue circle", "a blue disc")
    assert s["image_id"] == ds.image_id[4]
    paths = [p for p, _ in s["skipped"]]
    assert paths == [str(image_dir / n) for n in ("missing.jpg", "trunc.jpg", "notimg.jpg")]
    reasons = dict(s["skipped"])
    assert "not found" in reasons[str(image_dir / "missing.jpg")]
    assert "truncated" in reasons[str(image_dir / "trunc.jpg")]
    assert "unreadable image (not a recognised image format" in reasons[str(image_dir / "notimg.jpg")]

    s = ds[3]
    assert [p for p, _ in s["skipped"]] == [str(image_dir / "notimg.jpg")]
    assert s["image_id"] == ds.image_id[4]


def test_pretrain_json_image_ids(tmp_path, image_dir):
    ann = write_json(tmp_path / "pairs.json", _pretrain_anns())
    ds = PretrainJSON([ann], image_root=str(image_dir), transforms=TRANSFORMS)
    ids = ds.image_id
    assert ids[0] == ids[5]  # entries 0 and 6 of the file: same image a.jpg
    assert len(set(ids)) == 5
    assert ds.has_image_ids
    assert ds[5]["image_id"] == ds[0]["image_id"]
    ds2 = PretrainJSON([ann], image_root=str(image_dir), transforms=TRANSFORMS, image_ids=False)
    assert ds2.image_id == list(range(6))


def test_pretrain_json_ids_across_files(tmp_path, image_dir):
    a = write_json(tmp_path / "one.json", [{"image": "a.jpg", "caption": "x"}, {"image": "b.jpg", "caption": "y"}])
    b = write_json(tmp_path / "two.json", [{"image": "b.jpg", "caption": "z"}, {"image": str(image_dir / "a.jpg"), "caption": "w"}])
    ds = PretrainJSON([a, b], image_root=str(image_dir), transforms=TRANSFORMS)
    assert ds.image_id == [0, 1, 1, 0]  # a relative and an absolute path to the same file share an id


def test_pretrain_json_deterministic_access(tmp_path, image_dir):
    ann = write_json(tmp_path / "pairs.json", _pretrain_anns())
    ds = PretrainJSON([ann], image_root=str(image_dir), transforms=TRANSFORMS, seed=7)
    a, b = ds[(2, 4)], ds[(2, 4)]
    assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]
    assert torch.equal(ds[4]["image"], ds[(0, 4)]["image"])
    diff = [ds[(e, 4)]["image"] for e in range(3, 9)]
    assert any(not torch.equal(a["image"], d) for d in diff)


def test_pretrain_json_flip_swaps_caption(tmp_path, image_dir):
    ann = write_json(tmp_path / "p.json", [{"image": "a.jpg", "caption": "a red square left of a blue circle"}])
    t = dict(TRANSFORMS, hflip_prob=1.0, hflip_swap_words={"left": "right", "right": "left"})
    ds = PretrainJSON([ann], image_root=str(image_dir), transforms=t)
    assert ds[0]["caption"] == "a red square right of a blue circle"
    t0 = dict(t, hflip_prob=0.0)
    assert PretrainJSON([ann], image_root=str(image_dir), transforms=t0)[0]["caption"] == "a red square left of a blue circle"


@pytest.mark.parametrize("index,bad", [(1, "missing.jpg"), (2, "trunc.jpg"), (3, "notimg.jpg")])
def test_pretrain_json_strict_bad_image(tmp_path, image_dir, index, bad):
    anns = [a for i, a in enumerate(_pretrain_anns()) if i != 5]
    ann = write_json(tmp_path / "pairs.json", anns)
    ds = PretrainJSON([ann], image_root=str(image_dir), transforms=TRANSFORMS, strict=True)
    assert ds[0]["skipped"] == []
    with pytest.raises(DataError) as ei:
        ds[index]
    assert str(image_dir / bad) in str(ei.value)


def test_pretrain_json_strict_empty_caption(tmp_path, image_dir):
    ann = write_json(tmp_path / "pairs.json", _pretrain_anns())
    with pytest.raises(DataError) as ei:
        PretrainJSON([ann], image_root=str(image_dir), transforms=TRANSFORMS, strict=True)
    msg = str(ei.value)
    assert ann in msg and "entry 5" in msg and "c.jpg" in msg and "empty caption" in msg


def test_pretrain_json_missing_image_key(tmp_path, image_dir):
    ann = write_json(tmp_path / "pairs.json", [{"image": "a.jpg", "caption": "x"}, {"file": "b.jpg", "caption": "y"}])
    with pytest.raises(DataError) as ei:
        PretrainJSON([ann], image_root=str(image_dir), transforms=TRANSFORMS)
    msg = str(ei.value)
    assert ann in msg and "entry 1" in msg and "'image'" in msg


def test_pretrain_json_missing_or_bad_caption(tmp_path, image_dir):
    ann = write_json(tmp_path / "p.json", [{"image": "a.jpg"}])
    with pytest.raises(DataError) as ei:
        PretrainJSON([ann], image_root=str(image_dir), transforms=TRANSFORMS)
    assert ann in str(ei.value) and "caption" in str(ei.value)
    ann = write_json(tmp_path / "q.json", [{"image": "a.jpg", "caption": 5}])
    with pytest.raises(DataError) as ei:
        PretrainJSON([ann], image_root=str(image_dir), transforms=TRANSFORMS)
    assert ann in str(ei.value)


def test_pretrain_json_bad_files(tmp_path, image_dir):
    with pytest.raises(DataError, match="empty"):
        PretrainJSON([], transforms=TRANSFORMS)
    nofile = str(tmp_path / "nofile.json")
    with pytest.raises(DataError) as ei:
        PretrainJSON([nofile], transforms=TRANSFORMS)
    assert nofile in str(ei.value)
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(DataError) as ei:
        PretrainJSON([str(bad)], transforms=TRANSFORMS)
    assert str(bad) in str(ei.value)
    notlist = write_json(tmp_path / "d.json", {"image": "a.jpg", "caption": "x"})
    with pytest.raises(DataError) as ei:
        PretrainJSON([notlist], transforms=TRANSFORMS)
    assert notlist in str(ei.value) and "list" in str(ei.value)
    empty = write_json(tmp_path / "e.json", [{"image": "a.jpg", "caption": "!!"}])
    with pytest.raises(DataError, match="no usable"):
        PretrainJSON([empty], transforms=TRANSFORMS)


def test_pretrain_json_all_images_bad(tmp_path, image_dir):
    ann = write_json(tmp_path / "p.json", [{"image": "missing.jpg", "caption": "x"}, {"image": "notimg.jpg", "caption": "y"}])
    ds = PretrainJSON([ann], image_root=str(image_dir), transforms=TRANSFORMS)
    with pytest.raises(DataError) as ei:
        ds[0]
    assert "missing.jpg" in str(ei.value) and "notimg.jpg" in str(ei.value)


def test_pretrain_json_single_ann_file_string(tmp_path, image_dir):
    ann = write_json(tmp_path / "p.json", [{"image": "a.jpg", "caption": "x"}])
    assert len(PretrainJSON(ann, image_root=str(image_dir), transforms=TRANSFORMS)) == 1


# ---------------------------------------------------------------------- RetrievalEvalJSON


def test_retrieval_eval_json_gt(tmp_path, image_dir):
    anns = [
        {"image": "a.jpg", "caption": ["First, caption!", "second caption"]},
        {"image": "b.jpg", "caption": "only one"},
        {"image": "c.jpg", "caption": ["x-ray", "y", "Z."]},
    ]
    ann = write_json(tmp_path / "test.json", anns)
    ds = RetrievalEvalJSON(ann, image_root=str(image_dir), transforms={"image_res": 8, "mean": MEAN, "std": STD})
    assert len(ds) == 3
    assert ds.text == ["first caption", "second caption", "only one", "x ray", "y", "z"]
    assert list(ds.txt2img) == [0, 0, 1, 2, 2, 2]
    assert [list(x) for x in ds.img2txt] == [[0, 1], [2], [3, 4, 5]]
    s = ds[2]
    assert s["index"] == 2 and s["image"].shape == (3, 8, 8) and s["skipped"] == []


def test_retrieval_eval_json_bad_image(tmp_path, image_dir):
    ann = write_json(tmp_path / "test.json", [{"image": "a.jpg", "caption": ["x"]}, {"image": "trunc.jpg", "caption": ["y"]}])
    t = {"image_res": 8, "mean": MEAN, "std": STD}
    ds = RetrievalEvalJSON(ann, image_root=str(image_dir), transforms=t)
    s = ds[1]
    assert torch.equal(s["image"], torch.zeros(3, 8, 8))
    assert s["skipped"][0][0] == str(image_dir / "trunc.jpg")
    strict = RetrievalEvalJSON(ann, image_root=str(image_dir), transforms=t, strict=True)
    with pytest.raises(DataError) as ei:
        strict[1]
    assert str(image_dir / "trunc.jpg") in str(ei.value)


def test_retrieval_eval_json_missing_image_key(tmp_path):
    ann = write_json(tmp_path / "test.json", [{"caption": ["x"]}])
    with pytest.raises(DataError) as ei:
        RetrievalEvalJSON(ann, transforms={"image_res": 8, "mean": MEAN, "std": STD})
    assert ann in str(ei.value) and "entry 0" in str(ei.value)


# ---------------------------------------------------------------------- tokenizer and collate

WORDS = ["a", "red", "blue", "square", "circle", "left", "right", "of", "big", "small"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture()
def vocab_file(tmp_path):
    p = tmp_path / "vocab.txt"
    p.write_text("\n".join(SPECIALS + WORDS) + "\n")
    return str(p)


def test_build_tokenizer_from_vocab(vocab_file):
    tok = build_tokenizer(vocab_file)
    assert len(tok) == len(SPECIALS) + len(WORDS)
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 1, 2, 3, 4)
    ids = tok("A Red square")["input_ids"]
    assert ids[0] == 2 and ids[1:4] == [5, 6, 8]  # lower-cased, word ids follow the file order
    assert tok("zebra")["input_ids"][1] == 1


def test_build_tokenizer_bad_path(tmp_path):
    with pytest.raises(TokenizerError) as ei:
        build_tokenizer(str(tmp_path / "no_such_dir" / "vocab"))
    assert "tools/build_vocab.py" in str(ei.value)
    assert "no_such_dir" in str(ei.value)


@pytest.mark.parametrize("value", ["{tmp}/vocab.txt", "{tmp}/no_such_dir", "./no_such_dir/vocab", "a/b/vocab", "vocab.json"])
def test_build_tokenizer_missing_path_says_not_found(tmp_path, value, monkeypatch):
    import transformers

    def hub(*a, **k):
        raise AssertionError("a path must not be looked up on the hub")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", hub)
    value = value.format(tmp=tmp_path)
    with pytest.raises(TokenizerError) as ei:
        build_tokenizer(value)
    msg = str(ei.value)
    assert value in msg and "does not exist" in msg and "Repo id" not in msg, msg


@pytest.mark.parametrize("value", ["bert-base-uncased", "google-bert/bert-base-uncased"])
def test_build_tokenizer_hub_names_still_go_to_transformers(value, monkeypatch):
    import transformers

    calls = []
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda name, *a, **k: calls.append(name) or "tok")
    assert build_tokenizer(value) == "tok" and calls == [value]


def test_build_tokenizer_wrong_file(tmp_path):
    p = tmp_path / "vocab.json"
    p.write_text("{}")
    with pytest.raises(TokenizerError, match="vocab.txt"):
        build_tokenizer(str(p))


def test_build_tokenizer_vocab_without_specials(tmp_path):
    q = tmp_path / "vocab.txt"
    q.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "a"]) + "\n")
    with pytest.raises(TokenizerError) as ei:
        build_tokenizer(str(q))
    assert "[SEP]" in str(ei.value) and "[MASK]" in str(ei.value)


def test_pretrain_collator(vocab_file):
    tok = build_tokenizer(vocab_file)
    samples = [
        {"image": torch.full((3, 4, 4), float(i)), "caption": c, "image_id": 10 + i, "skipped": sk}
        for i, (c, sk) in enumerate([("a red square", []), ("a big blue circle left of a small red square", [("x.jpg", "r")]), ("blue", [])])
    ]
    batch = PretrainCollator(tok, max_tokens=8)(samples)
    assert set(batch) == {"image", "input_ids", "attention_mask", "image_id", "skipped"}
    assert batch["image"].shape == (3, 3, 4, 4) and torch.equal(batch["image"][:, 0, 0, 0], torch.tensor([0.0, 1.0, 2.0]))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (3, 8)  # padded to the longest, truncated to max_tokens
    assert mask.sum(1).tolist() == [5, 8, 3]  # [CLS] words [SEP], truncated to 8
    assert (ids[:, 0] == tok.cls_token_id).all()
    assert (ids[mask == 0] == tok.pad_token_id).all()
    assert ids[0].tolist() == [2, 5, 6, 8, 3, 0, 0, 0]
    assert batch["image_id"].dtype == torch.long and batch["image_id"].tolist() == [10, 11, 12]
    assert batch["skipped"] == [("x.jpg", "r")]
    # padding is "longest", not max_length
    short = PretrainCollator(tok, max_tokens=30, with_image_ids=False)([samples[0], samples[2]])
    assert short["input_ids"].shape == (2, 5) and "image_id" not in short


def test_tokenize_pad_to_max(vocab_file):
    tok = build_tokenizer(vocab_file)
    enc = tokenize(tok, ["a", "red square"], 6, pad_to_max=True)
    assert enc["input_ids"].shape == (2, 6) and enc["attention_mask"].sum(1).tolist() == [3, 4]


# ---------------------------------------------------------------------- tools/build_vocab.py

BUILD_VOCAB = os.path.join(REPO, "tools", "build_vocab.py")


def _run_build_vocab(*args):
    return subprocess.run([sys.executable, BUILD_VOCAB, *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.slow
def test_build_vocab_tool(tmp_path):
    caps = ["A red square, left of a BLUE circle!", "two big <person> things", "a small-green triangle/below"]
    ann = write_json(tmp_path / "caps.json", [{"image": "x.jpg", "caption": caps[0]}, {"image": "y.jpg", "caption": caps[1:]}])
    out = tmp_path / "voc"
    r = _run_build_vocab("--ann-files", ann, "--out-dir", str(out), "--vocab-size", "200")
    assert r.returncode == 0, r.stderr
    vocab = out / "vocab.txt"
    assert vocab.exists() and str(vocab) in r.stdout
    lines = vocab.read_text().splitlines()
    assert lines[:5] == SPECIALS
    tok = build_tokenizer(str(vocab))
    assert len(tok) == len(lines)
    for c in caps:
        ids = tok(pre_caption(c))["input_ids"]
        assert tok.unk_token_id not in ids, (c, tok.convert_ids_to_tokens(ids))
    assert "person" in tok.tokenize(pre_caption(caps[1]))  # preprocessed like training captions


@pytest.mark.slow
def test_build_vocab_tool_missing_file(tmp_path):
    missing = str(tmp_path / "nope.json")
    r = _run_build_vocab("--ann-files", missing, "--out-dir", str(tmp_path / "o"))
    assert r.returncode == 2
    assert missing in r.stderr and "not found" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "vocab.txt").exists()


# The tool prints these errors of the library function as one line and exits 2 (its own
# command line is tested above, in a subprocess); here the function is called directly.
VOCAB_ERRORS = (DataError, ValueError, KeyError)


def test_build_vocab_tool_invalid_json(tmp_path):
    from albef.data.vocab import build_wordpiece_vocab

    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(VOCAB_ERRORS) as ei:
        build_wordpiece_vocab([str(bad)], str(tmp_path / "o"))
    assert str(bad) in str(ei.value)


@pytest.mark.parametrize("content", [{"image": "x.jpg", "caption": "a red square"}, [{"image": "x.jpg", "caption": 5}]])
def test_build_vocab_tool_malformed_json(tmp_path, content):
    from albef.data.vocab import build_wordpiece_vocab

    ann = write_json(tmp_path / "d.json", content)
    with pytest.raises(VOCAB_ERRORS) as ei:
        build_wordpiece_vocab([ann], str(tmp_path / "o"))
    assert ann in str(ei.value)
