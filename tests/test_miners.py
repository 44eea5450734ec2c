"""Tests of the ITM negative miners: sampling distributions, exclusions, degenerate rows, speed."""
from __future__ import annotations

import math
import time

import pytest
import torch

from albef.modeling.miners.base import MinedNegatives, candidate_mask, sample_rows
from albef.modeling.miners.contrastive_hard import ContrastiveHardNegativeMiner
from albef.modeling.miners.hardest_negative import HardestNegativeMiner
from albef.modeling.miners.random_negative import RandomNegativeMiner

INF, NAN = float("inf"), float("nan")


def _empirical(miner, sim, candidates, draws):
    """Row-wise empirical distribution of ``miner.pick`` over ``draws`` copies of every row."""
    b, c = sim.shape
    idx, valid = miner.pick(sim.repeat(draws, 1), candidates.repeat(draws, 1))
    assert idx.shape == (b * draws,) and valid.shape == (b * draws,)
    counts = torch.zeros(b, c)
    rows = torch.arange(b).repeat(draws)
    counts.index_put_((rows, idx), torch.ones(b * draws), accumulate=True)
    return counts / draws, valid.view(draws, b)


def _softmax_over(sim_row, cand_row):
    w = [math.exp(s) if c else 0.0 for s, c in zip(sim_row, cand_row)]
    z = sum(w)
    return torch.tensor([x / z for x in w])


# --------------------------------------------------------------------------- candidates
def test_candidate_mask_diagonal_and_same_image():
    assert torch.equal(candidate_mask(3, None, torch.device("cpu")), ~torch.eye(3, dtype=torch.bool))
    ids = torch.tensor([4, 4, 6, 7])
    expected = torch.tensor([
        [False, False, True, True],
        [False, False, True, True],
        [True, True, False, True],
        [True, True, True, False],
    ])
    assert torch.equal(candidate_mask(4, ids, torch.device("cpu")), expected)


# --------------------------------------------------------------------------- ContrastiveHardNegativeMiner
def test_contrastive_miner_matches_softmax_over_candidates():
    torch.manual_seed(0)
    sim = torch.tensor([
        [5.0, 1.0, 0.0, 2.0],
        [0.5, 9.0, -1.0, 1.5],
        [1.0, 0.0, 3.0, 0.2],
        [2.0, 2.0, 0.0, 7.0],
    ])
    ids = torch.tensor([0, 1, 2, 1])  # samples 1 and 3 show the same image
    cand = candidate_mask(4, ids, sim.device)
    miner = ContrastiveHardNegativeMiner()
    probs, valid = _empirical(miner, sim, cand, draws=20000)
    assert valid.all()
    for i in range(4):
        expected = _softmax_over(sim[i].tolist(), cand[i].tolist())
        assert torch.allclose(probs[i], expected, atol=0.015), (i, probs[i], expected)
    # the diagonal and same-image columns never come up
    assert (probs[~cand] == 0).all()


def test_contrastive_miner_forward_excludes_self_and_same_image_over_many_calls():
    torch.manual_seed(1)
    b = 6
    ids = torch.tensor([0, 0, 1, 2, 2, 3])
    same = ids.view(-1, 1) == ids.view(1, -1)
    miner = ContrastiveHardNegativeMiner()
    # the largest similarity sits on the diagonal / same-image columns: they must still never be picked
    sim_i2t = torch.randn(b, b) + 20.0 * same.float()
    sim_t2i = torch.randn(b, b) + 20.0 * same.float()
    seen_img = torch.zeros(b, b)
    seen_txt = torch.zeros(b, b)
    for _ in range(300):
        neg = miner(sim_i2t, sim_t2i, ids)
        assert isinstance(neg, MinedNegatives)
        assert neg.valid_text.all() and neg.valid_image.all()
        seen_img[torch.arange(b), neg.neg_image_for_text] += 1
        seen_txt[torch.arange(b), neg.neg_text_for_image] += 1
    assert (seen_img[same] == 0).all()
    assert (seen_txt[same] == 0).all()
    assert (seen_img.sum(1) == 300).all()


def test_miner_direction_text_rows_use_sim_t2i_and_image_rows_use_sim_i2t():
    # HardestNegativeMiner makes the direction visible deterministically
    sim_i2t = torch.tensor([[0.0, 1.0, 5.0], [5.0, 0.0, 1.0], [1.0, 5.0, 0.0]])  # image i -> text
    sim_t2i = torch.tensor([[0.0, 5.0, 1.0], [1.0, 0.0, 5.0], [5.0, 1.0, 0.0]])  # text i -> image
    neg = HardestNegativeMiner()(sim_i2t, sim_t2i, None)
    assert neg.neg_text_for_image.tolist() == [2, 0, 1]
    assert neg.neg_image_for_text.tolist() == [1, 2, 0]
    # and the contrastive miner follows the same direction when the softmax is peaked
    torch.manual_seed(2)
    neg = ContrastiveHardNegativeMiner()(sim_i2t * 20, sim_t2i * 20, None)
    assert neg.neg_text_for_image.tolist() == [2, 0, 1]
    assert neg.neg_image_for_text.tolist() == [1, 2, 0]


# --------------------------------------------------------------------------- degenerate cases
@pytest.mark.parametrize("miner_cls", [ContrastiveHardNegativeMiner, RandomNegativeMiner, HardestNegativeMiner])
def test_every_sample_same_image_is_invalid_without_crash(miner_cls):
    b = 4
    ids = torch.full((b,), 3)
    neg = miner_cls()(torch.randn(b, b), torch.randn(b, b), ids)
    assert not neg.valid_text.any() and not neg.valid_image.any()
    for t in (neg.neg_image_for_text, neg.neg_text_for_image):
        assert t.shape == (b,) and t.dtype == torch.long
        assert ((t >= 0) & (t < b)).all()  # a usable placeholder index


@pytest.mark.parametrize("miner_cls", [ContrastiveHardNegativeMiner, RandomNegativeMiner, HardestNegativeMiner])
def test_batch_of_one(miner_cls):
    neg = miner_cls()(torch.randn(1, 1), torch.randn(1, 1), None)
    assert neg.neg_image_for_text.tolist() == [0] and neg.neg_text_for_image.tolist() == [0]
    assert neg.valid_text.tolist() == [False] and neg.valid_image.tolist() == [False]
    neg = miner_cls()(torch.randn(1, 1), torch.randn(1, 1), torch.tensor([5]))
    assert neg.valid_text.tolist() == [False] and neg.valid_image.tolist() == [False]


def test_contrastive_miner_degenerate_rows_fall_back_to_uniform():
    torch.manual_seed(3)
    sim = torch.tensor([
        [-INF, -INF, -INF, -INF, -INF],  # all -inf
        [NAN, NAN, NAN, NAN, NAN],       # all NaN
        [INF, INF, INF, INF, INF],       # all +inf
        [1.0, NAN, 0.0, 2.0, 1.0],       # one NaN spoils the softmax
        [0.0, 0.0, 0.0, 0.0, 0.0],       # a normal (uniform) row
    ])
    ids = torch.tensor([0, 1, 2, 3, 3])
    cand = candidate_mask(5, ids, sim.device)
    probs, valid = _empirical(ContrastiveHardNegativeMiner(), sim, cand, draws=8000)
    assert valid.all()
    for i in range(5):
        n = int(cand[i].sum())
        expected = cand[i].float() / n
        assert torch.allclose(probs[i], expected, atol=0.03), (i, probs[i])
    assert (probs[~cand] == 0).all()


def test_contrastive_miner_full_forward_with_nonfinite_similarities():
    torch.manual_seed(4)
    b = 4
    sim = torch.full((b, b), NAN)
    sim[0] = INF
    sim[1] = -INF
    neg = ContrastiveHardNegativeMiner()(sim, sim.clone(), None)
    assert neg.valid_text.all() and neg.valid_image.all()
    assert (neg.neg_image_for_text != torch.arange(b)).all()
    assert (neg.neg_text_for_image != torch.arange(b)).all()


def test_sample_rows_mixed_rows():
    torch.manual_seed(5)
    w = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    cand = torch.tensor([[True, True, True], [True, False, True], [False, False, False]])
    for _ in range(50):
        idx, valid = sample_rows(w, cand)
        assert idx[0] == 2                      # all mass on column 2
        assert idx[1] in (0, 2)                 # zero weights: uniform over candidates
        assert valid.tolist() == [True, True, False]


# --------------------------------------------------------------------------- other miners
def test_random_miner_is_uniform_over_candidates():
    torch.manual_seed(6)
    sim = torch.tensor([
        [0.0, 50.0, -50.0, 3.0],
        [10.0, 0.0, 0.0, -10.0],
        [NAN, 1.0, 0.0, INF],
        [0.0, 0.0, 0.0, 0.0],
    ])
    ids = torch.tensor([0, 1, 2, 0])
    cand = candidate_mask(4, ids, sim.device)
    probs, valid = _empirical(RandomNegativeMiner(), sim, cand, draws=12000)
    assert valid.all()
    for i in range(4):
        expected = cand[i].float() / cand[i].sum()
        assert torch.allclose(probs[i], expected, atol=0.02), (i, probs[i])


def test_hardest_miner_picks_argmax_candidate():
    sim = torch.tensor([
        [9.0, 3.0, 4.0, 1.0],   # diagonal is the largest but excluded -> 2
        [3.0, 9.0, 8.0, 7.0],   # column 3 shares the image of row 1 -> 2
        [1.0, 2.0, 0.0, 5.0],   # -> 3
        [6.0, 9.0, 1.0, 0.0],   # column 1 shares the image -> 0
    ])
    ids = torch.tensor([0, 1, 2, 1])
    neg = HardestNegativeMiner()(sim, sim.t().contiguous(), ids)
    assert neg.neg_text_for_image.tolist() == [2, 2, 3, 0]
    assert neg.valid_image.all()
    cand = candidate_mask(4, ids, sim.device)
    st = sim.t()
    expected_t = [int(torch.argmax(st[i].masked_fill(~cand[i], -INF))) for i in range(4)]
    assert neg.neg_image_for_text.tolist() == expected_t


def test_hardest_miner_nonfinite_rows_pick_a_candidate():
    sim = torch.tensor([
        [NAN, NAN, NAN],
        [-INF, -INF, -INF],
        [1.0, INF, 0.0],
    ])
    idx, valid = HardestNegativeMiner().pick(sim, ~torch.eye(3, dtype=torch.bool))
    assert valid.all()
    assert (idx != torch.arange(3)).all()
    assert idx[2] == 1  # +inf is the hardest


# --------------------------------------------------------------------------- vectorised
@pytest.mark.parametrize("miner_cls", [ContrastiveHardNegativeMiner, RandomNegativeMiner, HardestNegativeMiner])
def test_miners_are_vectorised_and_fast(miner_cls, monkeypatch):
    torch.manual_seed(7)
    b = 512
    sim_i2t, sim_t2i = torch.randn(b, b) * 5, torch.randn(b, b) * 5
    ids = torch.randint(0, 200, (b,))
    miner = miner_cls()
    miner(sim_i2t[:8, :8], sim_t2i[:8, :8], ids[:8])  # warm-up

    def no_item(self):
        raise AssertionError("Tensor.item() called inside the miner (host sync / Python loop)")

    real_multinomial = torch.multinomial
    calls = []

    def counting_multinomial(*args, **kwargs):
        calls.append(1)
        return real_multinomial(*args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    monkeypatch.setattr(torch, "multinomial", counting_multinomial)
    t0 = time.perf_counter()
    neg = miner(sim_i2t, sim_t2i, ids)
    elapsed = time.perf_counter() - t0
    monkeypatch.undo()
    assert elapsed < 0.5, elapsed
    assert len(calls) <= 2  # one batched draw per direction, not one per row
    same = ids.view(-1, 1) == ids.view(1, -1)
    assert neg.valid_text.all() and neg.valid_image.all()
    assert not same[torch.arange(b), neg.neg_image_for_text].any()
    assert not same[torch.arange(b), neg.neg_text_for_image].any()


@pytest.mark.slow
def test_fixed_sampling_temperature_softens_a_sharp_itc_temperature():
    """With temperature=t the miner samples from softmax(cosine / t), whatever the ITC temperature."""
    from albef.modeling.miners.contrastive_hard import ContrastiveHardNegativeMiner

    torch.manual_seed(0)
    cos = torch.tensor([[1.0, 0.9, 0.5], [0.9, 1.0, 0.5], [0.5, 0.9, 1.0]])
    itc_temp = torch.tensor(0.01)
    official = ContrastiveHardNegativeMiner()
    soft = ContrastiveHardNegativeMiner(temperature=0.5)
    n = 4000
    counts_off = torch.zeros(3)
    counts_soft = torch.zeros(3)
    for _ in range(n // 100):
        for _ in range(100):
            counts_off[official(cos / itc_temp, cos / itc_temp, None, temp=itc_temp).neg_image_for_text[0]] += 1
            counts_soft[soft(cos / itc_temp, cos / itc_temp, None, temp=itc_temp).neg_image_for_text[0]] += 1
    # official: softmax([0.9, 0.5] / 0.01) -> practically always column 1
    assert counts_off[1] / n > 0.999
    p = torch.softmax(torch.tensor([0.9, 0.5]) / 0.5, 0)
    assert abs(counts_soft[1] / n - p[0].item()) < 0.03 and abs(counts_soft[2] / n - p[1].item()) < 0.03
    with pytest.raises(ValueError):
        ContrastiveHardNegativeMiner(temperature=0.0)
