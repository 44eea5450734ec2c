"""The real command line, in subprocesses: the default job's shape, resume after a kill,
two processes, evaluation only, the user's own data, and bad input messages."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, TINY, run_cli


def read_metrics(path: str) -> dict[int, dict]:
    """iteration -> the last metrics.json line for it (a resumed run rewrites the iterations after its checkpoint)."""
    rows: dict[int, dict] = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            rows.setdefault(r["iteration"], {}).update(r)
    return rows


def base_args(root: str, out: str, *extra: str) -> list[str]:
    return ["--config-file", TINY, f"data.synthetic.root={root}", f"output_dir={out}", *extra]


@pytest.mark.slow
def test_train_end_to_end_writes_everything(synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    r = run_cli(base_args(synthetic_root, out))
    assert r.returncode == 0, r.stderr[-3000:]
    # The retrieval table is printed, re-ranked and ITC-only rows.
    assert "| retrieval_itc" in r.stdout and "| retrieval " in r.stdout
    for name in ("config.yaml", "log.txt", "metrics.json", "model_final.pth", "last_checkpoint"):
        assert os.path.exists(os.path.join(out, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    m = read_metrics(os.path.join(out, "metrics.json"))
    assert sorted(i for i in m if i < 4) == [0, 1, 2, 3]
    for i in range(4):
        for k in ("loss_itc", "loss_itm", "loss_mlm", "total_loss", "lr", "alpha", "time", "data_time", "pairs_per_s"):
            assert k in m[i], (i, k)
    final = m[4]
    for prefix in ("retrieval", "retrieval_itc"):
        for k in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean"):
            assert 0.0 <= final[f"{prefix}/{k}"] <= 100.0
    # The dumped config reloads to the same tree.
    from albef.config import config_to_dict, load_config

    again = load_config(os.path.join(out, "config.yaml"))
    original = load_config(TINY, [f"data.synthetic.root={synthetic_root}", f"output_dir={out}"])
    assert config_to_dict(again) == config_to_dict(original)
    # The checkpoint is weights-only loadable and holds teacher, queues, optimizer, RNG, position.
    ck = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert {"model", "optimizer", "iteration", "rng", "config", "data_position"} <= set(ck)
    assert ck["iteration"] == 3 and ck["data_position"] == 4 * 8
    assert any(k.startswith("teacher.model.") for k in ck["model"]) and "teacher.queue.image_queue" in ck["model"]
    # The synthetic-pairs analysis tool reads the run back.
    a = subprocess.run([sys.executable, os.path.join(REPO, "projects", "synthetic_tasks", "analyze_synthetic_pairs.py"), "--output-dir", out],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert a.returncode == 0, a.stderr[-2000:]
    rows = [l for l in a.stdout.splitlines() if l.startswith("| itc") or l.startswith("| itm")]
    assert len(rows) == 2 and all(l.count("%") == 4 for l in rows)


@pytest.mark.slow
def test_kill_and_resume_follows_the_uninterrupted_run(synthetic_root, tmp_path):
    extra = ["train.max_iter=14", "train.checkpoint_period=4", "train.eval_period=7"]
    ref = str(tmp_path / "ref")
    r = run_cli(base_args(synthetic_root, ref, *extra))
    assert r.returncode == 0, r.stderr[-3000:]

    out = str(tmp_path / "killed")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), *base_args(synthetic_root, out, *extra)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    tag = os.path.join(out, "last_checkpoint")
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(tag) and open(tag).read().strip() == "model_0000003.pth":
            break
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = open(tag).read().strip()
    assert not os.path.exists(os.path.join(out, "model_final.pth"))

    r = run_cli(["--resume", *base_args(synthetic_root, out, *extra)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Resumed from {os.path.join(out, killed_at)}" in r.stdout

    a, b = read_metrics(os.path.join(ref, "metrics.json")), read_metrics(os.path.join(out, "metrics.json"))
    resumed_from = int(killed_at[len("model_"):-len(".pth")]) + 1
    assert resumed_from < 14
    compared = 0
    for it in range(resumed_from, 15):
        for k, v in a[it].items():
            if k in ("time", "data_time", "pairs_per_s") or k.startswith("grad"):
                continue
            assert b[it][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (it, k)
            compared += 1
    assert compared > 40
    # Same final weights, teacher and queues.
    wa = torch.load(os.path.join(ref, "model_final.pth"), weights_only=True)["model"]
    wb = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_two_processes(synthetic_root, tmp_path):
    out = str(tmp_path / "ddp")
    r = run_cli(["--num-gpus", "2", *base_args(synthetic_root, out, "train.max_iter=3", "model.teacher.queue_size=20")], timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Rank 0 of 2" in r.stdout
    assert os.path.exists(os.path.join(out, "log.txt.rank1"))
    ck = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    # The queue received the gathered global batch: 3 steps x 2 ranks x 8 pairs into a ring of 20.
    assert int(ck["model"]["teacher.queue.ptr"]) == (3 * 2 * 8) % 20
    assert len(ck["rng"]) == 2
    m = read_metrics(os.path.join(out, "metrics.json"))
    assert all(k in m[2] for k in ("loss_itc", "loss_itm", "loss_mlm"))
    assert m[2]["pairs_per_s"] > 0


@pytest.mark.slow
def test_eval_only_reproduces_final_numbers(synthetic_root, tmp_path):
    out = str(tmp_path / "ev")
    r = run_cli(base_args(synthetic_root, out, "train.max_iter=2"))
    assert r.returncode == 0, r.stderr[-3000:]
    trained = read_metrics(os.path.join(out, "metrics.json"))[2]
    # Evaluating needs no training data: the train annotation file here does not exist.
    r = run_cli(["--eval-only", *base_args(synthetic_root, str(tmp_path / "ev2"), f"model.weights={out}/model_final.pth",
                                           f"data.train.ann_files=[{tmp_path / 'no_such_train.json'}]")])
    assert r.returncode == 0, r.stderr[-3000:]
    with open(tmp_path / "ev2" / "metrics.json") as f:
        row = json.loads(f.readlines()[-1])
    for k in ("retrieval/r_mean", "retrieval_itc/r_mean", "retrieval/txt_r1"):
        assert row[k] == pytest.approx(trained[k])


@pytest.mark.slow
def test_unknown_component_lists_registered_names(synthetic_root, tmp_path):
    r = run_cli(base_args(synthetic_root, str(tmp_path / "x"), "model.objectives.itm.miner.name=HardNegMiner"))
    assert r.returncode == 2
    assert "Unknown MINER component 'HardNegMiner'" in r.stderr
    for name in ("ContrastiveHardNegativeMiner", "RandomNegativeMiner", "HardestNegativeMiner"):
        assert name in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_misspelt_key_names_the_closest(synthetic_root, tmp_path):
    r = run_cli(base_args(synthetic_root, str(tmp_path / "x"), "train.max_itr=3"))
    assert r.returncode == 2
    assert "unknown config key 'train.max_itr'" in r.stderr and "train.max_iter" in r.stderr


def _own_data(synthetic_root: str, tmp_path) -> tuple[str, str, str]:
    """A user's pretraining JSON (absolute paths) with a missing image, a corrupt JPEG and an empty caption."""
    with open(os.path.join(synthetic_root, "pretrain.json")) as f:
        anns = json.load(f)[:16]
    good = [{"image": os.path.join(synthetic_root, a["image"]), "caption": a["caption"]} for a in anns]
    corrupt = str(tmp_path / "corrupt.jpg")
    with open(good[0]["image"], "rb") as f:
        data = f.read()
    with open(corrupt, "wb") as f:
        f.write(data[: len(data) // 3])
    missing = str(tmp_path / "nowhere" / "missing.jpg")
    bad = [
        {"image": missing, "caption": "a red circle left of a blue square"},
        {"image": corrupt, "caption": ["a green cross above a red square"]},
        {"image": good[1]["image"], "caption": "?!"},
    ]
    ann = str(tmp_path / "my_pairs.json")
    with open(ann, "w") as f:
        json.dump(bad + good, f)
    return ann, missing, corrupt


@pytest.mark.slow
def test_own_data_with_bad_files_is_skipped_and_reported(synthetic_root, tmp_path):
    ann, missing, corrupt = _own_data(synthetic_root, tmp_path)
    vocab_dir = str(tmp_path / "vocab")
    v = subprocess.run([sys.executable, os.path.join(REPO, "tools", "build_vocab.py"), "--ann-files", ann, "--out-dir", vocab_dir],
                       capture_output=True, text=True, cwd=REPO)
    assert v.returncode == 0, v.stderr
    out = str(tmp_path / "own")
    r = run_cli([
        "--config-file", TINY, "data.synthetic=null", f"data.train.ann_files=[{ann}]", "data.train.image_root=",
        "data.test=null", f"data.tokenizer={vocab_dir}/vocab.txt", f"output_dir={out}", "train.max_iter=3",
    ])
    assert r.returncode == 0, r.stderr[-3000:]
    log = open(os.path.join(out, "log.txt")).read()
    assert f"Skipped sample {missing}: file not found" in log
    assert f"Skipped sample {corrupt}: unreadable image" in log
    assert f"{ann}: entry 2" in log and "empty caption" in log
    m = read_metrics(os.path.join(out, "metrics.json"))
    assert m[2]["skipped_samples"] >= 2
    assert "retrieval/r_mean" not in m.get(3, {})  # no test split given


@pytest.mark.slow
def test_own_data_strict_stops_naming_the_file(synthetic_root, tmp_path):
    ann, missing, corrupt = _own_data(synthetic_root, tmp_path)
    r = run_cli([
        "--config-file", TINY, "data.synthetic=null", f"data.train.ann_files=[{ann}]", "data.train.image_root=", "data.test=null",
        f"data.tokenizer={synthetic_root}/vocab.txt", f"output_dir={tmp_path / 'strict'}", "train.max_iter=3", "data.strict=true",
    ])
    assert r.returncode != 0
    assert f"{ann}: entry 2" in r.stderr and "empty caption" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_own_data_strict_stops_at_the_bad_image(synthetic_root, tmp_path):
    ann, missing, corrupt = _own_data(synthetic_root, tmp_path)
    with open(ann) as f:
        anns = [a for a in json.load(f) if a["caption"] != "?!"]
    with open(ann, "w") as f:
        json.dump(anns, f)
    r = run_cli([
        "--config-file", TINY, "data.synthetic=null", f"data.train.ann_files=[{ann}]", "data.train.image_root=", "data.test=null",
        f"data.tokenizer={synthetic_root}/vocab.txt", f"output_dir={tmp_path / 'strict'}", "train.max_iter=3",
        "data.strict=true", "train.seed=0",
    ])
    assert r.returncode != 0
    assert missing in r.stderr or corrupt in r.stderr  # whichever the shuffled stream meets first
    assert "data.strict=true stops here" in r.stderr


@pytest.mark.slow
def test_interpolation_error_names_the_key(synthetic_root, tmp_path):
    r = run_cli(["--config-file", TINY, "data.synthetic=null", f"output_dir={tmp_path / 'x'}"])
    assert r.returncode == 2
    assert "data.tokenizer" in r.stderr or "data.train" in r.stderr


@pytest.mark.slow
def test_torchrun_two_processes(synthetic_root, tmp_path):
    out = str(tmp_path / "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         os.path.join(REPO, "tools", "train_net.py"), *base_args(synthetic_root, out, "train.max_iter=2", "data.test=null")],
        cwd=REPO, capture_output=True, text=True, timeout=400, env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Rank 0 of 2" in r.stdout
    ck = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert int(ck["model"]["teacher.queue.ptr"]) == (2 * 2 * 8) % 24
