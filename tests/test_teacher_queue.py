"""Tests of the momentum teacher, the feature queue, teacher checkpointing, NoTeacher and the fusion attention."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from albef.modeling.fusion.cross_attention import CrossAttentionFusion
from albef.modeling.queue import FeatureQueue
from albef.modeling.teachers.momentum import MomentumTeacher
from albef.modeling.teachers.none import NoTeacher


# --------------------------------------------------------------------------- MomentumTeacher.update
def _randomise(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))


def test_momentum_update_is_exact_ema_and_leaves_student_alone():
    g = torch.Generator().manual_seed(0)
    student = nn.ModuleDict({"a": nn.Linear(3, 4), "b": nn.Sequential(nn.Linear(4, 2), nn.LayerNorm(2))})
    m = 0.9
    teacher = MomentumTeacher(momentum=m, queue_size=0, embed_dim=2)
    teacher.attach(student)
    # a fresh copy: equal values, different tensors, no gradients
    for (n, p), (n_m, p_m) in zip(student.named_parameters(), teacher.model.named_parameters()):
        assert n == n_m and torch.equal(p, p_m) and p is not p_m
        assert p.requires_grad and not p_m.requires_grad
    _randomise(student, g)
    _randomise(teacher.model, g)
    for p in student.parameters():
        p.grad = torch.full_like(p, 7.0)
    before_t = {n: p.detach().clone() for n, p in teacher.model.named_parameters()}
    before_s = {n: p.detach().clone() for n, p in student.named_parameters()}

    teacher.update(student)

    for n, p_m in teacher.model.named_parameters():
        t_old, s = before_t[n].flatten().tolist(), before_s[n].flatten().tolist()
        expected = torch.tensor([m * a + (1 - m) * b for a, b in zip(t_old, s)]).view_as(p_m)
        torch.testing.assert_close(p_m.detach(), expected, rtol=1e-6, atol=1e-6)
        assert not torch.equal(p_m.detach(), before_t[n])
    for n, p in student.named_parameters():
        assert torch.equal(p.detach(), before_s[n])
        assert torch.equal(p.grad, torch.full_like(p, 7.0))
        assert p.requires_grad


def test_momentum_update_moves_tied_weights_once():
    g = torch.Generator().manual_seed(1)
    emb = nn.Embedding(5, 3)
    head = nn.Linear(3, 5, bias=True)
    head.weight = emb.weight  # tied, as the MLM decoder and the word embeddings
    student = nn.ModuleDict({"emb": emb, "head": head})
    m = 0.5
    teacher = MomentumTeacher(momentum=m, queue_size=0, embed_dim=2)
    teacher.attach(student)
    assert teacher.model["head"].weight is teacher.model["emb"].weight
    assert teacher.model["emb"].weight is not emb.weight
    _randomise(student, g)
    _randomise(teacher.model, g)
    t_old = teacher.model["emb"].weight.detach().clone()
    t_bias_old = teacher.model["head"].bias.detach().clone()
    s = emb.weight.detach().clone()

    teacher.update(student)

    # moved once: m * t + (1 - m) * s, not m^2 * t + (1 - m^2) * s
    torch.testing.assert_close(teacher.model["emb"].weight.detach(), m * t_old + (1 - m) * s, rtol=0, atol=1e-6)
    assert teacher.model["head"].weight is teacher.model["emb"].weight
    torch.testing.assert_close(teacher.model["head"].bias.detach(), m * t_bias_old + (1 - m) * head.bias.detach(),
                               rtol=0, atol=1e-6)
    assert torch.equal(emb.weight.detach(), s)


@pytest.mark.parametrize("m", [0.0, 1.0])
def test_momentum_extremes(m):
    g = torch.Generator().manual_seed(2)
    student = nn.ModuleDict({"a": nn.Linear(2, 2)})
    teacher = MomentumTeacher(momentum=m, queue_size=0, embed_dim=2)
    teacher.attach(student)
    _randomise(student, g)
    _randomise(teacher.model, g)
    old = teacher.model["a"].weight.detach().clone()
    teacher.update(student)
    want = student["a"].weight.detach() if m == 0.0 else old
    assert torch.equal(teacher.model["a"].weight.detach(), want)


def test_real_model_momentum_update(tiny_cfg, tokenizer):
    from albef.modeling import build_model

    torch.manual_seed(0)
    model = build_model(tiny_cfg(), tokenizer)
    m = model.teacher.momentum
    assert m == pytest.approx(0.995)
    # the teacher starts as an exact copy (official copy_params), with no parameter shared with the student
    student_ids = {id(p) for p in model.student_modules().parameters()}
    for (n, p), (n_m, p_m) in zip(model.student_modules().named_parameters(), model.teacher.model.named_parameters()):
        assert n == n_m and torch.equal(p, p_m) and id(p_m) not in student_ids
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    student = {n: p.detach().clone() for n, p in model.student_modules().named_parameters()}
    teacher_before = {n: p.detach().clone() for n, p in model.teacher.model.named_parameters()}
    assert set(student) == set(teacher_before)
    model.after_step()  # the EMA step of after_step (no features to enqueue)
    for n, p_m in model.teacher.model.named_parameters():
        torch.testing.assert_close(p_m.detach(), m * teacher_before[n] + (1 - m) * student[n], rtol=1e-5, atol=1e-6)
    for n, p in model.student_modules().named_parameters():
        assert torch.equal(p.detach(), student[n])


# --------------------------------------------------------------------------- FeatureQueue
def _feats(start, n, e=2):
    """Rows [start, start+n): row k is [k, k + 0.5, ...] (image) — easy to recognise."""
    return torch.arange(start, start + n, dtype=torch.float32)[:, None] + 0.5 * torch.arange(e)[None]


def _simulate(size, batches):
    """Sequential ring-buffer writes, one row at a time (the obvious reference)."""
    slots, ptr = [None] * size, 0
    for rows in batches:
        for r in rows:
            slots[ptr] = r
            ptr = (ptr + 1) % size
    return slots, ptr


def test_queue_wraps_around_with_batches_not_dividing_size(monkeypatch):
    q = FeatureQueue(5, 2)
    init_img, init_txt = q.image_queue.clone(), q.text_queue.clone()
    assert torch.allclose(init_img.norm(dim=1), torch.ones(5)) and (q.idx_queue == -100).all()
    assert q.ptr.tolist() == [0] and q.ptr.dtype == torch.long
    ptr_device = q.ptr.device

    def no_item(self):
        raise AssertionError("Tensor.item() called in FeatureQueue.enqueue")

    batches = []
    start = 0
    for n in (3, 3, 3, 2, 7):  # wraps after the second batch; the last is larger than Q
        batches.append(list(range(start, start + n)))
        img, txt = _feats(start, n), -_feats(start, n)
        idx = torch.arange(start, start + n) * 10
        monkeypatch.setattr(torch.Tensor, "item", no_item)
        q.enqueue(img, txt, idx)
        monkeypatch.undo()
        start += n

        slots, ptr = _simulate(5, batches)
        assert q.ptr.tolist() == [ptr] and q.ptr.device == ptr_device and q.ptr.dtype == torch.long
        for s, row in enumerate(slots):
            if row is None:  # never written: still the initial random unit vector
                assert torch.equal(q.image_queue[s], init_img[s]) and torch.equal(q.text_queue[s], init_txt[s])
                assert q.idx_queue[s] == -100
            else:
                assert torch.equal(q.image_queue[s], _feats(row, 1)[0])
                assert torch.equal(q.text_queue[s], -_feats(row, 1)[0])
                assert q.idx_queue[s] == row * 10
    # after 3+3+3+2+7 = 18 rows: ptr 18 % 5 = 3, and the queue holds rows 13..17
    assert q.ptr.tolist() == [3]
    assert sorted(q.idx_queue.tolist()) == [130, 140, 150, 160, 170]


def test_queue_batch_larger_than_size_keeps_last_rows():
    q = FeatureQueue(4, 3)
    q.enqueue(_feats(0, 1, 3), _feats(0, 1, 3), torch.tensor([0]))  # ptr 1
    q.enqueue(_feats(100, 10, 3), _feats(100, 10, 3), torch.arange(100, 110))
    slots, ptr = _simulate(4, [[0], list(range(100, 110))])
    assert q.ptr.tolist() == [ptr] == [(1 + 10) % 4]
    assert q.idx_queue.tolist() == slots
    assert set(slots) == {106, 107, 108, 109}
    for s, row in enumerate(slots):
        assert torch.equal(q.image_queue[s], _feats(row, 1, 3)[0])


def test_queue_idx_none_stores_minus_100_and_casts():
    q = FeatureQueue(3, 2)
    q.enqueue(_feats(0, 3), _feats(0, 3), torch.tensor([1, 2, 3], dtype=torch.int32))
    assert q.idx_queue.dtype == torch.long and q.idx_queue.tolist() == [1, 2, 3]
    q.enqueue(_feats(5, 2).double(), _feats(5, 2).half(), None)
    assert q.idx_queue.tolist() == [-100, -100, 3]
    assert q.image_queue.dtype == torch.float32 and q.text_queue.dtype == torch.float32
    assert torch.equal(q.image_queue[:2], _feats(5, 2))
    assert q.ptr.tolist() == [2]


def test_queue_of_size_zero_is_a_no_op():
    q = FeatureQueue(0, 2)
    q.enqueue(_feats(0, 3), _feats(0, 3), None)
    assert q.image_queue.shape == (0, 2) and q.ptr.tolist() == [0]


# --------------------------------------------------------------------------- checkpointing the teacher
def _batch(tokenizer, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    caps = ["a red circle left of a blue square", "a green triangle above a red square",
            "a blue square below a green circle", "a red triangle right of a blue circle"][:b]
    enc = tokenizer(caps, padding="longest", return_tensors="pt", return_token_type_ids=False)
    return {"image": torch.randn(b, 3, 32, 32, generator=g), "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"], "image_id": torch.arange(b) + 10 * seed}


def test_state_dict_holds_teacher_and_queue_and_round_trips(tiny_cfg, tokenizer):
    from albef.modeling import build_model

    torch.manual_seed(0)
    model = build_model(tiny_cfg(), tokenizer)
    sd = model.state_dict()
    for key in ("teacher.queue.image_queue", "teacher.queue.text_queue", "teacher.queue.idx_queue", "teacher.queue.ptr"):
        assert key in sd
    for name, _ in model.student_modules().named_parameters():
        assert f"teacher.model.{name}" in sd, name
    assert sd["teacher.queue.image_queue"].shape == (24, 16)

    with torch.no_grad():
        model.after_step(model(_batch(tokenizer, seed=0))["state"])
        model.after_step(model(_batch(tokenizer, seed=1))["state"])
    assert model.teacher.queue.ptr.tolist() == [8]
    assert model.teacher.queue.idx_queue[:8].tolist() == [0, 1, 2, 3, 10, 11, 12, 13]

    sd = model.state_dict()
    torch.manual_seed(123)
    fresh = build_model(tiny_cfg(), tokenizer)
    assert not torch.equal(fresh.teacher.queue.image_queue, sd["teacher.queue.image_queue"])
    fresh.load_state_dict(sd, strict=True)
    for key, value in sd.items():
        assert torch.equal(fresh.state_dict()[key], value), key
    q, fq = model.teacher.queue, fresh.teacher.queue
    for name in ("image_queue", "text_queue", "idx_queue", "ptr"):
        assert torch.equal(getattr(q, name), getattr(fq, name))
    # ties survive the load (the teacher's decoder is its own word embedding)
    t = fresh.teacher.model
    assert t["heads"]["mlm"].decoder.weight is t["text_encoder"].get_input_embeddings().weight


def test_forward_changes_no_state_and_after_step_does(tiny_cfg, tokenizer):
    """forward computes; the EMA, the queue and the temperature clamp happen in after_step only."""
    from albef.modeling import build_model

    torch.manual_seed(0)
    model = build_model(tiny_cfg(), tokenizer)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)  # student != teacher, so an EMA step would show
        model.temp.fill_(1e-5)  # below temp_min: only after_step may clamp it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model(_batch(tokenizer, seed=0))
        out2 = model(_batch(tokenizer, seed=1))
    after_forward = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after_forward[k], v), f"forward changed {k}"
    st = out["state"]
    assert st["image_feat_m"].shape == (4, 16) and st["text_feat_m"].shape == (4, 16)
    assert torch.equal(st["image_id"], torch.arange(4))
    model.after_step(out2["state"])
    sd = model.state_dict()
    assert sd["teacher.queue.ptr"].tolist() == [4]
    assert torch.equal(sd["teacher.queue.image_queue"][:4], out2["state"]["image_feat_m"])
    assert sd["teacher.queue.idx_queue"][:4].tolist() == [10, 11, 12, 13]
    assert float(model.temp.detach()) == pytest.approx(model.temp_min)
    moved = [k for k in before if k.startswith("teacher.model.") and not torch.equal(before[k], sd[k])]
    assert moved, "after_step did not move the teacher"


# --------------------------------------------------------------------------- NoTeacher
def test_no_teacher_model(tiny_cfg, tokenizer):
    from albef.modeling import build_model

    torch.manual_seed(0)
    model = build_model(tiny_cfg("model.teacher={name: NoTeacher}"), tokenizer)
    assert isinstance(model.teacher, NoTeacher)
    assert not any(k.startswith("teacher.") for k in model.state_dict())
    assert model.teacher.current_alpha == 0.0
    model.teacher.set_alpha_scale(1.0)
    assert model.teacher.current_alpha == 0.0
    n_params = sum(p.numel() for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())

    batch = _batch(tokenizer)
    img_f, txt_f = torch.randn(4, 16, requires_grad=True), torch.randn(4, 16, requires_grad=True)
    out_t = model.teacher.encode(batch, image_feat=img_f, text_feat=txt_f)
    assert all(a is None for a in model.objective_alphas().values()) and out_t.visual is None and out_t.modules is None
    for t in (out_t.image_feat_m, out_t.text_feat_m, out_t.image_feat_all, out_t.text_feat_all):
        assert not t.requires_grad  # targets are detached online features
    assert torch.equal(out_t.image_feat_all, img_f.detach()) and torch.equal(out_t.text_feat_all, txt_f.detach())
    assert out_t.image_feat_all.shape == (4, 16) and torch.equal(out_t.idx_all, batch["image_id"])

    out = model(batch)
    loss = sum(v for k, v in out.items() if k.startswith("loss_"))
    assert {"loss_itc", "loss_itm", "loss_mlm"} <= set(out)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.temp.grad is not None
    model.after_step(out.get("state"))  # no EMA, no queue: must not fail
    assert sum(p.numel() for p in model.parameters()) == n_params


# --------------------------------------------------------------------------- fusion attention
def _naive_attention(x, ctx, mask, qkv, heads):
    """softmax(Q K^T / sqrt(d) + mask) V written with explicit matmuls."""
    b, l, h = x.shape
    s = ctx.shape[1]
    d = h // heads
    q = (x @ qkv.query.weight.t() + qkv.query.bias).view(b, l, heads, d).permute(0, 2, 1, 3)
    k = (ctx @ qkv.key.weight.t() + qkv.key.bias).view(b, s, heads, d).permute(0, 2, 1, 3)
    v = (ctx @ qkv.value.weight.t() + qkv.value.bias).view(b, s, heads, d).permute(0, 2, 1, 3)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    return out.permute(0, 2, 1, 3).reshape(b, l, h)


def _naive_add_norm(h, residual, mod):
    y = h @ mod.dense.weight.t() + mod.dense.bias + residual
    mu = y.mean(-1, keepdim=True)
    var = ((y - mu) ** 2).mean(-1, keepdim=True)
    return (y - mu) / torch.sqrt(var + mod.LayerNorm.eps) * mod.LayerNorm.weight + mod.LayerNorm.bias


def test_fusion_sdpa_matches_naive_attention_with_padding():
    torch.manual_seed(0)
    hidden, width, heads = 8, 6, 2
    fusion = CrossAttentionFusion(num_layers=1, num_heads=heads, intermediate_size=16, hidden_dropout_prob=0.1,
                                  attention_probs_dropout_prob=0.1, layer_norm_eps=1e-6,
                                  hidden_size=hidden, encoder_width=width).eval()
    with torch.no_grad():  # non-trivial LayerNorm / biases
        for p in fusion.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    layer = fusion.layer[0]
    x = torch.randn(2, 5, hidden)
    image = torch.randn(2, 4, width)
    text_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    image_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])

    with torch.no_grad():
        # the cross-attention block alone
        got = layer.crossattention(x, image, image_mask)
        ref = _naive_add_norm(_naive_attention(x, image, image_mask, layer.crossattention.self, heads), x,
                              layer.crossattention.output)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        # without a mask every image token is attended
        got = layer.crossattention(x, image, None)
        ref = _naive_add_norm(_naive_attention(x, image, None, layer.crossattention.self, heads), x,
                              layer.crossattention.output)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)

        # the whole layer: self-attention (text padding mask) -> cross-attention -> FFN
        h1 = _naive_add_norm(_naive_attention(x, x, text_mask, layer.attention.self, heads), x, layer.attention.output)
        h2 = _naive_add_norm(_naive_attention(h1, image, image_mask, layer.crossattention.self, heads), h1,
                             layer.crossattention.output)
        ffn = F.gelu(h2 @ layer.intermediate.dense.weight.t() + layer.intermediate.dense.bias)
        ref = _naive_add_norm(ffn, h2, layer.output)
        got = fusion(x, text_mask, image, image_mask)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)

        # padded keys have no influence at all
        x2, image2 = x.clone(), image.clone()
        x2[1, 3:] = torch.randn(2, hidden) * 100
        image2[1, 2:] = torch.randn(2, width) * 100
        out2 = fusion(x2, text_mask, image2, image_mask)
        torch.testing.assert_close(out2[1, :3], got[1, :3], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out2[0], got[0], rtol=0, atol=0)


def test_momentum_teacher_rejects_bad_arguments():
    with pytest.raises(ValueError):
        MomentumTeacher(momentum=1.5)
    with pytest.raises(ValueError):
        MomentumTeacher(momentum=-0.1)
    with pytest.raises(ValueError):
        MomentumTeacher(queue_size=-1)
    t = MomentumTeacher(alpha=0.4, queue_size=0)
    t.set_alpha_scale(0.5)
    assert t.current_alpha == pytest.approx(0.2)
    assert not t.has("heads.mlm")  # nothing attached yet


def test_text_encoder_matches_bert_model_forward():
    """Our direct embeddings+encoder call (no host sync) equals transformers' BertModel.forward."""
    from albef.modeling.encoders.bert_text import BertTextEncoder

    torch.manual_seed(0)
    enc = BertTextEncoder(num_layers=2, config={"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}, vocab_size=50).eval()
    ids = torch.randint(5, 50, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0
    mask[1, 6:] = 0
    ref = enc.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(enc(ids, mask), ref, rtol=0, atol=1e-6)
    # padding changes nothing for the real tokens
    ids2 = ids.clone()
    ids2[0, 4:] = 7
    torch.testing.assert_close(enc(ids2, mask)[0, :4], enc(ids, mask)[0, :4], rtol=0, atol=1e-6)
