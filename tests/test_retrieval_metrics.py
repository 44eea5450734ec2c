"""Tests of retrieval evaluation: the official recall metrics and batched ITM re-ranking."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from albef.evaluation.retrieval import _rerank, evaluate_retrieval, format_results_table, itm_scores, retrieval_metrics

KEYS = {"txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "txt_r_mean", "img_r_mean", "r_mean"}


def _official_itm_eval(scores_i2t, scores_t2i, txt2img, img2txt):
    """Verbatim logic of the official ALBEF Retrieval.py:itm_eval (numpy argsort ranks)."""
    ranks = np.zeros(scores_i2t.shape[0])
    for index, score in enumerate(scores_i2t):
        inds = np.argsort(score)[::-1]
        rank = 1e20
        for i in img2txt[index]:
            tmp = np.where(inds == i)[0][0]
            if tmp < rank:
                rank = tmp
        ranks[index] = rank
    tr1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
    tr5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
    tr10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
    ranks = np.zeros(scores_t2i.shape[0])
    for index, score in enumerate(scores_t2i):
        inds = np.argsort(score)[::-1]
        ranks[index] = np.where(inds == txt2img[index])[0][0]
    ir1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
    ir5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
    ir10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
    tr_mean = (tr1 + tr5 + tr10) / 3
    ir_mean = (ir1 + ir5 + ir10) / 3
    return {"txt_r1": tr1, "txt_r5": tr5, "txt_r10": tr10, "txt_r_mean": tr_mean,
            "img_r1": ir1, "img_r5": ir5, "img_r10": ir10, "img_r_mean": ir_mean, "r_mean": (tr_mean + ir_mean) / 2}


def _approx(d):
    return {k: pytest.approx(v, abs=1e-4) for k, v in d.items()}


# ---------------------------------------------------------------------- hand-computed cases


def test_small_multi_caption_case():
    # 2 images, 3 captions: image 0 owns captions 0 and 1, image 1 owns caption 2
    img2txt = [[0, 1], [2]]
    txt2img = [0, 0, 1]
    s_i2t = torch.tensor([
        [0.1, 0.9, 0.5],  # img0: its caption 1 ranks first (caption 0 ranks last): rank 0
        [0.8, 0.7, 0.1],  # img1: its caption 2 is below 2 wrong ones: rank 2
    ])
    s_t2i = torch.tensor([
        [0.1, 0.3],  # cap0 -> img0 is second: rank 1
        [0.6, 0.2],  # cap1 -> img0 first: rank 0
        [0.4, 0.5],  # cap2 -> img1 first: rank 0
    ])
    out = retrieval_metrics(s_i2t, s_t2i, txt2img, img2txt)
    expected = {
        "txt_r1": 50.0, "txt_r5": 100.0, "txt_r10": 100.0, "txt_r_mean": (50 + 100 + 100) / 3,
        "img_r1": 200 / 3, "img_r5": 100.0, "img_r10": 100.0, "img_r_mean": (200 / 3 + 200) / 3,
    }
    expected["r_mean"] = (expected["txt_r_mean"] + expected["img_r_mean"]) / 2
    assert set(out) == KEYS
    assert out == _approx(expected)
    assert out == _approx(_official_itm_eval(s_i2t.numpy(), s_t2i.numpy(), txt2img, img2txt))


def _scores_with_ranks(ranks):
    """[n, n] scores whose row i puts the ground truth (column i) at the given rank."""
    n = len(ranks)
    s = torch.zeros(n, n)
    for i, r in enumerate(ranks):
        others = [j for j in range(n) if j != i]
        # wrong columns get the distinct values n-2, ..., 0; the gt sits just below r of them
        for v, j in zip(range(n - 2, -1, -1), others[::-1] if i % 2 else others):
            s[i, j] = float(v)
        s[i, i] = (n - 2) + 0.5 - r
    return s


def test_designed_ranks():
    ranks_i2t = [0, 0, 0, 1, 4, 4, 5, 9, 9, 10, 11, 3]
    ranks_t2i = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0]
    s_i2t, s_t2i = _scores_with_ranks(ranks_i2t), _scores_with_ranks(ranks_t2i)
    ident = list(range(12))
    out = retrieval_metrics(s_i2t, s_t2i, ident, [[i] for i in ident])
    # i2t: 3 of 12 at rank 0; 7 below 5 (0,0,0,1,4,4,3); 10 below 10
    assert out["txt_r1"] == pytest.approx(25.0)
    assert out["txt_r5"] == pytest.approx(700 / 12)
    assert out["txt_r10"] == pytest.approx(1000 / 12)
    # t2i: 2 at rank 0; 6 below 5 (0,1,2,3,4,0); 11 below 10
    assert out["img_r1"] == pytest.approx(200 / 12)
    assert out["img_r5"] == pytest.approx(50.0)
    assert out["img_r10"] == pytest.approx(1100 / 12)
    assert out["txt_r_mean"] == pytest.approx((25 + 700 / 12 + 1000 / 12) / 3)
    assert out["img_r_mean"] == pytest.approx((200 / 12 + 50 + 1100 / 12) / 3)
    assert out["r_mean"] == pytest.approx((out["txt_r_mean"] + out["img_r_mean"]) / 2)
    assert out == _approx(_official_itm_eval(s_i2t.numpy(), s_t2i.numpy(), ident, [[i] for i in ident]))


def test_t2i_uses_single_gt_image():
    # caption 1 belongs to image 1; image 0 scoring higher for it is a miss even though image 0 has other captions
    s_t2i = torch.tensor([[0.9, 0.1], [0.8, 0.3]])
    s_i2t = s_t2i.t().contiguous()
    out = retrieval_metrics(s_i2t, s_t2i, [0, 1], [[0], [1]])
    assert out["img_r1"] == pytest.approx(50.0)


def test_best_ranked_gt_caption_counts():
    # image 0 has five captions; only one of them is ranked first, the others last
    s_i2t = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5]])
    img2txt = [[0, 1, 2, 3, 4]]
    out = retrieval_metrics(s_i2t, s_i2t.t(), [0, 0, 0, 0, 0, 0, 0, 0], img2txt)
    assert out["txt_r1"] == 100.0
    # now the best ground-truth caption is third: rank 2 (two wrong captions above)
    s_i2t = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.4, 0.5, 0.6, 0.1]])
    out = retrieval_metrics(s_i2t, s_i2t.t(), [0] * 8, img2txt)
    assert out["txt_r1"] == 0.0 and out["txt_r5"] == 100.0


def test_random_scores_match_official():
    g = torch.Generator().manual_seed(0)
    n_i = 15
    img2txt, txt2img = [], []
    for i in range(n_i):
        k = 1 + i % 3
        img2txt.append(list(range(len(txt2img), len(txt2img) + k)))
        txt2img += [i] * k
    for _ in range(5):
        s_i2t = torch.randn(n_i, len(txt2img), generator=g)
        s_t2i = torch.randn(len(txt2img), n_i, generator=g)
        out = retrieval_metrics(s_i2t, s_t2i, txt2img, img2txt)
        assert out == _approx(_official_itm_eval(s_i2t.numpy(), s_t2i.numpy(), txt2img, img2txt))


def test_all_ties_score_zero():
    n_i, n_t = 4, 8
    img2txt = [[2 * i, 2 * i + 1] for i in range(n_i)]
    txt2img = [t // 2 for t in range(n_t)]
    out = retrieval_metrics(torch.zeros(n_i, n_t), torch.zeros(n_t, n_i), txt2img, img2txt)
    assert out["txt_r1"] == 0.0 and out["img_r1"] == 0.0
    # the official argsort would have credited index order: some ranks 0 there
    off = _official_itm_eval(np.zeros((n_i, n_t)), np.zeros((n_t, n_i)), txt2img, img2txt)
    assert off["txt_r1"] > 0 or off["img_r1"] > 0


def test_partial_tie_counts_against():
    # gt tied with one wrong candidate: rank 1, not 0
    s = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out = retrieval_metrics(s, s.t().contiguous(), [0, 1, 2], [[0], [1], [2]])
    assert out["txt_r1"] == pytest.approx(200 / 3)  # image 0 ties with caption 1
    assert out["img_r1"] == pytest.approx(200 / 3)  # caption 1 ties between images 0 and 1


def test_accepts_gpu_style_dtypes():
    s = torch.eye(3, dtype=torch.bfloat16)
    out = retrieval_metrics(s, s.t(), [0, 1, 2], [[0], [1], [2]])
    assert out["txt_r1"] == 100.0 and out["img_r1"] == 100.0 and out["r_mean"] == 100.0


# ---------------------------------------------------------------------- evaluate_retrieval on the tiny model


@pytest.fixture()
def tiny_setup(tiny_cfg, tokenizer):
    from albef.data.build import build_eval_image_loader, build_test_dataset
    from albef.modeling import build_model

    def make(*overrides, ann=None):
        cfg = tiny_cfg(*overrides)
        torch.manual_seed(0)
        model = build_model(cfg, tokenizer)
        ds = build_test_dataset(cfg)
        if ann is not None:  # a multi-caption test file over the same images
            from albef.data.datasets.retrieval_eval import RetrievalEvalJSON
            from omegaconf import OmegaConf

            ds = RetrievalEvalJSON(ann, image_root=cfg.data.test.image_root,
                                   transforms=OmegaConf.to_container(cfg.data.transforms, resolve=True))
        return cfg, model, ds, build_eval_image_loader(cfg, ds)

    return make


def _count_itm_calls(model):
    """Pairs per fusion forward (re-ranking is the only fusion user in evaluation)."""
    calls = []
    orig = model.fuse

    def wrapped(text_embeds, text_mask, visual):
        calls.append(text_embeds.shape[0])
        return orig(text_embeds, text_mask, visual)

    model.fuse = wrapped
    return calls


def _unique_pairs(sims: torch.Tensor, k: int) -> int:
    """How many distinct (image, text) pairs the two directions' top-k lists hold."""
    n_i, n_t = sims.shape
    pairs = {(i, t) for i in range(n_i) for t in sims[i].topk(min(k, n_t)).indices.tolist()}
    pairs |= {(i, t) for t in range(n_t) for i in sims[:, t].topk(min(k, n_i)).indices.tolist()}
    return len(pairs)


def test_evaluate_retrieval_tiny_model(tiny_setup, tokenizer):
    cfg, model, ds, loader = tiny_setup()
    model.train()
    calls = _count_itm_calls(model)
    res = evaluate_retrieval(model, ds, loader, tokenizer, k_test=cfg.eval.retrieval.k_test, max_tokens=cfg.eval.retrieval.max_tokens,
                             pair_batch=10_000)
    assert model.training  # mode restored
    assert set(res) == {"retrieval_itc", "retrieval"}
    for m in res.values():
        assert set(m) == KEYS
        assert all(0.0 <= v <= 100.0 for v in m.values())
        assert m["r_mean"] == pytest.approx((m["txt_r_mean"] + m["img_r_mean"]) / 2)
    # batched re-ranking: one fusion call here, never one per query; a pair in both
    # directions' top-k lists is fused once
    n_i, n_t, k = len(ds), len(ds.text), min(cfg.eval.retrieval.k_test, len(ds.text))
    _, _, tf, _, imf = _encode_eval_set(cfg, model, ds, tokenizer)
    unique = _unique_pairs(imf @ tf.t(), k)
    assert unique < n_i * min(k, n_t) + n_t * min(k, n_i)  # the two directions share pairs
    assert 1 <= len(calls) <= 4
    assert sum(calls) == unique
    table = format_results_table(res)
    for name, m in res.items():
        assert name in table
        for key in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean"):
            assert f"{m[key]:7.2f}" in table


def test_evaluate_retrieval_pair_batch_splits(tiny_setup, tokenizer):
    cfg, model, ds, loader = tiny_setup()
    calls = _count_itm_calls(model)
    k = cfg.eval.retrieval.k_test
    res_small = evaluate_retrieval(model, ds, loader, tokenizer, k_test=k, max_tokens=cfg.eval.retrieval.max_tokens, pair_batch=7)
    total = sum(calls)
    _, _, tf, _, imf = _encode_eval_set(cfg, model, ds, tokenizer)
    assert total == _unique_pairs(imf @ tf.t(), k) and max(calls) <= 7
    assert len(calls) == -(-total // 7)
    calls.clear()
    res_big = evaluate_retrieval(model, ds, loader, tokenizer, k_test=k, max_tokens=cfg.eval.retrieval.max_tokens, pair_batch=10_000)
    assert calls == [total]
    assert res_small == {n: _approx(m) for n, m in res_big.items()}


def test_evaluate_retrieval_multi_caption(tiny_setup, tokenizer, tmp_path, synthetic_root):
    with open(os.path.join(synthetic_root, "test.json")) as f:
        anns = json.load(f)
    caps = [c for a in anns for c in a["caption"]]
    multi = [{"image": a["image"], "caption": caps[i : i + 1 + i % 3] or caps[:1]} for i, a in enumerate(anns[:5])]
    ann = str(tmp_path / "multi.json")
    with open(ann, "w") as f:
        json.dump(multi, f)
    cfg, model, ds, loader = tiny_setup(ann=ann)
    assert len(ds.text) > len(ds)
    calls = _count_itm_calls(model)
    res = evaluate_retrieval(model, ds, loader, tokenizer, k_test=3, max_tokens=cfg.eval.retrieval.max_tokens, pair_batch=10_000)
    assert set(res["retrieval"]) == KEYS and len(calls) == 1
    assert max(len(ds), len(ds.text)) * 3 <= sum(calls) <= len(ds) * 3 + len(ds.text) * 3  # shared pairs fused once


@pytest.mark.parametrize("add_itc", [False, True])
def test_rerank_both_directions_at_once_equals_each_direction(tiny_setup, tokenizer, add_itc):
    """Scoring the union of both directions' top-k pairs (each pair fused once, each image's
    keys/values projected once per chunk) gives exactly the per-direction scores."""
    from contextlib import nullcontext

    from albef.evaluation.retrieval import _rerank_both

    cfg, model, ds, loader = tiny_setup()
    enc, temb, tfeat, iemb, ifeat = _encode_eval_set(cfg, model, ds, tokenizer)
    mask = enc["attention_mask"]
    with torch.no_grad():
        sims = ifeat @ tfeat.t()
        for k, pb in ((3, 4), (len(ds.text), 10_000)):
            i2t, t2i = _rerank_both(model, sims, k, temb, mask, iemb, pb, nullcontext(), add_itc)
            ref_i2t = _rerank(model, sims, k, True, temb, mask, iemb, 10_000, nullcontext(), add_itc)
            ref_t2i = _rerank(model, sims.t().contiguous(), k, False, temb, mask, iemb, 10_000, nullcontext(), add_itc)
            assert torch.allclose(i2t, ref_i2t, atol=1e-5) and torch.allclose(t2i, ref_t2i, atol=1e-5)
            assert (i2t == -100).sum() == sims.numel() - len(ds) * min(k, len(ds.text))
            assert (t2i == -100).sum() == sims.numel() - len(ds.text) * min(k, len(ds))


def test_evaluate_retrieval_without_itm(tiny_setup, tokenizer):
    """Re-ranking asks the model for its ITM head explicitly: without one it is an error (named),
    and rerank=false evaluates ITC retrieval alone."""
    from albef.modeling.meta_arch.albef import MissingHeadError

    cfg, model, ds, loader = tiny_setup("model.objectives.itm=null")
    assert not model.has_head("itm") and "itm" not in model.heads  # not built: no objective uses it
    with pytest.raises(MissingHeadError, match="no head 'itm'"):
        evaluate_retrieval(model, ds, loader, tokenizer, k_test=cfg.eval.retrieval.k_test, max_tokens=cfg.eval.retrieval.max_tokens)
    res = evaluate_retrieval(model, ds, loader, tokenizer, k_test=cfg.eval.retrieval.k_test, max_tokens=cfg.eval.retrieval.max_tokens, rerank=False)
    assert set(res) == {"retrieval_itc"} and set(res["retrieval_itc"]) == KEYS
    assert "retrieval_itc" in format_results_table(res) and "| retrieval " not in format_results_table(res)


def test_retrieval_evaluator_fails_before_training_without_itm_head(tiny_cfg):
    """The trainer checks every evaluator against the model when it is built, not after training."""
    from albef.engine.defaults import DefaultTrainer

    with pytest.raises(ValueError, match=r"eval.retrieval: re-ranking needs the model's ITM head .*eval.retrieval.rerank=false"):
        DefaultTrainer(tiny_cfg("model.objectives.itm=null"))
    t = DefaultTrainer(tiny_cfg("model.objectives.itm=null", "eval.retrieval.rerank=false"))
    res = t.evaluate()
    assert set(res) == {f"retrieval_itc/{k}" for k in KEYS}


def _encode_eval_set(cfg, model, ds, tokenizer):
    """Every caption and image of ``ds`` through the (eval-mode) unimodal encoders, unbatched by the loader.

    Returns ``(enc, text_emb [T, L, D], text_feat [T, E], image_emb [N, P, D], image_feat [N, E])``.
    """
    from albef.data.tokenization import tokenize

    model.eval()
    with torch.no_grad():
        enc = tokenize(tokenizer, ds.text, cfg.eval.retrieval.max_tokens, pad_to_max=True)
        temb, tfeat = model.encode_text(enc["input_ids"], enc["attention_mask"])
        iemb, ifeat = model.encode_image(torch.stack([ds[i]["image"] for i in range(len(ds))]))
    return enc, temb, tfeat, iemb, ifeat


def test_itc_metrics_are_cosine_of_features(tiny_setup, tokenizer):
    cfg, model, ds, loader = tiny_setup()
    res = evaluate_retrieval(model, ds, loader, tokenizer, k_test=cfg.eval.retrieval.k_test, max_tokens=cfg.eval.retrieval.max_tokens)
    _, _, tf, _, imf = _encode_eval_set(cfg, model, ds, tokenizer)
    sims = imf @ tf.t()
    assert res["retrieval_itc"] == _approx(retrieval_metrics(sims, sims.t(), ds.txt2img, ds.img2txt))


def test_rerank_scores_topk_with_itm_logits(tiny_setup, tokenizer):
    """_rerank fills each row's top-k with the ITM logit of that pair (same as one pair at a time), -100 elsewhere."""
    from contextlib import nullcontext

    cfg, model, ds, loader = tiny_setup()
    enc, temb, tfeat, iemb, ifeat = _encode_eval_set(cfg, model, ds, tokenizer)
    with torch.no_grad():
        sims = ifeat @ tfeat.t()
        k = 3
        s_batched = _rerank(model, sims, k, True, temb, enc["attention_mask"], iemb, 10_000, nullcontext())
        s_small = _rerank(model, sims, k, True, temb, enc["attention_mask"], iemb, 5, nullcontext())
        assert torch.allclose(s_batched, s_small, atol=1e-5)
        top = sims.topk(k, dim=1).indices
        for i in (0, len(ds) - 1):
            mask = torch.zeros(sims.shape[1], dtype=torch.bool)
            mask[top[i]] = True
            assert (s_batched[i][~mask] == -100).all()
            for t in top[i].tolist():
                one = itm_scores(model, "itm", temb[t : t + 1], enc["attention_mask"][t : t + 1], iemb[i : i + 1])
                assert s_batched[i, t].item() == pytest.approx(one.item(), abs=1e-4)
        s_t2i = _rerank(model, sims.t().contiguous(), k, False, temb, enc["attention_mask"], iemb, 10_000, nullcontext())
        j = 1
        for i in sims.t()[j].topk(k).indices.tolist():
            one = itm_scores(model, "itm", temb[j : j + 1], enc["attention_mask"][j : j + 1], iemb[i : i + 1])
            assert s_t2i[j, i].item() == pytest.approx(one.item(), abs=1e-4)


def test_rerank_score_itm_plus_itc_adds_the_cosine(tiny_cfg, tokenizer):
    """LAVIS's re-ranking score is the ITM logit plus the ITC cosine of the same pair."""
    from albef.evaluation.retrieval import _rerank

    torch.manual_seed(0)
    from albef.modeling import build_model

    model = build_model(tiny_cfg(), tokenizer).eval()
    n_t, n_i, L = 5, 4, 6
    text = torch.randn(n_t, L, 32)
    mask = torch.ones(n_t, L, dtype=torch.long)
    image = torch.randn(n_i, 5, 32)
    sims = torch.rand(n_i, n_t)
    from contextlib import nullcontext

    itm = _rerank(model, sims, 3, True, text, mask, image, 64, nullcontext())
    both = _rerank(model, sims, 3, True, text, mask, image, 64, nullcontext(), add_itc=True)
    chosen = itm > -100
    torch.testing.assert_close(both[chosen], itm[chosen] + sims[chosen])
    assert torch.equal(both[~chosen], itm[~chosen])
    with pytest.raises(ValueError, match="rerank_score"):
        from albef.evaluation.retrieval import evaluate_retrieval

        evaluate_retrieval(model, None, None, tokenizer, rerank_score="itc")
