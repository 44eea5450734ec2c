"""``tools/benchmark.py`` as a user runs it, in subprocesses, on the tiny config: the training
step (timing, profile, FLOPs), retrieval evaluation, the data loader, and bad arguments."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY

BENCH = os.path.join(REPO, "tools", "benchmark.py")


def run_bench(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, BENCH, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def bench_json(tmp_path, *args: str) -> dict:
    out = tmp_path / "b.json"
    r = run_bench(["--config-file", TINY, "--device", "cpu", "--out", str(out), *args])
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out) as f:
        res = json.load(f)
    for key in ("what", "config_file", "overrides", "device", "device_name", "torch_version", "batch", "steps", "pairs_per_s",
                "step_time_s", "peak_memory_bytes", "peak_memory_kind", "aten_ops_per_step", "kernel_launches_per_step",
                "kernel_launches_definition", "measured_flop_per_pair", "mfu", "amp", "timestamp"):
        assert key in res, key
    # Nothing of the run is written into the repository: its output_dir was a temporary directory, now gone.
    out_dir = next(o.split("=", 1)[1] for o in res["bench_overrides"] if o.startswith("output_dir="))
    assert not out_dir.startswith(REPO) and not os.path.exists(out_dir)
    return res


@pytest.mark.slow
def test_train_step(tmp_path):
    res = bench_json(tmp_path, "--batch", "4", "--steps", "2", "--warmup", "1", "--profile-steps", "1")
    assert res["what"] == "train" and res["batch"] == 4 and res["steps"] == 2 and res["amp"] is False
    assert math.isfinite(res["pairs_per_s"]) and res["pairs_per_s"] > 0
    st = res["step_time_s"]
    assert 0 < st["min"] <= st["median"] <= st["max"]
    assert res["pairs_per_s"] == pytest.approx(4 / st["median"])
    assert res["aten_ops_per_step"] > 0 and 0 < res["kernel_launches_per_step"] <= res["aten_ops_per_step"]
    assert "top-level aten ops" in res["kernel_launches_definition"]  # the CPU definition, said in the JSON
    assert len(res["top_ops_by_self_time"]) == 10
    assert res["measured_flop_per_pair"] > 0
    assert res["flop_per_pair_used"] == res["measured_flop_per_pair"]  # not the base recipe, no --flops-per-pair
    assert res["mfu"] is None  # a CPU without --peak-tflops
    assert res["peak_memory_bytes"] > 0 and "RSS" in res["peak_memory_kind"]
    # The trainer's own hooks ran on the step (no evaluator: no EvalHook).
    assert res["hooks"] == ["IterationTimer", "LRScheduler", "AlphaRamp", "PeriodicCheckpointer", "PeriodicWriter"]


@pytest.mark.slow
def test_eval_retrieval(tmp_path):
    res = bench_json(tmp_path, "--what", "eval", "--num-images", "4", "--num-texts", "8", "eval.retrieval.k_test=3")
    e = res["eval"]
    assert (e["num_images"], e["num_texts"], e["k_test"]) == (4, 8, 3)
    assert e["pairs_reranked"] == 4 * 3 + 8 * 3  # image->text and text->image top-3 scores
    assert e["wall_s"] > 0 and e["images_per_s"] > 0 and res["pairs_per_s"] > 0
    assert e["coco5k_seconds_extrapolated"] == pytest.approx(e["wall_s"] * 5000 / 4)
    assert res["overrides"] == ["eval.retrieval.k_test=3"]


@pytest.mark.slow
def test_data_loader(tmp_path):
    res = bench_json(tmp_path, "--what", "data", "--num-images", "8", "--batch", "4", "--steps", "2", "--workers", "0",
                     "--target-pairs-per-s", "1000")
    d = res["data"]
    assert d["resolution"] == 32 and list(d["workers"]) == ["0"]
    rate = d["workers"]["0"]["pairs_per_s_per_worker"]
    assert rate > 0 and res["pairs_per_s"] == pytest.approx(rate)
    assert d["workers_needed_per_gpu"] == math.ceil(1000 / rate)


@pytest.mark.slow
def test_data_loader_json_against_shards(tmp_path):
    res = bench_json(tmp_path, "--what", "data", "--num-images", "16", "--batch", "4", "--steps", "2", "--workers", "0",
                     "--loaders", "json", "shards", "--repeats", "2", "--")
    d = res["data"]
    assert set(d["loaders"]) == {"json", "shards"}
    for name in ("json", "shards"):
        r = d["loaders"][name]["0"]
        assert len(r["pairs_per_s_runs"]) == 2 and r["pairs_per_s_min"] <= r["pairs_per_s"] <= r["pairs_per_s_max"]
    c = d["per_sample_cost_s"]
    assert c["samples"] == 16 and c["read_shard_s"] > 0 and c["decode_s"] > 0
    assert c["shard_bytes_per_sample"] == pytest.approx(c["jpeg_bytes_per_sample"])  # the original bytes, unchanged
    assert c["total_shards_s"] == pytest.approx(c["read_shard_s"] + c["decode_s"] + c["transform_s"] + c["tokenize_s"])


@pytest.mark.slow
def test_compare_interleaves_variants(tmp_path):
    res = bench_json(tmp_path, "--what", "compare", "--batch", "4", "--steps", "6", "--warmup", "1",
                     "--variant", "model.objectives.mlm.logits=all", "--variant", "")
    rows = res["compare"]
    assert [r["variant"] for r in rows] == ["model.objectives.mlm.logits=all", "(no extra overrides)"]
    assert rows[0]["speedup_vs_first"] == 1.0
    for r in rows:
        s = r["step_time_s"]
        assert 0 < s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
        assert r["speedup_vs_first"] == pytest.approx(rows[0]["step_time_s"]["median"] / s["median"])
    r = run_bench(["--config-file", TINY, "--what", "compare", "--variant", ""])
    assert r.returncode == 2 and "at least two --variant" in r.stderr


@pytest.mark.slow
def test_bad_arguments_are_named(tmp_path):
    r = run_bench(["--config-file", TINY, "--what", "nonsense"])
    assert r.returncode == 2 and "nonsense" in r.stderr
    r = run_bench(["--config-file", TINY, "--device", "cpu", "--out", str(tmp_path / "b.json"), "train.no_such_key=1"])
    assert r.returncode != 0 and "no_such_key" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "b.json").exists()
    if not torch.cuda.is_available():
        r = run_bench(["--config-file", TINY, "--device", "cuda"])
        assert r.returncode == 2 and "CUDA is not available" in r.stderr
