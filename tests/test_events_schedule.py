"""Tests of metric storage/writers (albef.utils.events) and the optimizer / LR schedule builders."""
from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from albef.engine.defaults import build_lr_scheduler, build_optimizer
from albef.utils.events import EventStorage, JSONWriter, get_event_storage


# ---------------------------------------------------------------------- EventStorage


def _no_sync(*a, **k):
    raise AssertionError("host sync during put_scalar")


def test_put_scalar_defers_tensor_conversion(monkeypatch):
    storage = EventStorage()
    vals = [torch.tensor(1.5), torch.tensor(2.25, dtype=torch.bfloat16), torch.tensor([3.0]), torch.tensor(4, dtype=torch.int64)]
    with monkeypatch.context() as m:
        for attr in ("item", "tolist", "__float__", "__int__", "__bool__"):
            m.setattr(torch.Tensor, attr, _no_sync)
        for i, v in enumerate(vals):
            storage.put_scalar(f"t{i}", v)
        storage.put_scalars(a=torch.tensor(0.5), b=7.0)
        with pytest.raises(AssertionError):  # the patch is really in force
            torch.tensor(1.0).item()
    storage.flush()
    got = {k: storage.history(k).latest() for k in ("t0", "t1", "t2", "t3", "a", "b")}
    assert got == {"t0": 1.5, "t1": 2.25, "t2": 3.0, "t3": 4.0, "a": 0.5, "b": 7.0}
    assert all(type(v) is float for v in got.values())


def test_flush_does_not_call_item(monkeypatch):
    """The documented contract: one stack(...).tolist() per flush, not one .item() per value."""
    storage = EventStorage()
    for i in range(5):
        storage.put_scalar("loss", torch.tensor(float(i)))
        storage.step()
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "item", _no_sync)
        storage.flush()
    assert [v for v, _ in storage.history("loss").values()] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [it for _, it in storage.history("loss").values()] == [0, 1, 2, 3, 4]


def test_put_scalar_detaches():
    storage = EventStorage()
    x = torch.tensor(2.0, requires_grad=True)
    storage.put_scalar("y", x * 3)
    storage.flush()
    assert storage.history("y").latest() == 6.0


def test_latest_and_context():
    with EventStorage(start_iter=10) as s:
        assert get_event_storage() is s
        s.put_scalar("lr", 0.1, smoothing_hint=False)
        s.step()
        s.put_scalar("lr", 0.2, smoothing_hint=False)
        assert s.latest() == {"lr": (0.2, 11)}
    with pytest.raises(RuntimeError):
        get_event_storage()


def test_new_since_last_write_averages_losses_only():
    s = EventStorage()
    for it in range(4):
        s.put_scalar("loss", torch.tensor(float(it)))
        s.put_scalar("lr", 0.1 * (it + 1), smoothing_hint=False)
        s.step()
    out = s.new_since_last_write("w")
    assert out["loss"] == (pytest.approx(1.5), 3)
    assert out["lr"] == (pytest.approx(0.4), 3)
    assert s.new_since_last_write("w") == {}  # nothing new for this writer
    assert s.new_since_last_write("other")["loss"] == (pytest.approx(1.5), 3)  # writers are independent


# ---------------------------------------------------------------------- JSONWriter


def _read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_json_writer_one_line_per_write(tmp_path):
    path = str(tmp_path / "metrics.json")
    writer = JSONWriter(path)
    with EventStorage() as s:
        for it in range(7):
            s.put_scalar("loss_itc", torch.tensor(float(it)))
            s.put_scalar("loss_mlm", float(10 * it))
            s.put_scalar("lr", 0.01 * it, smoothing_hint=False)
            if it in (2, 6):
                writer.write()
                assert len(_read_lines(path)) == (1 if it == 2 else 2)
            s.step()
        writer.write()  # nothing new since the last write: no line
    writer.close()
    rows = _read_lines(path)
    assert len(rows) == 2
    assert rows[0] == {"iteration": 2, "loss_itc": pytest.approx(1.0), "loss_mlm": pytest.approx(10.0), "lr": pytest.approx(0.02)}
    # iterations 3..6 averaged; lr is the latest value
    assert rows[1] == {"iteration": 6, "loss_itc": pytest.approx(4.5), "loss_mlm": pytest.approx(45.0), "lr": pytest.approx(0.06)}


def test_json_writer_period_one_is_exact(tmp_path):
    path = str(tmp_path / "metrics.json")
    writer = JSONWriter(path)
    with EventStorage(start_iter=5) as s:
        for v in (0.3, 0.7, 0.2):
            s.put_scalar("total_loss", torch.tensor(v))
            writer.write()
            s.step()
    writer.close()
    rows = _read_lines(path)
    assert [r["iteration"] for r in rows] == [5, 6, 7]
    assert [r["total_loss"] for r in rows] == pytest.approx([0.3, 0.7, 0.2])


def test_json_writer_appends(tmp_path):
    path = str(tmp_path / "metrics.json")
    for start in (0, 3):
        w = JSONWriter(path)
        with EventStorage(start_iter=start) as s:
            s.put_scalar("loss", 1.0)
            w.write()
        w.close()
    assert [r["iteration"] for r in _read_lines(path)] == [0, 3]


# ---------------------------------------------------------------------- LR schedule


def _train_cfg(**train):
    base = dict(lr=1e-4, min_lr=1e-5, warmup_lr=1e-5, warmup_iters=100, max_iter=1000, weight_decay=0.02,
                betas=[0.9, 0.999], eps=1e-8)
    base.update(train)
    return OmegaConf.create({"train": base})


def _expected_lr(it, lr=1e-4, min_lr=1e-5, warmup_lr=1e-5, warmup_iters=100, max_iter=1000):
    if it < warmup_iters:
        return warmup_lr + (lr - warmup_lr) * it / warmup_iters
    t = (it - warmup_iters) / (max_iter - warmup_iters)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t))


def test_lr_schedule_points():
    sched = build_lr_scheduler(_train_cfg())
    lr = lambda it: sched(it / 1000)  # noqa: E731  (how hooks.LRScheduler calls it)
    assert lr(0) == pytest.approx(1e-5)
    assert lr(50) == pytest.approx(5.5e-5)
    assert lr(99) == pytest.approx(1e-5 + 9e-5 * 0.99)
    assert lr(100) == pytest.approx(1e-4)
    assert lr(550) == pytest.approx(5.5e-5)  # half-way through the cosine
    assert lr(325) == pytest.approx(1e-5 + 0.5 * 9e-5 * (1 + math.cos(math.pi / 4)))
    assert lr(999) == pytest.approx(1e-5, rel=1e-3)
    assert sched(1.0 - 1e-12) == pytest.approx(1e-5, rel=1e-6)
    for it in range(0, 1000, 37):
        assert lr(it) == pytest.approx(_expected_lr(it), rel=1e-6), it


def test_lr_schedule_monotone_pieces():
    sched = build_lr_scheduler(_train_cfg())
    vals = [sched(it / 1000) for it in range(1000)]
    assert all(a < b for a, b in zip(vals[:100], vals[1:101]))  # warm-up rises
    assert all(a >= b for a, b in zip(vals[100:], vals[101:]))  # cosine falls
    assert max(vals) == pytest.approx(1e-4)


def test_lr_schedule_base_recipe_values():
    from albef.config import load_config

    cfg = load_config(None, ["train.max_iter=10000"])
    sched = build_lr_scheduler(cfg)
    assert sched(0.0) == pytest.approx(1e-5)
    assert sched(1000 / 10000) == pytest.approx(5.5e-5)
    assert sched(2000 / 10000) == pytest.approx(1e-4)
    assert sched(6000 / 10000) == pytest.approx(5.5e-5)


def test_lr_schedule_no_warmup():
    sched = build_lr_scheduler(_train_cfg(warmup_iters=0))
    assert sched(0.0) == pytest.approx(1e-4)
    assert sched(0.5) == pytest.approx(5.5e-5)
    assert sched(0.25) == pytest.approx(_expected_lr(250, warmup_iters=0))


def test_lr_schedule_warmup_longer_than_run():
    sched = build_lr_scheduler(_train_cfg(warmup_iters=2000, max_iter=100))
    # 50 of 2000 warm-up iterations done: 2.5% of the way from warmup_lr to lr
    assert sched(50 / 100) == pytest.approx(1e-5 + 9e-5 * 50 / 2000)


# ---------------------------------------------------------------------- optimizer


@pytest.fixture()
def tiny_model(tiny_cfg, tokenizer):
    from albef.modeling import build_model

    cfg = tiny_cfg()
    return cfg, build_model(cfg, tokenizer)


def test_optimizer_groups(tiny_model):
    cfg, model = tiny_model
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == pytest.approx(cfg.train.weight_decay) and no_decay["weight_decay"] == 0.0
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(cfg.train.lr)
        assert tuple(g["betas"]) == tuple(cfg.train.betas) and g["eps"] == pytest.approx(cfg.train.eps)
    dec = {id(p) for p in decay["params"]}
    nodec = {id(p) for p in no_decay["params"]}
    assert not dec & nodec
    names = {id(p): n for n, p in model.named_parameters()}

    def group_of(name):
        p = dict(model.named_parameters())[name]
        return "no_decay" if id(p) in nodec else "decay" if id(p) in dec else None

    named = dict(model.named_parameters())
    assert group_of("temp") == "no_decay"
    pos = [n for n in named if n.endswith("pos_embed") and named[n].requires_grad]
    cls = [n for n in named if n.endswith("cls_token") and named[n].requires_grad]
    assert pos and cls
    assert all(group_of(n) == "no_decay" for n in pos + cls)
    biases = [n for n in named if n.endswith(".bias") and named[n].requires_grad]
    assert biases and all(group_of(n) == "no_decay" for n in biases)
    ln_weights = [f"{mn}.weight" if mn else "weight" for mn, m in model.named_modules()
                  if isinstance(m, torch.nn.LayerNorm) and m.weight is not None and m.weight.requires_grad]
    assert ln_weights and all(group_of(n) == "no_decay" for n in ln_weights)
    # matrices are decayed: projections, attention, word embeddings
    mats = [n for n, p in named.items() if p.requires_grad and p.ndim >= 2 and not n.endswith(("pos_embed", "cls_token"))]
    assert mats and all(group_of(n) == "decay" for n in mats)
    assert group_of("vision_proj.weight") == "decay" and group_of("text_proj.weight") == "decay"
    # every trainable parameter is in exactly one group
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert dec | nodec == trainable
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)
    # no teacher (EMA) parameter is optimised
    teacher = {id(p) for p in model.teacher.parameters()}
    assert teacher, "the momentum teacher should hold parameters"
    assert not teacher & (dec | nodec), [names.get(i) for i in teacher & (dec | nodec)]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(group_of(n) is None for n in frozen)


def test_optimizer_step_respects_groups(tiny_model):
    """With zero gradients, AdamW moves only decayed parameters (by lr * wd * p)."""
    cfg, model = tiny_model
    opt = build_optimizer(cfg, model)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    after = dict(model.named_parameters())
    assert torch.equal(after["temp"], before["temp"])
    pos = next(n for n in after if n.endswith("pos_embed") and after[n].requires_grad)
    assert torch.equal(after[pos], before[pos])
    w = before["vision_proj.weight"]
    assert torch.allclose(after["vision_proj.weight"], w * (1 - cfg.train.lr * cfg.train.weight_decay))
