"""Long runs at scale: gradient accumulation, the non-finite policy, preemption signals,
time-based checkpoints, resuming from the newest complete checkpoint, two "nodes" under
torchrun, and ZeRO-sharded optimizer state against plain DDP."""
from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, TINY, run_cli
from test_cli import base_args, read_metrics


# ---------------------------------------------------------------------------- gradient accumulation
def _two_micro_batches(tiny_cfg, tokenizer, *overrides):
    """A config and two micro-batches of 8, padded to one length, with the MLM masks pinned:
    exactly one masked word per caption (position 1), so a mean over masked tokens is a mean
    over samples and the two micro-batches weigh the same."""
    from albef.data import build as data_build

    cfg = tiny_cfg("data.padding=max_length", *overrides)
    ds = data_build.build_dataset(cfg, "train")
    it = iter(data_build.build_train_loader(cfg, ds, tokenizer))
    batches = []
    for _ in range(2):
        b = next(it)
        b.pop("skipped"), b.pop("sample_id")
        pos = torch.zeros_like(b["input_ids"], dtype=torch.bool)
        pos[:, 1] = True
        b["mlm_positions"] = pos
        batches.append(b)
    big = {k: torch.cat([batches[0][k], batches[1][k]]) for k in batches[0]}
    return cfg, batches, big


def _run(model, batches, k, iters=2):
    from albef.engine.defaults import build_optimizer
    from albef.engine.train_loop import AccumulatingTrainer, SimpleTrainer

    opt = build_optimizer(model.cfg_for_test, model)
    if k > 1:
        t = AccumulatingTrainer(model, batches * iters, opt, device=torch.device("cpu"), grad_accum_steps=k)
    else:
        t = SimpleTrainer(model, batches * iters, opt, device=torch.device("cpu"))
    t.train(0, iters)
    return t


def test_grad_accumulation_equals_the_large_batch_for_mlm(tiny_cfg, tokenizer):
    from albef.modeling import build_model

    cfg, micro, big = _two_micro_batches(tiny_cfg, tokenizer, "model.objectives.itc=null", "model.objectives.itm=null",
                                         "model.teacher.name=NoTeacher", "train.lr=1e-3")
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer)
    model.cfg_for_test = cfg
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    ta = _run(a, micro, k=2)  # 2 iterations, each of the 2 micro-batches
    tb = _run(b, [big], k=1)  # 2 iterations of the 16-pair batch
    assert ta.iter == tb.iter == 2
    changed = 0
    for (name, pa), pb, p0 in zip(a.named_parameters(), b.parameters(), model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6, msg=name)
        changed += int(not torch.equal(pa, p0))
    assert changed > 10  # the steps did move the weights
    # the logged loss of an accumulated step is the mean of its micro-batches' losses
    la = ta.storage.history("loss_mlm").values()[-1][0]
    lb = tb.storage.history("loss_mlm").values()[-1][0]
    assert la == pytest.approx(lb, rel=1e-4)


def test_grad_accumulation_one_ema_update_and_every_micro_batch_enqueued(tiny_cfg, tokenizer):
    from albef.modeling import build_model

    cfg, micro, _ = _two_micro_batches(tiny_cfg, tokenizer, "model.teacher.queue_size=40", "model.teacher.momentum=0.5")
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer)
    model.cfg_for_test = cfg
    t_params, s_params = model.teacher._param_pairs(model)  # (teacher, student) tensors, paired
    teacher0 = [p.clone() for p in t_params]
    t = _run(model, micro, k=2, iters=1)
    # one EMA update: teacher = 0.5 * teacher0 + 0.5 * student (after the optimizer step);
    # two updates would give 0.25 * teacher0 + 0.75 * student
    moved = 0
    for tp, sp, t0 in zip(t_params, s_params, teacher0):
        torch.testing.assert_close(tp, 0.5 * t0 + 0.5 * sp, rtol=1e-5, atol=1e-7)
        moved += int(not torch.equal(tp, t0))
    assert len(t_params) > 10 and moved > 10
    # both micro-batches' momentum features went into the queue, in order
    q = model.teacher.queue
    assert int(q.ptr) == 16
    assert q.idx_queue[:16].tolist() == micro[0]["image_id"].tolist() + micro[1]["image_id"].tolist()
    assert t.iter == 1


class _CountingModel(torch.nn.Module):
    """A loss and a count per batch (``x`` [B]): ``loss_a`` = mean(w * x), ``dropped_big`` = #(x > 1)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, batch):
        x = batch["x"]
        return {"loss_a": (self.w * x).mean(), "dropped_big": (x > 1).sum()}


def test_grad_accumulation_logs_loss_means_and_count_sums():
    """An accumulated step logs what one batch of all its micro-batches would: the losses'
    mean and the counts' sum (here exactly: equal micro-batches)."""
    from albef.engine.train_loop import AccumulatingTrainer, SimpleTrainer, reduce_micro_batches

    micro = [{"x": torch.tensor([1.0, 2.0, 3.0])}, {"x": torch.tensor([2.0, 2.0, 0.0])}]
    large = [{"x": torch.cat([b["x"] for b in micro])}]
    cpu = torch.device("cpu")
    logged = {}
    for name, cls, batches, kwargs in (("accumulated", AccumulatingTrainer, micro, {"grad_accum_steps": 2}),
                                       ("large", SimpleTrainer, large, {})):
        model = _CountingModel()
        t = cls(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), device=cpu, **kwargs)
        t.train(0, 1)
        logged[name] = {k: t.storage.history(k).latest() for k in ("loss_a", "dropped_big", "total_loss")}
    assert logged["accumulated"]["dropped_big"] == logged["large"]["dropped_big"] == 4.0  # 2 + 2, not their mean 2
    assert logged["accumulated"]["loss_a"] == pytest.approx(logged["large"]["loss_a"]) == pytest.approx(10 / 6)
    assert logged["accumulated"]["total_loss"] == pytest.approx(10 / 6)
    # the rule, on non-tensor values too: loss_* averaged, other outputs summed
    assert reduce_micro_batches([{"loss_x": 1.0, "n": 2}, {"loss_x": 3.0, "n": 5}]) == {"loss_x": 2.0, "n": 7}


# ---------------------------------------------------------------------------- non-finite policy
def _plant_nan(trainer, at_iter: int) -> None:
    """The ITC loss of iteration ``at_iter`` becomes NaN."""
    from albef.utils.events import get_event_storage

    model = trainer.model
    forward = model.forward

    def planted(batch):
        out = forward(batch)
        if get_event_storage().iter == at_iter:
            out["loss_itc"] = out["loss_itc"] * float("nan")
        return out

    model.forward = planted


def test_a_planted_nan_stops_naming_iteration_terms_and_samples(tiny_cfg):
    from albef.engine import DefaultTrainer
    from albef.engine.train_loop import NonFiniteError

    cfg = tiny_cfg("train.max_iter=6", "train.checkpoint_period=100")
    trainer = DefaultTrainer(cfg)
    _plant_nan(trainer, 2)
    with pytest.raises(NonFiniteError) as e:
        trainer.train()
    msg = str(e.value)
    assert "iteration 2:" in msg and "loss_itc=nan" in msg and "loss_mlm=" in msg and "train.nonfinite=skip" in msg
    # the 8 samples of iteration 2's batch, in order: the sampler's positions 16..23
    from albef.data.samplers import InfiniteSampler

    ds = trainer.train_set
    it = iter(InfiniteSampler(len(ds), seed=cfg.train.seed))
    keys = [next(it) for _ in range(24)][16:]
    expected = ", ".join(f"#{i} {ds.paths[i]}" for _, i in keys)
    assert f"samples of the batch: [{expected}]" in msg
    # no checkpoint holds the broken weights
    assert not any(f.startswith("model_") for f in os.listdir(cfg.output_dir))


def test_skip_policy_skips_and_counts_the_step(tiny_cfg):
    from albef.engine import DefaultTrainer

    cfg = tiny_cfg("train.max_iter=5", "train.nonfinite=skip", "train.checkpoint_period=100", "eval.retrieval=null")
    trainer = DefaultTrainer(cfg)
    _plant_nan(trainer, 2)
    trainer.train()
    rows = [json.loads(l) for l in open(os.path.join(cfg.output_dir, "metrics.json"))]
    last = rows[-1]
    assert last["iteration"] == 4 and last["skipped_steps"] == 1.0
    assert all(r["skipped_steps"] == (1.0 if r["iteration"] >= 2 else 0.0) for r in rows if "skipped_steps" in r)
    # four optimizer steps for five iterations, and finite weights
    opt_steps = {int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()}
    assert opt_steps == {4}
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    with pytest.raises(ValueError, match="train.nonfinite"):
        DefaultTrainer(tiny_cfg("train.nonfinite=ignore")).build_trainer([])


def test_skipped_steps_continue_from_the_checkpoint_after_resume(tiny_cfg):
    from albef.engine import DefaultTrainer

    cfg = tiny_cfg("train.max_iter=5", "train.nonfinite=skip", "train.checkpoint_period=3", "eval.retrieval=null")
    first = DefaultTrainer(cfg)
    _plant_nan(first, 1)
    first.train()
    metrics = os.path.join(cfg.output_dir, "metrics.json")
    rows_before = sum(1 for _ in open(metrics))
    ck = torch.load(os.path.join(cfg.output_dir, "model_0000002.pth"), weights_only=True)
    assert ck["trainer_state"] == [{"skipped_samples": 0, "skipped_steps": 1}]
    os.remove(os.path.join(cfg.output_dir, "model_final.pth"))  # resume from iteration 2's checkpoint
    resumed = DefaultTrainer(cfg)
    assert resumed.resume_or_load(resume=True) == 3
    resumed.train()
    rows = [json.loads(l) for l in open(metrics)][rows_before:]  # the resumed run's (appended)
    after = [r for r in rows if "skipped_steps" in r]
    assert [r["iteration"] for r in after] == [3, 4]
    assert all(r["skipped_steps"] == 1.0 for r in after), after  # not 0: the count of the checkpoint goes on
    final = torch.load(os.path.join(cfg.output_dir, "model_final.pth"), weights_only=True)
    assert final["trainer_state"][0]["skipped_steps"] == 1


# ---------------------------------------------------------------------------- preemption
@pytest.mark.slow
def test_sigterm_checkpoints_exits_0_and_resume_matches_the_uninterrupted_run(synthetic_root, tmp_path):
    extra = ["train.max_iter=60", "train.checkpoint_period=1000", "eval.retrieval=null"]
    ref = str(tmp_path / "ref")
    # the reference also checkpoints every 0.05 s of training, beside the (never due) period
    r = run_cli(base_args(synthetic_root, ref, *extra, "train.checkpoint_minutes=0.001", "train.max_to_keep=100"))
    assert r.returncode == 0, r.stderr[-3000:]
    timed = [f for f in os.listdir(ref) if f.startswith("model_0")]
    assert len(timed) >= 2, os.listdir(ref)

    out = str(tmp_path / "preempted")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "train_net.py"), *base_args(synthetic_root, out, *extra)],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    metrics = os.path.join(out, "metrics.json")
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 5:
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    log, _ = p.communicate(timeout=120)
    assert p.returncode == 0, log[-3000:]
    saved = [f for f in os.listdir(out) if f.startswith("model_")]
    assert len(saved) == 1 and saved[0] != "model_final.pth", saved
    stopped = int(saved[0][len("model_"):-len(".pth")])
    assert 3 <= stopped < 59 and f"Preempted (SIGTERM): checkpoint of iteration {stopped}" in log

    # a newer checkpoint cut short and a file still being written: --resume passes over both
    good = os.path.join(out, saved[0])
    data = open(good, "rb").read()
    with open(os.path.join(out, "model_0000058.pth"), "wb") as f:
        f.write(data[: len(data) // 2])
    with open(os.path.join(out, "model_0000059.pth.tmp"), "wb") as f:
        f.write(data[:100])
    r = run_cli(["--resume", *base_args(synthetic_root, out, *extra)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipping" in r.stdout and "model_0000058.pth" in r.stdout
    assert f"Resumed from {good} at iteration {stopped + 1}" in r.stdout

    a, b = read_metrics(os.path.join(ref, "metrics.json")), read_metrics(metrics)
    for it in (stopped + 1, 30, 59):
        for k in ("total_loss", "loss_itc", "loss_itm", "loss_mlm", "lr", "alpha"):
            assert b[it][k] == pytest.approx(a[it][k], rel=1e-5, abs=1e-6), (it, k)
    wa = torch.load(os.path.join(ref, "model_final.pth"), weights_only=True)["model"]
    wb = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("loader, workers", [("map", 1), ("map", 2), ("shards", 2)])
def test_group_wide_sigterm_with_dataloader_workers_checkpoints_and_exits_0(synthetic_root, tmp_path, loader, workers):
    """Slurm at the time limit (or ``kill -- -PGID``) sends SIGTERM to every process of the
    job, DataLoader workers included: the workers must live on (a dead one makes the
    DataLoader raise in the main process) while the main process checkpoints and exits 0,
    and then end with it (no worker left behind, no hang at exit). For the map-style loader
    (persistent workers) and the streaming one (shards)."""
    out = str(tmp_path / "group")
    data = []
    if loader == "shards":
        from albef.data.shards import make_shards

        shards = str(tmp_path / "shards")
        make_shards([os.path.join(synthetic_root, "pretrain.json")], synthetic_root, shards, shard_size=6, progress=False)
        data = [f"data.train={{name: WebDatasetPretrain, shards: {shards}}}"]
    args = base_args(synthetic_root, out, "train.max_iter=500", "train.checkpoint_period=1000", "eval.retrieval=null",
                     f"data.num_workers={workers}", *data)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # a session (and process group) of its own, as a batch job's: the signal reaches only it
    p = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "train_net.py"), *args], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    metrics = os.path.join(out, "metrics.json")
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 3:
            break
        time.sleep(0.01)
    assert p.poll() is None, "the run ended before it could be signalled"
    pgid = os.getpgid(p.pid)
    assert pgid == p.pid
    os.killpg(pgid, signal.SIGTERM)
    log, _ = p.communicate(timeout=120)
    assert p.returncode == 0, log[-3000:]
    assert "exited unexpectedly" not in log and "killed by signal" not in log, log[-3000:]
    saved = [f for f in os.listdir(out) if f.startswith("model_")]
    assert len(saved) == 1 and saved[0] != "model_final.pth", saved
    stopped = int(saved[0][len("model_"):-len(".pth")])
    assert f"Preempted (SIGTERM): checkpoint of iteration {stopped}" in log
    ck = torch.load(os.path.join(out, saved[0]), weights_only=True)
    assert ck["iteration"] == stopped
    # the workers are gone with the main process (they exit on their parent's SIGTERM or
    # when the loader shuts them down, and notice a dead parent within seconds)
    for _ in range(200):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"processes of group {pgid} still alive after the run ended")


# ---------------------------------------------------------------------------- several processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_under_torchrun_train_on_disjoint_data_into_one_queue(synthetic_root, tmp_path):
    """Two torchrun "nodes" of one process each meet at a c10d rendezvous on loopback and
    run the unchanged tools/train_net.py (gloo on the CPU)."""
    from albef.config import load_config
    from albef.data.build import build_dataset
    from albef.data.samplers import InfiniteSampler

    out = str(tmp_path / "nodes")
    port = _free_port()
    args = base_args(synthetic_root, out, "train.max_iter=2", "model.teacher.queue_size=64", "eval.retrieval=null")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "albef-test", "--max-restarts", "0",
           os.path.join(REPO, "tools", "train_net.py"), *args]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)]
    logs = [p.communicate(timeout=400)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(l[-2000:] for l in logs)
    assert os.path.exists(os.path.join(out, "log.txt.rank1"))
    ck = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert len(ck["rng"]) == 2 and ck["data_position"] == 2 * 2 * 8
    # The samples each rank drew (its share of the global stream), and the queue: per step,
    # rank 0's 8 momentum features then rank 1's (gathered), for 2 steps.
    cfg = load_config(TINY, [f"data.synthetic.root={synthetic_root}"])
    ds = build_dataset(cfg, "train")
    drawn = []
    for rank in (0, 1):
        it = iter(InfiniteSampler(len(ds), seed=cfg.train.seed, rank=rank, world_size=2))
        drawn.append([next(it) for _ in range(16)])
    assert not {i for _, i in drawn[0]} & {i for _, i in drawn[1]}  # disjoint
    expected = []
    for step in range(2):
        for rank in (0, 1):
            expected += [ds.image_id[i] for _, i in drawn[rank][step * 8:(step + 1) * 8]]
    assert int(ck["model"]["teacher.queue.ptr"]) == 32
    assert ck["model"]["teacher.queue.idx_queue"][:32].tolist() == expected
    assert (ck["model"]["teacher.queue.idx_queue"][32:] == -100).all()


@pytest.mark.slow
def test_zero_sharded_optimizer_gives_the_losses_of_plain_ddp(synthetic_root, tmp_path):
    runs = {}
    for name, extra in (("ddp", []), ("zero", ["train.optimizer_sharding=zero"])):
        out = str(tmp_path / name)
        r = run_cli(["--num-gpus", "2", *base_args(synthetic_root, out, "train.max_iter=4", "eval.retrieval=null", *extra)], timeout=400)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = (read_metrics(os.path.join(out, "metrics.json")), torch.load(os.path.join(out, "model_final.pth"), weights_only=True))
    (ma, ca), (mb, cb) = runs["ddp"], runs["zero"]
    for it in range(4):
        for k in ("total_loss", "loss_itc", "loss_itm", "loss_mlm"):
            assert mb[it][k] == pytest.approx(ma[it][k], rel=1e-5, abs=1e-6), (it, k)
    for k, v in ca["model"].items():
        torch.testing.assert_close(cb["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    # the ZeRO checkpoint holds the consolidated optimizer state (every parameter's moments)
    assert len(cb["optimizer"]["state"]) == len(ca["optimizer"]["state"]) > 0


def test_resume_position_counts_accumulated_micro_batches(tiny_cfg):
    from albef.data.build import build_train_sampler
    from albef.data.files import DataError  # noqa: F401  (the data layer imports cleanly)

    cfg = tiny_cfg("train.grad_accum_steps=2")
    s = build_train_sampler(cfg, list(range(48)), start_iter=3)
    assert s.start == 3 * 8 * 2  # iterations x batch x micro-batches x processes


def test_resume_candidates_newest_written_first_and_all_unreadable_is_an_error(tmp_path):
    from torch import nn

    from albef.checkpoint import ALBEFCheckpointer
    from albef.checkpoint.checkpointer import CheckpointFormatError

    ck = ALBEFCheckpointer(nn.Linear(2, 2), str(tmp_path))
    ck.save("model_final", iteration=9)       # a finished run ...
    os.utime(tmp_path / "model_final.pth", (1, 1))
    ck.save("model_0000012", iteration=12)    # ... extended (max_iter raised) and preempted
    (tmp_path / "model_0000013.pth.tmp").write_bytes(b"half")
    names = [os.path.basename(p) for p in ck.resume_candidates()]
    assert names == ["model_0000012.pth", "model_final.pth"]
    path, extra = ck.load_newest_complete()
    assert path.endswith("model_0000012.pth") and extra["iteration"] == 12
    # every file cut short: an error naming them, not a silent start from scratch
    for name in names:
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointFormatError, match="no checkpoint in this output_dir can be read completely") as e:
        ck.load_newest_complete()
    assert "model_0000012.pth" in str(e.value) and "model_final.pth" in str(e.value)
    assert ALBEFCheckpointer(nn.Linear(2, 2), str(tmp_path / "empty")).load_newest_complete() is None
