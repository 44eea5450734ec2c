"""Reading WebDataset shards: WebDatasetPretrain's split across ranks and workers (every
sample once per epoch), the StreamingLoader's exact resume, and a training run on shards
through the command line, resumed. (Writing them: tests/test_make_shards.py.)"""
from __future__ import annotations

import os

import pytest
import torch

from conftest import TINY, run_cli

# its tests share module fixtures (a trained model, generated data): one xdist worker builds them once
pytestmark = pytest.mark.xdist_group("shards")


TRANSFORMS = {"image_res": 8, "crop_scale": None, "hflip_prob": 0.0, "randaugment": None, "mean": [0.5] * 3, "std": [0.5] * 3}


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


@pytest.mark.parametrize("bufsize", [2, 5, 7, 100])
def test_buffer_shuffle_is_webdatasets_and_resumes_from_a_replay(bufsize):
    import random

    from webdataset.filters import _shuffle

    from albef.data.stream_shuffle import buffer_shuffle, replay_shuffle

    for n in (1, 5, 40):
        ours = list(buffer_shuffle(range(n), bufsize, random.Random(3)))
        assert ours == list(_shuffle(iter(range(n)), bufsize=bufsize, initial=bufsize, rng=random.Random(3)))
        for k in range(1, n):  # continue from the replayed state: the rest of the same order
            rng = random.Random(3)
            buffered, read = replay_shuffle(n, k, bufsize, rng)
            assert sorted(buffered + ours[:k]) == list(range(read))
            assert list(buffer_shuffle(range(read, n), bufsize, rng, buf=buffered)) == ours[k:]


def _raw_stream(ds, n):
    from torch.utils.data import DataLoader

    it = iter(DataLoader(ds, batch_size=None, num_workers=0))
    return [next(it)["sample_id"] for _ in range(n)]


@pytest.mark.parametrize("bufsize", [0, 5, 13])
def test_resume_skips_whole_consumed_shards(tiny_shards, monkeypatch, bufsize):
    """A stream resumed deep in an epoch continues exactly, and opens only the shards that
    still hold samples to come (the shuffle replayed over positions), not the consumed ones."""
    from albef.data import shards

    ds = _wds(tiny_shards, shuffle_buffer=bufsize)
    ds.set_stream(0, 1, 0, [0])
    ref = _raw_stream(ds, 48 + 48)  # one reader: 8 shards of 6 per epoch, two epochs
    opened, read = [], []
    real = shards.iter_shard

    def counting(url):
        opened.append(os.path.basename(url))
        for raw in real(url):
            read.append(raw["__key__"])
            yield raw

    monkeypatch.setattr(shards, "iter_shard", counting)
    for at in (48 + 1, 48 + 30, 48 + 45):  # inside the second epoch
        opened.clear()
        read.clear()
        ds.set_stream(0, 1, 0, [at])
        assert _raw_stream(ds, 96 - at) == ref[at:], at
        # opened: exactly the shards that hold a sample still to come (in the buffer or not yet read)
        to_come = {sid.split("#")[0] for sid in ref[at:]}
        assert sorted(opened) == sorted(to_come), (at, opened)
        assert len(read) <= 6 * len(to_come)
        if at == 48 + 45:
            assert len(opened) <= 3 and len(read) <= 18  # 3 samples to come: not the epoch's 8 shards, 48 samples
    # no per-shard counts (a pattern without its index): the consumed samples are re-read, still exactly
    opened.clear()
    ds = _wds(os.path.join(tiny_shards, "shard-{000000..000007}.tar"), shuffle_buffer=bufsize)
    ds.set_stream(0, 1, 0, [30])
    assert _raw_stream(ds, 10) == ref[30:40]
    assert {f"shard-{i:06d}.tar" for i in ds._epoch_shards(0, 0, 1)[:5]} <= set(opened)  # positions 0-29 read again


@pytest.mark.slow
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
