"""Tests of the training objectives (ITC, ITM, MLM) against hand computations, and gradient flow."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from albef.modeling.context import StepContext
from albef.modeling.fusion.visual import VisualInput
from albef.modeling.teachers.base import Teacher, TeacherOutput
from albef.modeling.heads.itm_head import ITMHead
from albef.modeling.heads.mlm_head import MLMHead
from albef.modeling.miners.base import MinedNegatives
from albef.modeling.objectives.itc import ITCLoss
from albef.modeling.objectives.itm import ITMLoss
from albef.modeling.objectives.mlm import MLMLoss, mask_tokens


# --------------------------------------------------------------------------- helpers
def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _unit_rows(n, e, gen):
    return F.normalize(torch.randn(n, e, generator=gen), dim=1)


class _OnTokens:
    """A fake fusion called as objectives call the model's: with a VisualInput (the fakes take its first token set)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, text, mask, visual):
        return self.fn(text, mask, visual.tokens[0])


def _teacher_modules(model):
    """The fake teacher's EMA modules, as a TeacherOutput hands them to objectives."""
    t = getattr(model, "teacher", None)
    if t is None:
        return None
    head = t.head("mlm")
    return SimpleNamespace(text_encoder=lambda ids, mask: t.encode_text(ids, mask)[0], fusion=_OnTokens(t.fuse),
                           heads={} if head is None else {"mlm": head})


def _make_ctx(image_feat, text_feat, *, image_feat_m=None, text_feat_m=None, image_queue=None, text_queue=None,
              image_id=None, idx_queue=None, temp=0.07, model=None, batch=None,
              image_embeds=None, text_embeds=None, image_embeds_m=None):
    """A StepContext built by hand over fake components in ``model`` (``text_encoder``,
    ``fusion``, ``heads`` and a fake ``teacher``); no real model."""
    b, e = image_feat.shape
    image_feat_m = image_feat.clone() if image_feat_m is None else image_feat_m
    text_feat_m = text_feat.clone() if text_feat_m is None else text_feat_m
    image_queue = torch.zeros(0, e) if image_queue is None else image_queue
    text_queue = torch.zeros(0, e) if text_queue is None else text_queue
    idx_all = None
    if image_id is not None:
        q = image_queue.shape[0]
        idx_queue = torch.full((q,), -100, dtype=torch.long) if idx_queue is None else idx_queue
        idx_all = torch.cat([image_id, idx_queue])
    teacher = TeacherOutput(
        image_feat_m=image_feat_m, text_feat_m=text_feat_m,
        image_feat_all=torch.cat([image_feat_m, image_queue]), text_feat_all=torch.cat([text_feat_m, text_queue]),
        idx_all=idx_all, visual=None if image_embeds_m is None else VisualInput.of(image_embeds_m),  # the teacher's image tokens
        modules=_teacher_modules(model),
    )
    batch = dict(batch or {})
    if image_id is not None:
        batch["image_id"] = image_id
    image_embeds = image_embeds if image_embeds is not None else torch.zeros(b, 1, 1)
    return StepContext(
        batch, image_embeds=image_embeds, text_embeds=text_embeds if text_embeds is not None else torch.zeros(b, 1, 1),
        image_feat=image_feat, text_feat=text_feat, temp=torch.tensor(float(temp)), teacher=teacher,
        visual=VisualInput.of(image_embeds), text_encoder=getattr(model, "text_encoder", None),
        fusion=_OnTokens(model.fusion) if model is not None else None, heads=model.heads if model is not None else {},
    )


def _hand_itc(img, txt, img_m, txt_m, img_q, txt_q, ids, ids_q, alpha, temp):
    """ALBEF's ITC written out element by element on Python lists."""
    img, txt, img_m, txt_m, img_q, txt_q = (t.tolist() for t in (img, txt, img_m, txt_m, img_q, txt_q))
    b = len(img)
    txt_all, img_all = txt_m + txt_q, img_m + img_q
    ids_all = None if ids is None else ids.tolist() + ids_q.tolist()

    def row_loss(i, query, query_m, keys):
        logits = [_dot(query, k) / temp for k in keys]
        lse = _lse(logits)
        n = len(keys)
        if ids_all is None:
            y = [1.0 if j == i else 0.0 for j in range(n)]
        else:
            pos = [1.0 if ids_all[j] == ids_all[i] else 0.0 for j in range(n)]
            y = [p / sum(pos) for p in pos]
        if alpha > 0:
            lm = [_dot(query_m, k) / temp for k in keys]
            lse_m = _lse(lm)
            y = [alpha * math.exp(lm[j] - lse_m) + (1 - alpha) * y[j] for j in range(n)]
        return -sum(y[j] * (logits[j] - lse) for j in range(n))

    i2t = sum(row_loss(i, img[i], img_m[i], txt_all) for i in range(b)) / b
    t2i = sum(row_loss(i, txt[i], txt_m[i], img_all) for i in range(b)) / b
    return (i2t + t2i) / 2


# --------------------------------------------------------------------------- ITC
def test_itc_closed_form_two_orthogonal_pairs():
    # image i == text i == e_i, temp 1, no queue: every row has logits [1, 0] with the positive first
    # (or [0, 1] with the positive second), so CE = log(1 + e^-1) in both directions.
    eye = torch.eye(2)
    ctx = _make_ctx(eye.clone(), eye.clone(), temp=1.0)
    loss = ITCLoss()(ctx)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_itc_no_ids_one_hot_diagonal_with_queue():
    g = torch.Generator().manual_seed(0)
    b, e, q, temp = 3, 4, 2, 0.5
    img, txt = _unit_rows(b, e, g), _unit_rows(b, e, g)
    img_m, txt_m = _unit_rows(b, e, g), _unit_rows(b, e, g)
    img_q, txt_q = _unit_rows(q, e, g), _unit_rows(q, e, g)
    ctx = _make_ctx(img, txt, image_feat_m=img_m, text_feat_m=txt_m, image_queue=img_q, text_queue=txt_q, temp=temp)
    loss = ITCLoss()(ctx)
    expected = _hand_itc(img, txt, img_m, txt_m, img_q, txt_q, None, None, 0.0, temp)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert ctx.sim_i2t.shape == (b, b + q)


def test_itc_image_ids_duplicates_in_batch_and_queue_uniform_over_positives():
    g = torch.Generator().manual_seed(1)
    b, e, q, temp = 3, 3, 4, 0.3
    img, txt = _unit_rows(b, e, g), _unit_rows(b, e, g)
    img_m, txt_m = _unit_rows(b, e, g), _unit_rows(b, e, g)
    img_q, txt_q = _unit_rows(q, e, g), _unit_rows(q, e, g)
    ids = torch.tensor([7, 7, 9])                 # samples 0 and 1 show the same image
    ids_q = torch.tensor([9, -100, 7, 5])         # and the queue holds more captions of 7 and 9
    ctx = _make_ctx(img, txt, image_feat_m=img_m, text_feat_m=txt_m, image_queue=img_q, text_queue=txt_q,
                    image_id=ids, idx_queue=ids_q, temp=temp)
    loss = ITCLoss()(ctx)
    expected = _hand_itc(img, txt, img_m, txt_m, img_q, txt_q, ids, ids_q, 0.0, temp)
    diagonal_only = _hand_itc(img, txt, img_m, txt_m, img_q, txt_q, None, None, 0.0, temp)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert abs(expected - diagonal_only) > 1e-3  # the ids matter in this example


@pytest.mark.parametrize("with_ids", [False, True])
def test_itc_alpha_mixes_teacher_softmax(with_ids):
    g = torch.Generator().manual_seed(2)
    b, e, q, temp, alpha = 3, 4, 3, 0.2, 0.4
    img, txt = _unit_rows(b, e, g), _unit_rows(b, e, g)
    img_m, txt_m = _unit_rows(b, e, g), _unit_rows(b, e, g)
    img_q, txt_q = _unit_rows(q, e, g), _unit_rows(q, e, g)
    ids = torch.tensor([1, 2, 1]) if with_ids else None
    ids_q = torch.tensor([2, 3, -100]) if with_ids else None
    ctx = _make_ctx(img, txt, image_feat_m=img_m, text_feat_m=txt_m, image_queue=img_q, text_queue=txt_q,
                    image_id=ids, idx_queue=ids_q, temp=temp)
    loss = ITCLoss()(ctx, alpha)
    expected = _hand_itc(img, txt, img_m, txt_m, img_q, txt_q, ids, ids_q, alpha, temp)
    no_distill = _hand_itc(img, txt, img_m, txt_m, img_q, txt_q, ids, ids_q, 0.0, temp)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert abs(expected - no_distill) > 1e-3


def test_itc_alpha_zero_ignores_teacher_features_for_targets():
    # With alpha 0 the momentum features only enter as keys; changing the query-side momentum
    # features (which only feed the soft targets) must not change the loss.
    g = torch.Generator().manual_seed(3)
    b, e = 2, 2
    img, txt = _unit_rows(b, e, g), _unit_rows(b, e, g)
    txt_m, img_m = _unit_rows(b, e, g), _unit_rows(b, e, g)
    l1 = ITCLoss()(_make_ctx(img, txt, image_feat_m=img_m, text_feat_m=txt_m, temp=0.1))
    # image_feat_all / text_feat_all unchanged, only the *_m used as soft-target queries differ
    ctx2 = _make_ctx(img, txt, image_feat_m=img_m, text_feat_m=txt_m, temp=0.1)
    ctx2.teacher.image_feat_m = _unit_rows(b, e, g)
    ctx2.teacher.text_feat_m = _unit_rows(b, e, g)
    l2 = ITCLoss()(ctx2)
    assert l1.item() == pytest.approx(l2.item(), abs=1e-7)
    expected = _hand_itc(img, txt, img_m, txt_m, torch.zeros(0, e), torch.zeros(0, e), None, None, 0.0, 0.1)
    assert l1.item() == pytest.approx(expected, rel=1e-5)


def test_itc_gradient_reaches_online_features_and_temp():
    g = torch.Generator().manual_seed(4)
    img = _unit_rows(3, 4, g).requires_grad_(True)
    txt = _unit_rows(3, 4, g).requires_grad_(True)
    ctx = _make_ctx(img, txt, image_feat_m=img.detach().clone(), text_feat_m=txt.detach().clone())
    ctx.temp = torch.tensor(0.07, requires_grad=True)
    ctx.sim_i2t = ctx.sim_t2i = None
    ctx.__post_init__()  # the similarities again, now through the learnable temperature
    ITCLoss()(ctx, 0.4).backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert txt.grad is not None and txt.grad.abs().sum() > 0
    assert ctx.temp.grad is not None and torch.isfinite(ctx.temp.grad)


# --------------------------------------------------------------------------- ITM
H, DV, L, S = 3, 2, 4, 3


class _FakeFusion(nn.Module):
    """fused[:, 0] = text[:, 0] + mean_s(image) @ W + 0.1 * (#attended text tokens); other tokens unchanged."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.register_buffer("w", w)
        self.calls = []

    def forward(self, text, mask, image, image_mask=None):
        self.calls.append((text.detach().clone(), mask.clone(), image.detach().clone()))
        cls = text[:, 0] + image.mean(1) @ self.w + 0.1 * mask.sum(1, keepdim=True).to(text.dtype)
        return torch.cat([cls[:, None], text[:, 1:]], dim=1)


def _itm_setup(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(b, L, H, generator=g)
    image = torch.randn(b, S, DV, generator=g)
    mask = torch.zeros(b, L, dtype=torch.long)
    for i in range(b):
        mask[i, : 1 + (i % L)] = 1  # distinct lengths, so a wrong mask permutation shows
    w = torch.randn(DV, H, generator=g)
    fusion = _FakeFusion(w)
    model = SimpleNamespace(fusion=fusion, heads={"itm": ITMHead(H)})
    obj = ITMLoss()
    with torch.no_grad():
        model.heads["itm"].linear.weight.copy_(torch.randn(2, H, generator=g))
        model.heads["itm"].linear.bias.copy_(torch.randn(2, generator=g))
    feats = _unit_rows(b, 4, g)
    return text, image, mask, w, fusion, model, obj, feats


def _hand_itm_ce(t, i, label, text, image, mask, w, head):
    """CE of the pair (text t, image i) with the fake fusion and the ITM head, in plain arithmetic."""
    text, image, mask, w = text.tolist(), image.tolist(), mask.tolist(), w.tolist()
    hw, hb = head.weight.tolist(), head.bias.tolist()
    img_mean = [sum(image[i][s][d] for s in range(S)) / S for d in range(DV)]
    cls = [text[t][0][h] + sum(img_mean[d] * w[d][h] for d in range(DV)) + 0.1 * sum(mask[t]) for h in range(H)]
    logits = [_dot(hw[c], cls) + hb[c] for c in range(2)]
    return _lse(logits) - logits[label]


def test_itm_pinned_negatives_hand_computation_and_pair_order():
    b = 3
    text, image, mask, w, fusion, model, obj, feats = _itm_setup(b)
    neg_img = torch.tensor([2, 0, 1])  # negative image for text b
    neg_txt = torch.tensor([1, 2, 0])  # negative text for image b
    batch = {"attention_mask": mask, "itm_neg_image_idx": neg_img, "itm_neg_text_idx": neg_txt}
    ctx = _make_ctx(feats, feats.clone(), model=model, batch=batch, image_embeds=image, text_embeds=text)
    loss = obj(ctx)

    # one fusion call on 3B pairs, in the documented order
    assert len(fusion.calls) == 1
    t_all, m_all, i_all = fusion.calls[0]
    assert t_all.shape[0] == 3 * b
    torch.testing.assert_close(t_all, torch.cat([text, text, text[neg_txt]]), rtol=0, atol=0)
    torch.testing.assert_close(m_all, torch.cat([mask, mask, mask[neg_txt]]), rtol=0, atol=0)
    torch.testing.assert_close(i_all, torch.cat([image, image[neg_img], image]), rtol=0, atol=0)

    pairs = [(k, k, 1) for k in range(b)] + [(k, int(neg_img[k]), 0) for k in range(b)] + \
            [(int(neg_txt[k]), k, 0) for k in range(b)]
    ces = [_hand_itm_ce(t, i, lab, text, image, mask, w, model.heads["itm"].linear) for t, i, lab in pairs]
    assert loss.item() == pytest.approx(sum(ces) / len(ces), rel=1e-5, abs=1e-6)
    assert float(ctx.stats["dropped_itm_negatives"]) == 0.0

    # Labels order [1]*B + [0]*2B: swapping the label of the positives must change the value
    swapped = [(t, i, 1 - lab) for t, i, lab in pairs]
    ces_swapped = [_hand_itm_ce(t, i, lab, text, image, mask, w, model.heads["itm"].linear) for t, i, lab in swapped]
    assert abs(sum(ces_swapped) / len(ces_swapped) - loss.item()) > 1e-3


class _StubMiner(nn.Module):
    def __init__(self, out: MinedNegatives):
        super().__init__()
        self.out = out
        self.calls = []

    def forward(self, sim_i2t, sim_t2i, image_ids, temp=None):
        self.calls.append((sim_i2t, sim_t2i, image_ids))
        return self.out


def test_itm_invalid_negatives_are_excluded_from_the_mean():
    b = 3
    text, image, mask, w, fusion, model, obj, feats = _itm_setup(b, seed=5)
    neg_img, neg_txt = torch.tensor([1, 2, 0]), torch.tensor([2, 0, 1])
    valid_text = torch.tensor([True, False, True])
    valid_image = torch.tensor([False, False, True])
    obj.miner = _StubMiner(MinedNegatives(neg_img, neg_txt, valid_text, valid_image))
    ids = torch.tensor([4, 5, 6])
    batch = {"attention_mask": mask}
    ctx = _make_ctx(feats, feats.clone(), model=model, batch=batch, image_embeds=image, text_embeds=text,
                    image_id=ids, image_queue=_unit_rows(2, 4, torch.Generator().manual_seed(9)),
                    text_queue=_unit_rows(2, 4, torch.Generator().manual_seed(10)))
    loss = obj(ctx)

    # the miner sees the in-batch block of the similarities (no gradient) and the image ids
    (si2t, st2i, mids), = obj.miner.calls
    assert si2t.shape == (b, b) and st2i.shape == (b, b)
    assert not si2t.requires_grad and not st2i.requires_grad
    torch.testing.assert_close(si2t, ctx.sim_i2t[:, :b].detach())
    torch.testing.assert_close(st2i, ctx.sim_t2i[:, :b].detach())
    assert torch.equal(mids, ids)

    pairs = [(k, k, 1) for k in range(b)]
    pairs += [(k, int(neg_img[k]), 0) for k in range(b) if valid_text[k]]
    pairs += [(int(neg_txt[k]), k, 0) for k in range(b) if valid_image[k]]
    ces = [_hand_itm_ce(t, i, lab, text, image, mask, w, model.heads["itm"].linear) for t, i, lab in pairs]
    assert loss.item() == pytest.approx(sum(ces) / len(ces), rel=1e-5, abs=1e-6)
    assert float(ctx.stats["dropped_itm_negatives"]) == 3.0


def test_itm_real_miner_all_same_image_drops_every_negative():
    b = 3
    text, image, mask, w, fusion, model, obj, feats = _itm_setup(b, seed=6)
    ids = torch.tensor([8, 8, 8])  # every caption shows one image: no valid negative anywhere
    ctx = _make_ctx(feats, feats.clone(), model=model, batch={"attention_mask": mask}, image_embeds=image,
                    text_embeds=text, image_id=ids)
    loss = obj(ctx)
    ces = [_hand_itm_ce(k, k, 1, text, image, mask, w, model.heads["itm"].linear) for k in range(b)]
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(sum(ces) / b, rel=1e-5, abs=1e-6)
    assert float(ctx.stats["dropped_itm_negatives"]) == 2.0 * b


def test_itm_real_miner_never_pairs_a_sample_with_itself():
    b = 4
    torch.manual_seed(0)
    text, image, mask, w, fusion, model, obj, feats = _itm_setup(b, seed=7)
    ids = torch.tensor([0, 0, 1, 2])
    for _ in range(20):
        fusion.calls.clear()
        ctx = _make_ctx(feats, feats.clone(), model=model, batch={"attention_mask": mask}, image_embeds=image,
                        text_embeds=text, image_id=ids, temp=0.05)
        obj(ctx)
        assert float(ctx.stats["dropped_itm_negatives"]) == 0.0
        t_all, _, i_all = fusion.calls[0]
        for k in range(b):
            # block 2: text k with an image of another image id
            j = [jj for jj in range(b) if torch.equal(i_all[b + k], image[jj])]
            assert len(j) == 1 and ids[j[0]] != ids[k]
            # block 3: image k with a text of another image id
            j = [jj for jj in range(b) if torch.equal(t_all[2 * b + k], text[jj])]
            assert len(j) == 1 and ids[j[0]] != ids[k]


# --------------------------------------------------------------------------- MLM masking
def test_mask_tokens_statistics():
    torch.manual_seed(0)
    b, l, vocab, mask_id = 800, 50, 1000, 4
    pad, cls, sep = 0, 1, 2
    ids = torch.randint(5, vocab, (b, l))
    ids[:, 0] = cls
    lengths = torch.randint(5, l + 1, (b,))
    attn = (torch.arange(l)[None] < lengths[:, None]).long()
    ids[torch.arange(b), lengths - 1] = sep
    ids = ids.masked_fill(attn == 0, pad)
    never = torch.tensor([pad, cls, sep])
    out, labels = mask_tokens(ids, attn, 0.15, mask_id, vocab, never)

    eligible = attn.bool() & (ids != pad) & (ids != cls) & (ids != sep)
    chosen = labels != -100
    assert not (chosen & ~eligible).any()  # never pad / CLS / SEP / padding
    assert torch.equal(labels[chosen], ids[chosen])
    assert (labels[~chosen] == -100).all()
    assert torch.equal(out[~chosen], ids[~chosen])  # untouched where not chosen
    frac = chosen.sum().item() / eligible.sum().item()
    assert abs(frac - 0.15) < 0.01

    n = chosen.sum().item()
    became_mask = (out[chosen] == mask_id).float().mean().item()
    unchanged = (out[chosen] == ids[chosen]).float().mean().item()
    other = 1.0 - became_mask - unchanged
    assert abs(became_mask - 0.8) < 0.03, became_mask
    assert abs(unchanged - 0.1) < 0.03, unchanged
    assert abs(other - 0.1) < 0.03, other
    assert n > 2000
    assert ((out >= 0) & (out < vocab)).all()


def test_mask_tokens_prob_one_chooses_every_eligible_token():
    ids = torch.tensor([[1, 7, 8, 9, 2, 0], [1, 5, 2, 0, 0, 0]])
    attn = (ids != 0).long()
    _, labels = mask_tokens(ids, attn, 1.0, 4, 20, torch.tensor([0, 1, 2]))
    expected = torch.tensor([[-100, 7, 8, 9, -100, -100], [-100, 5, -100, -100, -100, -100]])
    assert torch.equal(labels, expected)


def test_mask_tokens_pinned_positions_all_become_mask():
    ids = torch.tensor([[1, 7, 8, 9, 2, 0], [1, 5, 6, 2, 0, 0]])
    attn = (ids != 0).long()
    pos = torch.tensor([[0, 1, 0, 1, 0, 1], [0, 1, 1, 0, 0, 1]], dtype=torch.bool)  # last column is padding
    for seed in range(5):
        torch.manual_seed(seed)
        out, labels = mask_tokens(ids, attn, 0.15, 4, 20, torch.tensor([0, 1, 2]), positions=pos)
        chosen = pos & attn.bool()
        assert (out[chosen] == 4).all()
        assert torch.equal(out[~chosen], ids[~chosen])
        assert torch.equal(labels, ids.masked_fill(~chosen, -100))


# --------------------------------------------------------------------------- MLM loss
V, HM, LM = 11, 4, 5


class _FakeTextEncoder(nn.Module):
    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(table)
        self.calls = []

    def forward(self, ids, mask):
        self.calls.append(ids.clone())
        return self.table[ids] * mask[..., None].to(self.table.dtype)


class _MeanImageFusion(nn.Module):
    def forward(self, text, mask, image, image_mask=None):
        return text + image.mean(1, keepdim=True)


class _FakeTeacher:
    """Teacher functions: encode_text passes the ids through, fuse gives the logits
    table[masked id] + sum(teacher image tokens), the teacher's MLM head is the identity."""

    def __init__(self, table, has=True):
        self.table = table  # [V, V]: teacher logits are table[masked id]
        self.has = has
        self.calls = []

    def encode_text(self, ids, mask):
        return ids, None

    def fuse(self, ids, mask, image_m):
        self.calls.append((ids.clone(), mask.clone(), image_m))
        return self.table[ids] + image_m.sum()

    def head(self, key):
        return nn.Identity() if self.has and key == "mlm" else None


def _mlm_setup(seed=0, teacher_has=True):
    g = torch.Generator().manual_seed(seed)
    word_emb = nn.Parameter(torch.randn(V, HM, generator=g))
    obj = MLMLoss(vocab_size=V, mask_token_id=4, special_token_ids=(0, 1, 2))
    head = MLMHead(word_emb)
    with torch.no_grad():
        head.transform.dense.weight.copy_(torch.randn(HM, HM, generator=g))
        head.transform.dense.bias.copy_(torch.randn(HM, generator=g))
        head.transform.LayerNorm.weight.copy_(torch.rand(HM, generator=g) + 0.5)
        head.transform.LayerNorm.bias.copy_(torch.randn(HM, generator=g))
        head.bias.copy_(torch.randn(V, generator=g))
    enc = _FakeTextEncoder(torch.randn(V, HM, generator=g))
    teacher = _FakeTeacher(torch.randn(V, V, generator=g) * 2, has=teacher_has)
    model = SimpleNamespace(text_encoder=enc, fusion=_MeanImageFusion(), teacher=teacher, heads={"mlm": head})
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]])
    attn = (ids != 0).long()
    image = torch.randn(2, 3, HM, generator=g)
    pos = torch.tensor([[0, 1, 0, 1, 0], [0, 1, 0, 0, 0]], dtype=torch.bool)
    return obj, model, ids, attn, image, pos


def _gelu(x):
    return 0.5 * x * (1 + math.erf(x / math.sqrt(2)))


def _hand_mlm_logits(head, enc_table, masked_ids, attn, image):
    """Fake encoder + fake fusion + MLM head written out with plain arithmetic: [B][L][V] lists."""
    wd, bd = head.transform.dense.weight.tolist(), head.transform.dense.bias.tolist()
    g_, b_ = head.transform.LayerNorm.weight.tolist(), head.transform.LayerNorm.bias.tolist()
    eps = head.transform.LayerNorm.eps
    emb, bias = head.decoder.weight.tolist(), head.bias.tolist()
    table, img = enc_table.tolist(), image.tolist()
    out = []
    for bi, row in enumerate(masked_ids.tolist()):
        img_mean = [sum(img[bi][s][h] for s in range(len(img[bi]))) / len(img[bi]) for h in range(HM)]
        out_row = []
        for li, tok in enumerate(row):
            x = [table[tok][h] * attn[bi, li].item() + img_mean[h] for h in range(HM)]
            y = [_gelu(_dot(wd[o], x) + bd[o]) for o in range(HM)]
            mu = sum(y) / HM
            var = sum((v - mu) ** 2 for v in y) / HM
            z = [(y[h] - mu) / math.sqrt(var + eps) * g_[h] + b_[h] for h in range(HM)]
            out_row.append([_dot(emb[v], z) + bias[v] for v in range(V)])
        out.append(out_row)
    return out


def test_mlm_loss_equals_hand_cross_entropy():
    obj, model, ids, attn, image, pos = _mlm_setup()
    batch = {"input_ids": ids, "attention_mask": attn, "mlm_positions": pos}
    feats = torch.zeros(2, 3)
    ctx = _make_ctx(feats, feats.clone(), model=model, batch=batch, image_embeds=image)
    loss = obj(ctx)

    masked = model.text_encoder.calls[0]
    assert torch.equal(masked, ids.masked_fill(pos, 4))  # the encoder sees the masked ids
    logits = _hand_mlm_logits(model.heads["mlm"], model.text_encoder.table, masked, attn, image)
    terms = [_lse(logits[bi][li]) - logits[bi][li][ids[bi, li].item()]
             for bi in range(2) for li in range(LM) if pos[bi, li]]
    assert len(terms) == 3
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5, abs=1e-6)
    assert model.teacher.calls == []


def test_mlm_loss_with_distillation_mixes_soft_targets():
    alpha = 0.4
    obj, model, ids, attn, image, pos = _mlm_setup(seed=1)
    image_m = torch.randn(2, 3, HM) * 0.01
    batch = {"input_ids": ids, "attention_mask": attn, "mlm_positions": pos}
    feats = torch.zeros(2, 3)
    ctx = _make_ctx(feats, feats.clone(), model=model, batch=batch, image_embeds=image,
                    image_embeds_m=image_m)
    loss = obj(ctx, alpha)

    masked = ids.masked_fill(pos, 4)
    (t_ids, t_mask, t_img), = model.teacher.calls
    assert torch.equal(t_ids, masked) and torch.equal(t_mask, attn) and t_img is image_m
    logits = _hand_mlm_logits(model.heads["mlm"], model.text_encoder.table, masked, attn, image)
    teacher = (model.teacher.table[masked] + image_m.sum()).tolist()
    ce, soft = [], []
    for bi in range(2):
        for li in range(LM):
            if not pos[bi, li]:
                continue
            lse = _lse(logits[bi][li])
            ce.append(lse - logits[bi][li][ids[bi, li].item()])
            t_lse = _lse(teacher[bi][li])
            soft.append(-sum(math.exp(teacher[bi][li][v] - t_lse) * (logits[bi][li][v] - lse) for v in range(V)))
    expected = (1 - alpha) * sum(ce) / len(ce) + alpha * sum(soft) / len(soft)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert abs(expected - sum(ce) / len(ce)) > 1e-3


def test_mlm_loss_no_distillation_without_teacher_head():
    obj, model, ids, attn, image, pos = _mlm_setup(seed=2, teacher_has=False)
    batch = {"input_ids": ids, "attention_mask": attn, "mlm_positions": pos}
    feats = torch.zeros(2, 3)
    ctx = _make_ctx(feats, feats.clone(), model=model, batch=batch, image_embeds=image, image_embeds_m=image)
    # the teacher decides: an EMA model without a copy of the MLM head gives MLM no alpha (no distillation) ...
    teacher = Teacher(alpha=0.4)
    teacher.attach(nn.Module(), [])
    alpha = teacher.objective_alpha(obj.alpha, obj.heads_used())
    assert alpha is None
    # ... and one with a copy does
    student = nn.Module()
    student.heads = nn.ModuleDict({"mlm": nn.Linear(1, 1)})
    teacher.attach(student, ["heads.mlm"])
    assert float(teacher.objective_alpha(obj.alpha, obj.heads_used())) == pytest.approx(0.4)
    loss = obj(ctx, alpha)
    logits = _hand_mlm_logits(model.heads["mlm"], model.text_encoder.table, ids.masked_fill(pos, 4), attn, image)
    terms = [_lse(logits[bi][li]) - logits[bi][li][ids[bi, li].item()]
             for bi in range(2) for li in range(LM) if pos[bi, li]]
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5, abs=1e-6)
    assert model.teacher.calls == []


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_mlm_loss_nothing_to_mask_is_zero_with_grad_path(alpha):
    obj, model, _, _, image, _ = _mlm_setup(seed=3)
    obj.mask_prob = 1.0  # every eligible token would be chosen: there is none
    ids = torch.tensor([[1, 2, 0, 0, 0], [1, 2, 2, 0, 0]])  # only CLS / SEP / PAD
    attn = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    feats = torch.zeros(2, 3)
    ctx = _make_ctx(feats, feats.clone(), model=model, batch={"input_ids": ids, "attention_mask": attn},
                    image_embeds=image, image_embeds_m=image)
    loss = obj(ctx, alpha or None)
    assert torch.isfinite(loss)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert model.heads["mlm"].bias.grad is not None
    assert torch.equal(model.heads["mlm"].bias.grad, torch.zeros(V))


# --------------------------------------------------------------------------- real tiny model: gradient flow
def _tiny_batch(tokenizer, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    caps = ["a red circle left of a blue square", "a green triangle above a red square",
            "a blue square below a green circle", "a red triangle right of a blue circle"][:b]
    enc = tokenizer(caps, padding="longest", return_tensors="pt", return_token_type_ids=False)
    pos = torch.zeros_like(enc["input_ids"], dtype=torch.bool)
    pos[:, 1:3] = True  # always something to predict
    return {
        "image": torch.randn(b, 3, 32, 32, generator=g),
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "image_id": torch.arange(b),
        "mlm_positions": pos,
    }


def _backward(model, batch):
    out = model(batch)
    loss = sum(v for k, v in out.items() if k.startswith("loss_"))
    assert torch.isfinite(loss)
    loss.backward()
    return out


def _teacher_params(model):
    return list(model.teacher.model.parameters())


def test_full_model_gradient_flow(tiny_cfg, tokenizer):
    from albef.modeling import build_model

    torch.manual_seed(0)
    model = build_model(tiny_cfg(), tokenizer)
    model.train()
    out = _backward(model, _tiny_batch(tokenizer))
    assert {"loss_itc", "loss_itm", "loss_mlm"} <= set(out)

    teacher_ids = {id(p) for p in _teacher_params(model)}
    assert teacher_ids, "the momentum teacher holds no parameters"
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for n, p in trainable:
        assert id(p) not in teacher_ids, n
        assert p.grad is not None, f"{n} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{n} has a non-finite gradient"
    for p in _teacher_params(model):
        assert not p.requires_grad
        assert p.grad is None
    assert model.temp.grad is not None and model.temp.grad != 0
    # something real flowed into every component
    for mod in (model.vision_encoder, model.text_encoder, model.fusion, model.vision_proj, model.text_proj):
        assert sum(p.grad.abs().sum() for p in mod.parameters()) > 0


def test_itc_only_leaves_fusion_without_gradient(tiny_cfg, tokenizer):
    from albef.modeling import build_model

    torch.manual_seed(0)
    model = build_model(tiny_cfg("model.objectives.itm=null", "model.objectives.mlm=null"), tokenizer)
    out = _backward(model, _tiny_batch(tokenizer))
    assert set(k for k in out if k.startswith("loss_")) == {"loss_itc"}
    assert all(p.grad is None for p in model.fusion.parameters())
    for mod in (model.vision_proj, model.text_proj):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mod.parameters())
    assert model.temp.grad is not None


def test_mlm_only_leaves_projections_and_temp_without_gradient(tiny_cfg, tokenizer):
    from albef.modeling import build_model

    torch.manual_seed(0)
    model = build_model(tiny_cfg("model.objectives.itc=null", "model.objectives.itm=null"), tokenizer)
    out = _backward(model, _tiny_batch(tokenizer))
    assert set(k for k in out if k.startswith("loss_")) == {"loss_mlm"}
    for mod in (model.vision_proj, model.text_proj):
        assert all(p.grad is None for p in mod.parameters())
    assert model.temp.grad is None
    assert all(p.grad is not None for p in model.fusion.parameters())
    # the image is seen by MLM through cross-attention
    assert sum(p.grad.abs().sum() for p in model.vision_encoder.parameters()) > 0


def test_mlm_decoder_is_tied_to_word_embeddings(tiny_cfg, tokenizer):
    from albef.modeling import build_model

    model = build_model(tiny_cfg(), tokenizer)
    head = model.heads["mlm"]
    word = model.text_encoder.get_input_embeddings().weight
    assert head.decoder.weight is word
    assert isinstance(word, nn.Parameter)
    # and the teacher's copy stays tied within the teacher, separate from the student
    t = model.teacher.model
    assert t["heads"]["mlm"].decoder.weight is t["text_encoder"].get_input_embeddings().weight
    assert t["heads"]["mlm"].decoder.weight is not word


def test_mlm_loss_rejects_bad_arguments():
    with pytest.raises(ValueError):
        MLMHead(word_embeddings=None)
    with pytest.raises(ValueError):
        MLMLoss(mask_prob=1.5)
    with pytest.raises(ValueError):
        MLMLoss(replace_prob=0.8, random_prob=0.3)
    obj = MLMLoss(vocab_size=V, special_token_ids=(2, 0, 1, 0))
    assert obj.never_mask.tolist() == [0, 1, 2]
    assert obj.heads_used() == ("mlm",)
    assert MLMHead(nn.Parameter(torch.randn(V, HM))).momentum  # the teacher keeps an EMA copy (distillation targets)


# --------------------------------------------------------------------------- edited captions (composition capacity)
def test_edited_caption_loss_by_hand_and_invalid_edits_dropped():
    from albef.modeling.context import TextNegatives
    from albef.modeling.objectives.edited_caption import EditedCaptionLoss

    b = 3
    text, image, mask, w, fusion, model, _, feats = _itm_setup(b, seed=7)
    g = torch.Generator().manual_seed(8)
    neg_text = torch.randn(b, L, H, generator=g)
    neg_mask = torch.ones(b, L, dtype=torch.long)
    valid = torch.tensor([True, False, True])
    ctx = _make_ctx(feats, feats.clone(), model=model, batch={"attention_mask": mask}, image_embeds=image, text_embeds=text)
    ctx.text_negatives = TextNegatives(neg_text, neg_mask, None, valid)
    obj = EditedCaptionLoss()
    assert obj.needs(False) == {"visual", "text_negatives"} and obj.heads_used() == ("itm",)
    loss = obj(ctx)
    # one fusion call on 2B pairs: the captions, then each image with its own edit
    t_all, m_all, i_all = fusion.calls[0]
    torch.testing.assert_close(t_all, torch.cat([text, neg_text]), rtol=0, atol=0)
    torch.testing.assert_close(i_all, torch.cat([image, image]), rtol=0, atol=0)
    head = model.heads["itm"].linear
    pos = [_hand_itm_ce(k, k, 1, text, image, mask, w, head) for k in range(b)]
    neg = [_hand_itm_ce(k, k, 0, neg_text, image, neg_mask, w, head) for k in range(b) if valid[k]]
    assert loss.item() == pytest.approx((sum(pos) + sum(neg)) / (b + 2), rel=1e-5)
    # the logged pair accuracy: the caption's match margin above its edit's, over the valid pairs
    def margin(t_emb, m, k):
        cls = t_emb[k, 0] + image[k].mean(0) @ w + 0.1 * m[k].sum()
        lg = head(cls).detach()
        return float(lg[1] - lg[0])
    right = [margin(text, mask, k) > margin(neg_text, neg_mask, k) for k in range(b) if valid[k]]
    assert float(ctx.stats["edited_pair_acc"]) == pytest.approx(sum(right) / len(right))
    assert float(ctx.stats["edited_valid"]) == 2.0
    ctx.text_negatives = None
    with pytest.raises(ValueError, match="set data.text_negatives"):
        obj(ctx)


def test_frozen_parameters_get_no_gradient_and_no_update(tiny_cfg, tokenizer):
    from albef.engine.defaults import build_optimizer
    from albef.modeling import build_model

    cfg = tiny_cfg("train.frozen=[vision_encoder, text_encoder]")
    model = build_model(cfg, tokenizer)
    opt = build_optimizer(cfg, model)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        frozen = name.startswith(("vision_encoder.", "text_encoder."))
        assert (id(p) in in_opt) == (not frozen and not name.startswith("teacher.")), name
        if frozen:
            assert not p.requires_grad, name
    assert any(id(p) in in_opt for n, p in model.named_parameters() if n.startswith("fusion."))
    with pytest.raises(ValueError, match="train.frozen: 'vision_encodr' names no parameter"):
        build_optimizer(tiny_cfg("train.frozen=[vision_encodr]"), build_model(cfg, tokenizer))
