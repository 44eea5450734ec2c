"""tools/make_shards.py and albef/data/shards.py: which entries are written and skipped (and
why), the sample format read back with webdataset, image ids equal to PretrainJSON's, resize,
worker-count independence, argument errors and the command line."""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO

# entry -> why it is left out; every other entry is written
SKIPS = {2: "file not found", 4: "unreadable image", 6: "unreadable image", 7: "empty caption", 9: "empty caption"}
GOOD = [0, 1, 3, 5, 8, 10, 11, 12, 13, 14, 15]
# PretrainJSON's ids, worked out by hand: by image_id, else by path, over the entries with a
# caption, bad images included (2 -> id 2, 4 -> 4, 6 -> 5); 7 and 9 get none
IDS = {0: 0, 1: 1, 3: 3, 5: 1, 8: 6, 10: 7, 11: 0, 12: 8, 13: 9, 14: 10, 15: 11}
EXT = {0: "jpg", 1: "png", 3: "jpg", 5: "png", 8: "jpg", 10: "jpg", 11: "jpg", 12: "png", 13: "jpg", 14: "png", 15: "png"}
TRANSFORMS = {"image_res": 8, "crop_scale": None, "hflip_prob": 0.0, "randaugment": None, "mean": [0.5] * 3, "std": [0.5] * 3}


def _save(path, size, colour, fmt):
    Image.new("RGB", size, colour).save(path, format=fmt)


@pytest.fixture()
def data(tmp_path):
    """(image_root, annotation file, entries): 10 good images and a missing, a corrupt and a
    truncated one; string and list captions, shared image ids, empty captions."""
    root = tmp_path / "images"
    root.mkdir()
    _save(root / "g0.jpg", (20, 16), (200, 0, 0), "JPEG")
    _save(root / "g1.png", (20, 16), (0, 200, 0), "PNG")
    _save(root / "g2.jpeg", (16, 24), (0, 0, 200), "JPEG")  # portrait
    _save(root / "g3.png", (24, 16), (200, 200, 0), "PNG")
    _save(root / "g4.jpg", (20, 16), (0, 200, 200), "JPEG")
    _save(root / "g5.png", (20, 16), (200, 0, 200), "PNG")
    _save(root / "g6.jpg", (32, 16), (90, 90, 90), "JPEG")
    _save(root / "g7.png", (6, 7), (10, 20, 30), "PNG")  # smaller than any resize below: never upsampled
    _save(root / "G8.JPG", (20, 16), (250, 250, 250), "JPEG")  # upper-case extension
    _save(root / "g9", (16, 20), (5, 5, 5), "PNG")  # no extension: the format decides
    rng = random.Random(0)
    (root / "corrupt.jpg").write_bytes(rng.randbytes(400))
    buf = io.BytesIO()
    Image.frombytes("RGB", (32, 32), rng.randbytes(32 * 32 * 3)).save(buf, format="PNG")  # noise: a long IDAT to cut
    (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    anns = [
        {"image": "g0.jpg", "caption": "A red square."},
        {"image": "g1.png", "caption": ["two", "Captions, here!"], "image_id": "scene-a"},
        {"image": "missing.jpg", "caption": "gone"},
        {"image": "g2.jpeg", "caption": "a portrait"},
        {"image": "corrupt.jpg", "caption": "noise"},
        {"image": "g3.png", "caption": ["third"], "image_id": "scene-a"},
        {"image": "truncated.png", "caption": "half"},
        {"image": "g4.jpg", "caption": ""},
        {"image": "g4.jpg", "caption": "four again"},
        {"image": "g5.png", "caption": ["", "..."]},  # empty after pre_caption
        {"image": "g6.jpg", "caption": "wide", "image_id": 7},
        {"image": str(root / "g0.jpg"), "caption": "red again"},  # absolute path, same file as entry 0
        {"image": "g7.png", "caption": "tiny"},
        {"image": "G8.JPG", "caption": "upper case"},
        {"image": "g9", "caption": "no extension"},
        {"image": "g1.png", "caption": "one more", "image_id": 1},
    ]
    ann = str(tmp_path / "ann.json")
    with open(ann, "w") as f:
        json.dump(anns, f)
    return str(root), ann, anns


def _samples(urls):
    import webdataset as wds

    return list(wds.WebDataset(urls, shardshuffle=False))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_shards_hold_the_good_entries_in_order_with_pretrain_json_ids(data, tmp_path):
    from albef.data.datasets.pretrain_json import PretrainJSON
    from albef.data.shards import make_shards, read_index, shard_urls

    root, ann, anns = data
    out = str(tmp_path / "out")
    idx = make_shards([ann], root, out, shard_size=3, progress=False)
    assert [s["num_samples"] for s in idx["shards"]] == [3, 3, 3, 2]  # ceil(11 / 3) shards
    assert [s["url"] for s in idx["shards"]] == [f"shard-{k:06d}.tar" for k in range(4)]
    assert (idx["num_samples"], idx["num_skipped"], idx["num_image_ids"]) == (11, 5, 12)
    assert (idx["format"], idx["ann_files"], idx["image_root"], idx["caption_key"], idx["resize"]) == \
        ("albef-webdataset-v1", [ann], root, "caption", None)
    assert read_index(out) == idx == read_index(os.path.join(out, "index.json"))
    assert sorted(os.listdir(out)) == ["index.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "shard-000003.tar",
                                       "skipped.txt"]  # no temporary files left

    lines = [line.split("\t") for line in _read(os.path.join(out, "skipped.txt")).decode().splitlines()]
    assert [l[0] for l in lines] == [f"{ann}:{i}" for i in sorted(SKIPS)]
    for (source, path, reason), i in zip(lines, sorted(SKIPS)):
        assert path == os.path.join(root, anns[i]["image"]) and reason.startswith(SKIPS[i]), (i, reason)
    assert "truncated" in lines[2][2]  # the truncated PNG is reported as such

    urls = shard_urls(idx, out)
    assert urls == [os.path.join(os.path.abspath(out), s["url"]) for s in idx["shards"]] and all(map(os.path.isfile, urls))
    samples = _samples(urls)
    assert [s["__key__"] for s in samples] == [f"{n:09d}" for n in range(11)]
    ds = PretrainJSON(ann_files=[ann], image_root=root, transforms=TRANSFORMS)
    json_entries = [i for i in range(len(anns)) if SKIPS.get(i) != "empty caption"]  # PretrainJSON keeps bad images
    assert len(ds.image_id) == len(json_entries)
    for s, i in zip(samples, GOOD):
        a = anns[i]
        assert {k for k in s if not k.startswith("__")} == {EXT[i], "json"}, (i, sorted(s))
        assert s[EXT[i]] == _read(os.path.join(root, a["image"]))  # original bytes
        meta = json.loads(s["json"].decode("utf-8"))
        caps = a["caption"] if isinstance(a["caption"], list) else [a["caption"]]
        assert meta == {"captions": caps, "image_id": IDS[i], "image": a["image"], "source": f"{ann}:{i}"}
        assert meta["image_id"] == ds.image_id[json_entries.index(i)]


def test_resize_keeps_aspect_and_any_worker_count_writes_the_same_bytes(data, tmp_path):
    from albef.data.shards import make_shards, shard_urls

    root, ann, anns = data
    r1 = make_shards([ann], root, str(tmp_path / "w1"), shard_size=4, resize=8, progress=False)
    r2 = make_shards([ann], root, str(tmp_path / "w2"), shard_size=4, resize=8, workers=2, progress=False)
    assert r1["resize"] == 8 and r1["shards"] == r2["shards"] and [s["num_samples"] for s in r1["shards"]] == [4, 4, 3]
    u1, u2 = shard_urls(r1, str(tmp_path / "w1")), shard_urls(r2, str(tmp_path / "w2"))
    sha = lambda p: hashlib.sha256(_read(p)).hexdigest()  # noqa: E731
    assert [sha(u) for u in u1] == [sha(u) for u in u2]  # fixed member mtimes: whole files compare
    for name in ("skipped.txt",):
        assert _read(str(tmp_path / "w1" / name)) == _read(str(tmp_path / "w2" / name))
    expected = {0: (10, 8), 1: (10, 8), 3: (8, 12), 5: (12, 8), 8: (10, 8), 10: (16, 8), 11: (10, 8), 12: (6, 7), 13: (10, 8),
                14: (8, 10), 15: (10, 8)}
    for s, i in zip(_samples(u1), GOOD):
        img = Image.open(io.BytesIO(s[EXT[i]]))
        assert img.size == expected[i], (i, img.size)
        original = Image.open(os.path.join(root, anns[i]["image"]))
        assert img.format == original.format  # re-encoded in its own format
        if i == 12:
            assert s[EXT[i]] == _read(os.path.join(root, anns[i]["image"]))  # small enough: untouched
    # workers=1 without resize matches workers=2 too
    a = make_shards([ann], root, str(tmp_path / "p1"), shard_size=5, progress=False)
    b = make_shards([ann], root, str(tmp_path / "p2"), shard_size=5, workers=2, progress=False)
    assert [sha(u) for u in shard_urls(a, str(tmp_path / "p1"))] == [sha(u) for u in shard_urls(b, str(tmp_path / "p2"))]


def test_bad_arguments_existing_sets_and_index_reading(data, tmp_path):
    from albef.data.files import DataError
    from albef.data.shards import make_shards, read_index

    root, ann, anns = data
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match="--shard-size"):
        make_shards([ann], root, out, shard_size=0, progress=False)
    with pytest.raises(ValueError, match="--resize"):
        make_shards([ann], root, out, resize=0, progress=False)
    with pytest.raises(DataError, match="nope.json"):
        make_shards([ann, str(tmp_path / "nope.json")], root, out, progress=False)
    assert not os.path.exists(os.path.join(out, "index.json"))

    make_shards([ann], root, out, shard_size=2, progress=False)
    with pytest.raises(DataError, match="index.json"):
        make_shards([ann], root, out, progress=False)
    assert len([f for f in os.listdir(out) if f.endswith(".tar")]) == 6  # untouched
    idx = make_shards([ann], root, out, shard_size=100, progress=False, overwrite=True)
    assert sorted(f for f in os.listdir(out) if f.endswith(".tar")) == ["shard-000000.tar"] and idx["num_samples"] == 11

    # a list/dict image_id is an id like any other; another caption key
    other = str(tmp_path / "text.json")
    with open(other, "w") as f:
        json.dump([{"image": "g0.jpg", "text": "a", "image_id": [1, {"b": 2, "a": 1}]}, {"image": "g1.png", "text": "b"},
                   {"image": "g3.png", "text": "c", "image_id": [1, {"a": 1, "b": 2}]}], f)
    idx = make_shards([other], root, str(tmp_path / "text"), caption_key="text", prefix="cap", progress=False)
    assert idx["num_image_ids"] == 2 and idx["shards"] == [{"url": "cap-000000.tar", "num_samples": 3}]
    ids = [json.loads(s["json"])["image_id"] for s in _samples(os.path.join(tmp_path, "text", "cap-000000.tar"))]
    assert ids == [0, 1, 0]

    for bad, content in (("missing", None), ("invalid", "{"), ("wrong", json.dumps({"format": "other", "shards": []}))):
        d = tmp_path / bad
        d.mkdir()
        if content is not None:
            (d / "index.json").write_text(content)
        with pytest.raises(DataError, match=str(d / "index.json")):
            read_index(str(d))


@pytest.mark.slow
def test_command_line(data, tmp_path):
    root, ann, _ = data
    tool = os.path.join(REPO, "tools", "make_shards.py")
    out, missing = str(tmp_path / "cli"), str(tmp_path / "nope.json")
    base = [sys.executable, tool, "--image-root", root, "--shard-size", "4"]
    # both at once: each start imports torch (seconds), and the two are independent
    procs = [subprocess.Popen(base + ["--ann-files", a, "--out", o], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for a, o in ((ann, out), (missing, str(tmp_path / "other")))]
    (o, e), (o2, e2) = [p.communicate(timeout=120) for p in procs]
    assert procs[0].returncode == 0, e[-2000:]
    assert "wrote 11 samples" in o and "3 shard(s)" in o and "skipped 5" in o and os.path.join(out, "skipped.txt") in o
    assert json.loads(_read(os.path.join(out, "index.json")))["num_samples"] == 11
    assert procs[1].returncode == 2 and missing in e2 and "Traceback" not in e2
    assert not os.path.exists(tmp_path / "other" / "index.json")
    # a second run into the same directory, through the library function the tool calls (a third interpreter
    # start would double the time): the errors the tool prints name the index and the flag
    from albef.data.files import DataError
    from albef.data.shards import make_shards

    with pytest.raises(DataError) as ei:
        make_shards([ann], root, out, progress=False)
    assert os.path.join(out, "index.json") in str(ei.value) and "--overwrite" in str(ei.value)
    with pytest.raises(ValueError, match="--shard-size"):
        make_shards([ann], root, out, shard_size=0, progress=False, overwrite=True)
    assert os.path.exists(os.path.join(out, "index.json"))  # old set kept
