"""Every fast path computes what the plain path computes.

Cross-attention keys/values cached per image, masked-only MLM logits, written-out
attention, activation checkpointing and the compiled step are each compared, on the same
weights and the same batch, with the plain computation: same losses and same gradients
within float tolerance. The batch pins ITM's negatives and MLM's masked positions, so
both sides see the same draws; the student is moved away from the teacher and alpha is
on, so the distillation terms are part of what is compared.
"""
from __future__ import annotations

import pytest
import torch

from albef.modeling import build_model


def _batch(tokenizer, b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    caps = ["a red circle left of a blue square", "a green triangle above a red square",
            "a blue square below a green circle", "a red triangle right of a blue circle"][:b]
    enc = tokenizer(caps, padding="longest", return_tensors="pt", return_token_type_ids=False)
    ids = enc["input_ids"]
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[:, 2] = positions[:, 4] = True
    positions[: seed % b, 5] = True  # a different number of masked positions per batch
    return {
        "image": torch.randn(b, 3, 32, 32, generator=g), "input_ids": ids, "attention_mask": enc["attention_mask"],
        "image_id": torch.arange(b) + 10 * seed,
        "itm_neg_image_idx": torch.arange(b).roll(1), "itm_neg_text_idx": torch.arange(b).roll(-1),
        "mlm_positions": positions,
    }


def _pair(tiny_cfg, tokenizer, *overrides):
    """(reference model with the defaults, model with ``overrides``), same weights, the
    student moved off the teacher, distillation at full alpha."""
    torch.manual_seed(0)
    ref = build_model(tiny_cfg(), tokenizer)
    with torch.no_grad():
        for p in ref.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    other = build_model(tiny_cfg(*overrides), tokenizer)
    other.load_state_dict(ref.state_dict())
    for m in (ref, other):
        m.set_distillation_scale(1.0)
    return ref, other


def _losses_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(dict(batch))
    out.pop("state")
    losses = {k: v for k, v in out.items() if k.startswith("loss_")}
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def _assert_same(a, b, atol=1e-5):
    (la, ga), (lb, gb) = a, b
    assert la.keys() == lb.keys()
    for k in la:
        assert torch.allclose(la[k], lb[k], atol=atol, rtol=1e-4), (k, la[k], lb[k])
    assert ga.keys() == gb.keys()
    for k in ga:
        assert torch.allclose(ga[k], gb[k], atol=atol, rtol=1e-3), (k, (ga[k] - gb[k]).abs().max())


@pytest.mark.parametrize("overrides", [
    ("model.fusion.cache_visual_kv=false",),
    ("model.objectives.mlm.logits=all",),
    ("model.fusion.attn_implementation=explicit", "model.vision_encoder.fused_attn=false", "model.text_encoder.attn_implementation=eager"),
    ("model.fusion.grad_checkpointing=true", "model.vision_encoder.grad_checkpointing=true", "model.text_encoder.grad_checkpointing=true"),
], ids=["no_kv_cache", "mlm_logits_all", "explicit_attention", "activation_checkpointing"])
def test_fast_path_matches_plain_path(tiny_cfg, tokenizer, overrides):
    ref, other = _pair(tiny_cfg, tokenizer, *overrides)
    batch = _batch(tokenizer)
    # the switch took effect (a comparison of two identical paths would prove nothing)
    rows, layer_calls = {}, []
    for name, m in (("ref", ref), ("other", other)):
        m.heads["mlm"].register_forward_hook(lambda mod, inp, out, name=name: rows.__setitem__(name, inp[0].shape[0]))
    other.fusion.layer[0].register_forward_pre_hook(lambda *a: layer_calls.append(1))  # pre: recompute may stop early
    a, b = _losses_and_grads(ref, batch), _losses_and_grads(other, batch)
    assert {"loss_itc", "loss_itm", "loss_mlm"} <= set(a[0])
    _assert_same(a, b)
    key = overrides[0]
    if "cache_visual_kv" in key:
        assert ref.fusion.cache_visual_kv and not other.fusion.cache_visual_kv
    elif "mlm.logits" in key:  # the head saw the masked positions only, or every position
        assert rows["ref"] == int(batch["mlm_positions"].sum()) and rows["other"] == batch["input_ids"].numel()
    elif "attn_implementation" in key:
        assert all(not m.fused_attn for m in other.vision_encoder.modules() if hasattr(m, "fused_attn"))
        assert other.text_encoder.config._attn_implementation == "eager"
        assert all(m.impl == "explicit" for m in other.fusion.modules() if hasattr(m, "keep_attention"))
    else:  # checkpointed: each fusion layer ran again in the backward pass
        assert other.vision_encoder.vit.grad_checkpointing and other.fusion.grad_checkpointing
        assert any(getattr(m, "gradient_checkpointing", False) for m in other.text_encoder.modules())
        assert len(layer_calls) == 2 * 2  # ITM+MLM fusion passes of the student, each run twice


def test_padded_text_rows_change_nothing_under_eager_text_attention(tiny_cfg, tokenizer):
    """The eager text encoder gets an additive mask (transformers adds it to the scores):
    padding a batch further leaves every real position's output unchanged."""
    model = build_model(tiny_cfg("model.text_encoder.attn_implementation=eager"), tokenizer).eval()
    b = _batch(tokenizer)
    ids, mask = b["input_ids"], b["attention_mask"]
    pad = torch.zeros(ids.shape[0], 3, dtype=ids.dtype)
    with torch.no_grad():
        short = model.encode_text(ids, mask)[0]
        long = model.encode_text(torch.cat([ids, pad], 1), torch.cat([mask, pad], 1))[0][:, : ids.shape[1]]
    keep = mask.bool()
    assert torch.allclose(short[keep], long[keep], atol=1e-5)


def test_kv_cache_projects_each_image_once(tiny_cfg, tokenizer):
    """With the cache, the student's cross-attention key projection sees each image of the
    batch once per step (ITM's 3B pairs and MLM's B pairs share it); without, once per pair."""
    rows = {}

    def count(model):
        rows["n"] = 0
        lin = model.fusion.layer[0].crossattention.self.key
        return lin.register_forward_hook(lambda m, inp, out: rows.__setitem__("n", rows["n"] + inp[0].shape[0]))

    batch = _batch(tokenizer)
    b = batch["input_ids"].shape[0]
    for overrides, expected in (((), b), (("model.fusion.cache_visual_kv=false",), 3 * b + b)):
        torch.manual_seed(0)
        model = build_model(tiny_cfg(*overrides), tokenizer)
        model.set_distillation_scale(1.0)
        h = count(model)
        model(dict(batch))
        h.remove()
        assert rows["n"] == expected, overrides


def test_cached_kv_of_another_module_is_ignored(tiny_cfg, tokenizer):
    """Keys/values made by the student's fusion are never used by the teacher's copy."""
    from albef.modeling.fusion.visual import VisualInput

    torch.manual_seed(0)
    model = build_model(tiny_cfg(), tokenizer).eval()
    with torch.no_grad():
        for p in model.fusion.parameters():
            p.add_(0.1)  # student != teacher
        b = _batch(tokenizer)
        tokens = model.encode_image(b["image"])[0]
        text = model.encode_text(b["input_ids"], b["attention_mask"])[0]
        student_visual = model.prepare_visual(tokens)
        assert student_visual.kv is not None
        assert student_visual.kv.owner == tuple(layer.crossattention.self for layer in model.fusion.layer)
        fusion_m = model.teacher.model.fusion  # the teacher's EMA copy
        with_student_kv = fusion_m(text, b["attention_mask"], student_visual)
        plain = fusion_m(text, b["attention_mask"], VisualInput.of(tokens))
        own = fusion_m(text, b["attention_mask"], fusion_m.project_visual(tokens))
        student = model.fuse(text, b["attention_mask"], student_visual)
    assert torch.allclose(with_student_kv, plain, atol=1e-6) and torch.allclose(own, plain, atol=1e-6)
    assert not torch.allclose(student, plain, atol=1e-3)


def test_alpha_is_a_tensor_filled_in_place(tiny_cfg, tokenizer):
    """The ramp writes this step's alpha into one 0-d buffer (a compiled step reads the new
    value without recompiling); a ramp at 0 gives exactly the losses of no distillation."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), tokenizer)
    buf = model.teacher.alpha_now
    model.set_distillation_scale(0.5)
    assert model.teacher.alpha_now is buf and buf.dim() == 0
    assert buf.item() == pytest.approx(model.teacher.alpha * 0.5) and model.distillation_alpha == pytest.approx(model.teacher.alpha * 0.5)
    alphas = model.objective_alphas()  # what the model hands each objective this step
    assert alphas["itc"] is buf and alphas["mlm"] is buf

    batch = _batch(tokenizer)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
        off = build_model(tiny_cfg("model.teacher.alpha=0.0"), tokenizer)
        off.load_state_dict(model.state_dict())
        assert all(a is None for a in off.objective_alphas().values())
        model.set_distillation_scale(0.0)
        at_zero = model(dict(batch))
        no_md = off(dict(batch))
        model.set_distillation_scale(1.0)
        full = model(dict(batch))
    for k in ("loss_itc", "loss_mlm"):
        assert torch.allclose(at_zero[k], no_md[k], atol=1e-6), k
        assert not torch.allclose(full[k], no_md[k], atol=1e-4), k


def _run_steps(tiny_cfg, tokenizer, compile_kwargs, steps: int = 3):
    from albef.engine.train_loop import SimpleTrainer
    from albef.engine.defaults import build_optimizer
    from albef.utils.events import EventStorage

    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer)
    model.set_distillation_scale(1.0)
    opt = build_optimizer(cfg, model)
    batches = [_batch(tokenizer, seed=s) for s in range(steps)]
    trainer = SimpleTrainer(model, batches, opt, device=torch.device("cpu"), clip_grad=5.0, global_batch=4, compile=compile_kwargs)
    losses = []
    with EventStorage(0) as trainer.storage:
        for i in range(steps):
            trainer.iter = trainer.storage.iter = i
            model.set_distillation_scale((i + 1) / steps)  # alpha changes every step: no recompile
            trainer.run_step()
            losses.append(trainer.storage.history("total_loss").latest())
    return losses, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_step_matches_eager_step(tiny_cfg, tokenizer, backend):
    """The whole forward + backward compiled as one graph (no graph break, no recompile as
    alpha ramps) trains exactly as the eager step: same losses, same weights, same queue."""
    import torch._dynamo

    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    eager_losses, eager_state = _run_steps(tiny_cfg, tokenizer, None)
    comp_losses, comp_state = _run_steps(tiny_cfg, tokenizer, {"backend": backend})
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1
    assert comp_losses == pytest.approx(eager_losses, rel=1e-4, abs=1e-5)
    for k, v in eager_state.items():
        if v.is_floating_point():
            assert torch.allclose(comp_state[k], v, atol=1e-4, rtol=1e-3), k
        else:
            assert torch.equal(comp_state[k], v), k


def test_padding_and_loader_settings_from_config(tiny_cfg, tokenizer):
    """data.padding (auto: fixed length exactly when the step is compiled) and the
    data.loader keys reach the DataLoader; a bad value names its key."""
    from albef.config import runtime
    from albef.data import build as data_build

    cfg = tiny_cfg()
    ds = data_build.build_dataset(cfg, "train")
    assert not runtime.compile_enabled(cfg) and not runtime.pad_to_max(cfg)  # CPU: eager, longest
    assert runtime.pad_to_max(tiny_cfg("train.compile=on"))
    cfg = tiny_cfg("data.padding=max_length", "data.num_workers=1", "data.loader.prefetch_factor=2", "data.loader.persistent_workers=false")
    loader = data_build.build_train_loader(cfg, ds, tokenizer)
    assert loader.prefetch_factor == 2 and not loader.persistent_workers and not loader.pin_memory
    col = loader.collate_fn
    batch = col([ds[0], ds[1]])
    assert batch["input_ids"].shape[1] == cfg.data.max_tokens
    short = data_build.build_collator(cfg, ds, tokenizer)([ds[0], ds[1]])
    assert short["input_ids"].shape[1] <= cfg.data.max_tokens
    with pytest.raises(ValueError, match="data.loader.pin_memory"):
        runtime.pin_memory(tiny_cfg("data.loader.pin_memory=sometimes"))
    with pytest.raises(ValueError, match="data.padding"):
        runtime.pad_to_max(tiny_cfg("data.padding=bucket"))
    with pytest.raises(ValueError, match="train.compile"):
        runtime.compile_enabled(tiny_cfg("train.compile=maybe"))


def test_compiled_forward_sees_the_collators_counts():
    """The compiled step receives the batch's tensors and its dict of per-batch counts (so
    ``text_negatives_*`` are logged under ``train.compile`` too), never its lists and strings."""
    from albef.engine.train_loop import CompiledForward

    seen = {}

    def forward(batch):
        seen.update(batch)
        return batch["x"].sum(), dict(batch.get("stats") or {}), None

    fwd = CompiledForward(forward, backend="eager")
    stats = {"text_negatives_no_rule": torch.tensor(2)}
    losses, out, _ = fwd({"x": torch.ones(3), "stats": stats, "skipped": ["a.jpg"], "caption": "a red circle"})
    assert float(losses) == 3.0 and int(out["text_negatives_no_rule"]) == 2
    assert set(seen) == {"x", "stats"}
