"""WebDataset shards: tools/make_shards.py (bad files skipped and named, ids as the JSON
reader's, resize, worker-count independence), WebDatasetPretrain's split across ranks and
workers (every sample once per epoch), the StreamingLoader's exact resume, and a training
run on shards through the command line."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import pytest
import torch
from PIL import Image

from conftest import REPO, TINY, run_cli, write_json

TRANSFORMS = {"image_res": 8, "crop_scale": None, "hflip_prob": 0.0, "randaugment": None, "mean": [0.5] * 3, "std": [0.5] * 3}


def _images(tmp_path):
    """10 good images, and an annotation file with a missing, a corrupt and a truncated image
    and an empty caption among them."""
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(10):
        Image.new("RGB", (20 + i, 16), (20 * i, 100, 200 - 10 * i)).save(root / f"{i}.{'png' if i % 2 else 'jpg'}")
    (root / "corrupt.jpg").write_bytes(os.urandom(300))
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    anns = []
    for i in range(10):
        anns.append({"image": f"{i}.{'png' if i % 2 else 'jpg'}", "caption": [f"a shape {i}", f"another {i}"] if i % 3 == 0 else f"caption {i}"})
    anns[4]["image_id"] = "scene-a"
    anns[7]["image_id"] = "scene-a"
    anns.insert(2, {"image": "missing.jpg", "caption": "gone"})
    anns.insert(5, {"image": "corrupt.jpg", "caption": "noise"})
    anns.insert(8, {"image": "truncated.png", "caption": "half"})
    anns.insert(9, {"image": "3.png", "caption": ""})
    return str(root), write_json(tmp_path / "ann.json", anns), anns


def _read_tar(path):
    """key -> {ext: bytes} of a shard, in order."""
    out = {}
    with tarfile.open(path) as t:
        for m in t.getmembers():
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = t.extractfile(m).read()
    return out


def test_make_shards_skips_bad_files_and_keeps_the_json_readers_ids(tmp_path):
    from albef.data.datasets.pretrain_json import PretrainJSON
    from albef.data.shards import make_shards, read_index, shard_urls

    root, ann, anns = _images(tmp_path)
    out = str(tmp_path / "shards")
    idx = make_shards([ann], root, out, shard_size=3, progress=False)
    assert idx["num_samples"] == 10 and idx["num_skipped"] == 4 and [s["num_samples"] for s in idx["shards"]] == [3, 3, 3, 1]
    assert idx == read_index(out) and idx["num_image_ids"] == 9  # entries 4 and 7 share "scene-a"
    lines = open(os.path.join(out, "skipped.txt")).read().splitlines()
    reasons = {l.split("\t")[0]: l.split("\t")[2] for l in lines}
    assert reasons[f"{ann}:2"] == "file not found" and reasons[f"{ann}:9"] == "empty caption"
    assert reasons[f"{ann}:5"].startswith("unreadable image") and reasons[f"{ann}:8"].startswith("unreadable image")
    samples = {}
    for url in shard_urls(idx, out):
        samples.update(_read_tar(url))
    assert list(samples) == [f"{i:09d}" for i in range(10)]
    # the JSON reader keeps the bad-image entries (it skips them when read): map by entry
    ds = PretrainJSON(ann_files=[ann], image_root=root, transforms=TRANSFORMS)
    good = [i for i, a in enumerate(anns) if i not in (2, 5, 8, 9)]
    json_entry = [i for i, a in enumerate(anns) if i != 9]  # PretrainJSON drops only the empty caption
    for n, (key, s) in enumerate(samples.items()):
        entry = anns[good[n]]
        meta = json.loads(s["json"])
        ext = "png" if entry["image"].endswith("png") else "jpg"
        assert s[ext] == open(os.path.join(root, entry["image"]), "rb").read()  # original bytes
        caps = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
        assert meta["captions"] == caps and meta["source"] == f"{ann}:{good[n]}"
        assert meta["image_id"] == ds.image_id[json_entry.index(good[n])]
    # resized: shorter side 8, aspect kept; any worker count writes the same payloads
    r1 = make_shards([ann], root, str(tmp_path / "r1"), shard_size=4, resize=8, progress=False)
    r2 = make_shards([ann], root, str(tmp_path / "r2"), shard_size=4, resize=8, workers=2, progress=False)
    assert r1["shards"] == r2["shards"]
    for u1, u2 in zip(shard_urls(r1, str(tmp_path / "r1")), shard_urls(r2, str(tmp_path / "r2"))):
        t1, t2 = _read_tar(u1), _read_tar(u2)
        assert t1 == t2
        for s in t1.values():
            img = Image.open(io.BytesIO(s.get("png", s.get("jpg"))))
            assert min(img.size) == 8
    first = Image.open(io.BytesIO(_read_tar(shard_urls(r1, str(tmp_path / "r1"))[0])["000000000"]["jpg"]))
    assert first.size == (10, 8)  # 20x16 -> 10x8


def test_make_shards_cli(tmp_path):
    root, ann, _ = _images(tmp_path)
    out = str(tmp_path / "cli")
    cmd = [sys.executable, os.path.join(REPO, "tools", "make_shards.py"), "--ann-files", ann, "--image-root", root, "--out", out, "--shard-size", "4"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wrote 10 samples" in r.stdout and "skipped 4" in r.stdout
    r = subprocess.run(cmd[:3] + [str(tmp_path / "nope.json")] + cmd[4:-4] + ["--out", str(tmp_path / "other")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "nope.json" in r.stderr and not os.path.exists(tmp_path / "other" / "index.json")
    # a complete set is not overwritten by accident
    from albef.data.datasets.base import DataError
    from albef.data.shards import make_shards

    with pytest.raises(DataError, match="index.json exists.*--overwrite"):
        make_shards([ann], root, out, progress=False)
    assert make_shards([ann], root, out, shard_size=5, progress=False, overwrite=True)["num_samples"] == 10
    assert sorted(f for f in os.listdir(out) if f.endswith(".tar")) == ["shard-000000.tar", "shard-000001.tar"]


@pytest.fixture(scope="module")
def tiny_shards(synthetic_root, tmp_path_factory):
    """The tiny synthetic training set (48 pairs) as 8 shards of 6."""
    from albef.data.shards import make_shards

    out = str(tmp_path_factory.mktemp("tiny_shards"))
    make_shards([os.path.join(synthetic_root, "pretrain.json")], synthetic_root, out, shard_size=6, progress=False)
    return out


def _wds(tiny_shards, **kw):
    from albef.data.datasets.webdataset_pretrain import WebDatasetPretrain

    return WebDatasetPretrain(shards=tiny_shards, shuffle_buffer=kw.pop("shuffle_buffer", 5), transforms=TRANSFORMS, **kw)


def test_every_sample_once_per_epoch_across_2_ranks_x_2_workers(tiny_shards):
    from torch.utils.data import DataLoader

    seen = []
    for epoch_pass in range(2):  # two epochs: each covers the set once, in another order
        per_epoch = []
        for rank in (0, 1):
            ds = _wds(tiny_shards)
            ds.set_stream(rank, 2, 2, [epoch_pass * 12, epoch_pass * 12])  # each reader holds 2 shards = 12 samples
            it = iter(DataLoader(ds, batch_size=None, num_workers=2))
            per_epoch += [next(it)["sample_id"] for _ in range(24)]
        keys = sorted(s.split("#")[1] for s in per_epoch)
        assert keys == [f"{i:09d}" for i in range(48)], keys
        seen.append(per_epoch)
    assert seen[0] != seen[1]
    # fewer shards than readers is an error naming the counts and the way out
    ds = _wds(tiny_shards)
    ds.set_stream(0, 9, 0, [0])
    with pytest.raises(Exception, match=r"8 shard.*9 readers \(9 rank\(s\) x 1 worker.*--shard-size"):
        next(iter(DataLoader(ds, batch_size=None, num_workers=0)))


def test_streaming_loader_resumes_exactly(tiny_cfg, tokenizer, tiny_shards):
    from albef.data import build as data_build
    from albef.data.loaders import StreamingLoader

    cfg = tiny_cfg(f"data.train={{name: WebDatasetPretrain, shards: {tiny_shards}, shuffle_buffer: 7}}", "data.num_workers=2")
    ds = data_build.build_dataset(cfg, "train")
    assert ds.epoch_size == 48
    ref = data_build.build_train_loader(cfg, ds, tokenizer)
    assert isinstance(ref, StreamingLoader)
    it = iter(ref)
    batches = [next(it) for _ in range(9)]  # 72 samples: past the first epoch of each reader
    first = data_build.build_train_loader(cfg, ds, tokenizer)
    it = iter(first)
    for _ in range(5):
        next(it)
    state = first.state_dict()
    assert state["positions"] == [24, 16]  # worker 0 made batches 0, 2, 4; worker 1 batches 1, 3
    resumed = data_build.build_train_loader(cfg, ds, tokenizer, start_iter=5)
    resumed.load_state_dict(state, start_iter=5)
    it = iter(resumed)
    for want in batches[5:]:
        got = next(it)
        assert got["sample_id"] == want["sample_id"]
        assert torch.equal(got["image"], want["image"]) and torch.equal(got["input_ids"], want["input_ids"])
    # a different worker count cannot continue the streams: reseeded, and it says so
    other = data_build.build_train_loader(tiny_cfg(f"data.train={{name: WebDatasetPretrain, shards: {tiny_shards}}}", "data.num_workers=1"), ds, tokenizer)
    other.load_state_dict(state, start_iter=5)
    assert other.reseed == 5 and other.positions == [0]


def test_training_on_shards_through_the_cli_and_resume(synthetic_root, tiny_shards, tmp_path):
    import shutil

    from test_cli import read_metrics

    ref = str(tmp_path / "ref")
    args = ["--config-file", TINY, f"data.synthetic.root={synthetic_root}", "eval.retrieval=null", "train.max_iter=7",
            "train.checkpoint_period=3", f"data.train={{name: WebDatasetPretrain, shards: {tiny_shards}, shuffle_buffer: 10}}", "data.num_workers=2"]
    r = run_cli([*args, f"output_dir={ref}"])
    assert r.returncode == 0, r.stderr[-3000:]
    ck = torch.load(os.path.join(ref, "model_0000002.pth"), weights_only=True)
    # after 3 batches: worker 0 made batches 0 and 2, worker 1 batch 1
    assert ck["loader_state"] == [{"positions": [16, 8], "batches": 3, "num_workers": 2, "world_size": 1, "rank": 0, "reseed": 0}]
    rows = read_metrics(os.path.join(ref, "metrics.json"))
    assert rows[1]["alpha"] == pytest.approx(0.4 / 6)  # one-epoch ramp from the index: 48 pairs / 8 = 6 iterations
    # a run stopped after iteration 2 continues from the shard stream's saved position
    out = str(tmp_path / "resumed")
    os.makedirs(out)
    shutil.copy(os.path.join(ref, "model_0000002.pth"), out)
    r = run_cli(["--resume", *args, f"output_dir={out}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "continuing each worker's stream at its saved position [16, 8]" in r.stdout + r.stderr
    got = read_metrics(os.path.join(out, "metrics.json"))
    for it in range(3, 7):
        for k in ("total_loss", "loss_itc", "loss_itm", "loss_mlm"):
            assert got[it][k] == pytest.approx(rows[it][k], rel=1e-5, abs=1e-6), (it, k)
