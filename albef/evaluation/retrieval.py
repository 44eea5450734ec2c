"""Image-text retrieval: ITC similarities, then ITM re-ranking of the top k, all batched.

Metrics follow the official ``itm_eval``: for image->text the rank of an image is the
best rank among its ground-truth captions; for text->image the rank of the caption's
image. ``txt_r{1,5,10}``, ``img_r{1,5,10}`` are percentages of ranks < K;
``txt_r_mean``, ``img_r_mean`` their means and ``r_mean`` the mean of those two.
A rank counts the wrong candidates scoring at least as high as the best ground truth
(ties are losses: the official argsort breaks them by index, which can flatter a model
whose scores collapse).
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any, Sequence

import torch

from albef.data.tokenization import tokenize
from albef.evaluation.base import Evaluator, LoaderFn
from albef.registry import EVALUATOR_REGISTRY
from albef.utils import comm

logger = logging.getLogger("albef.evaluation")


def retrieval_metrics(scores_i2t: torch.Tensor, scores_t2i: torch.Tensor, txt2img: Sequence[int], img2txt: Sequence[Sequence[int]]) -> dict[str, float]:
    """scores_i2t [N_i, N_t], scores_t2i [N_t, N_i] -> the official recall metrics (percent)."""
    n_i, n_t = scores_i2t.shape
    gt_i2t = torch.zeros(n_i, n_t, dtype=torch.bool)
    rows = torch.repeat_interleave(torch.arange(n_i), torch.tensor([len(t) for t in img2txt]))
    gt_i2t[rows, torch.tensor([t for ts in img2txt for t in ts], dtype=torch.long)] = True
    # Ties count against the ground truth, so a collapsed model (all scores equal) scores 0, not 100.
    s = scores_i2t.float().cpu()
    best_gt = s.masked_fill(~gt_i2t, float("-inf")).max(dim=1, keepdim=True).values
    rank_i2t = ((s >= best_gt) & ~gt_i2t).sum(dim=1)
    s = scores_t2i.float().cpu()
    gt_idx = torch.tensor(txt2img, dtype=torch.long).view(-1, 1)
    gt = s.gather(1, gt_idx)
    others = torch.ones_like(s, dtype=torch.bool).scatter_(1, gt_idx, False)
    rank_t2i = ((s >= gt) & others).sum(dim=1)
    out: dict[str, float] = {}
    for k in (1, 5, 10):
        out[f"txt_r{k}"] = 100.0 * (rank_i2t < k).float().mean().item()
    for k in (1, 5, 10):
        out[f"img_r{k}"] = 100.0 * (rank_t2i < k).float().mean().item()
    out["txt_r_mean"] = (out["txt_r1"] + out["txt_r5"] + out["txt_r10"]) / 3
    out["img_r_mean"] = (out["img_r1"] + out["img_r5"] + out["img_r10"]) / 3
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


def itm_scores(model, head: str, text_embeds: torch.Tensor, text_mask: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
    """Matched-class ITM logit [N] for N (text, image) pairs (``model.itm_logits``)."""
    return model.itm_logits(text_embeds, text_mask, image_embeds, head)[:, 1]


@torch.no_grad()
def pair_itm_logits(model, head: str, t_idx: torch.Tensor, i_idx: torch.Tensor, text_embeds, text_mask, image_embeds, pair_batch: int, autocast) -> torch.Tensor:
    """ITM match logits [P] of the P pairs (text ``t_idx[p]``, image ``i_idx[p]``), under
    ``autocast``: :meth:`~albef.modeling.inference.InferenceMixin.pair_itm_logits`."""
    with autocast:
        return model.pair_itm_logits(t_idx, i_idx, text_embeds, text_mask, image_embeds, pair_batch, head)


def _rank_share(n: int) -> tuple[int, int]:
    ws, rank = comm.get_world_size(), comm.get_rank()
    per = (n + ws - 1) // ws
    return min(n, rank * per), min(n, (rank + 1) * per)


@torch.no_grad()
def _rerank(model, sims: torch.Tensor, k: int, query_is_image: bool, text_embeds, text_mask, image_embeds, pair_batch: int, autocast, add_itc: bool = False, head: str = "itm") -> torch.Tensor:
    """ITM logits for each query's top-k candidates; -100 elsewhere. Rows split across ranks.

    ``add_itc`` adds the candidate's ITC cosine to its ITM logit (LAVIS's score).

    sims [N_q, N_c] -> scores [N_q, N_c] (one direction; :func:`_rerank_both` scores the
    pairs of both directions at once).
    """
    n_q, n_c = sims.shape
    k = min(k, n_c)
    lo, hi = _rank_share(n_q)
    scores = torch.zeros(n_q, n_c, device=sims.device)
    if hi > lo:
        top = sims[lo:hi].topk(k, dim=1).indices  # [n, k]
        q = torch.arange(lo, hi, device=sims.device).repeat_interleave(k)
        c = top.reshape(-1)
        t_idx, i_idx = (c, q) if query_is_image else (q, c)
        scores_k = pair_itm_logits(model, head, t_idx, i_idx, text_embeds, text_mask, image_embeds, pair_batch, autocast).view(hi - lo, k)
        if add_itc:
            scores_k = scores_k + sims[lo:hi].gather(1, top)
        block = torch.full((hi - lo, n_c), -100.0, device=sims.device)
        block.scatter_(1, top, scores_k)
        scores[lo:hi] = block
    return comm.all_reduce_sum(scores)


@torch.no_grad()
def _rerank_both(model, sims: torch.Tensor, k: int, text_embeds, text_mask, image_embeds, pair_batch: int, autocast, add_itc: bool = False, head: str = "itm") -> tuple[torch.Tensor, torch.Tensor]:
    """Both directions' re-ranking scores (i2t [N_i, N_t], t2i [N_t, N_i]): each image's
    top-k texts and each text's top-k images by ITC, scored by ITM, -100 elsewhere.

    The same values as :func:`_rerank` per direction, with less work: a pair that is in
    both top-k lists (most of them: a text's best images rank it highly too) goes
    through the fusion encoder once, and each image's keys/values are computed once per
    chunk of its pairs (:func:`pair_itm_logits`). The unique pairs are split across ranks;
    every rank uses rank 0's top-k lists, so the ranks agree on the pairs even where their
    similarities differ in the last bit (ties, non-deterministic kernels).
    """
    n_i, n_t = sims.shape
    k_i, k_t = min(k, n_t), min(k, n_i)
    dev = sims.device
    top_i2t = comm.broadcast(sims.topk(k_i, dim=1).indices.contiguous())  # [N_i, k]: texts of each image
    top_t2i = comm.broadcast(sims.t().topk(k_t, dim=1).indices.contiguous())  # [N_t, k]: images of each text
    key_i2t = torch.arange(n_i, device=dev).repeat_interleave(k_i) * n_t + top_i2t.reshape(-1)
    key_t2i = top_t2i.reshape(-1) * n_t + torch.arange(n_t, device=dev).repeat_interleave(k_t)
    keys = torch.cat([key_i2t, key_t2i])  # pair (i, t) as i * N_t + t
    unique, inverse = torch.unique(keys, return_inverse=True)  # sorted: grouped by image
    lo, hi = _rank_share(unique.numel())
    logits = torch.zeros(unique.numel(), device=dev)
    if hi > lo:
        part = unique[lo:hi]
        logits[lo:hi] = pair_itm_logits(model, head, part % n_t, part // n_t, text_embeds, text_mask, image_embeds, pair_batch, autocast)
    logits = comm.all_reduce_sum(logits)
    values = logits[inverse]
    if add_itc:
        values = values + sims.reshape(-1)[keys]
    s_i2t = torch.full((n_i * n_t,), -100.0, device=dev)
    s_i2t[key_i2t] = values[: key_i2t.numel()]
    s_t2i = torch.full((n_i, n_t), -100.0, device=dev)
    s_t2i.view(-1)[key_t2i] = values[key_i2t.numel():]
    return s_i2t.view(n_i, n_t), s_t2i.t().contiguous()


@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str], max_tokens: int, text_batch: int, device, autocast, tokenization: str = "ours"):
    """Every text through the text encoder in batches of ``text_batch``, padded to ``max_tokens``:
    (hidden [N, L, H], mask [N, L], feature [N, E] float32, or None without projections)."""
    emb, masks, feats = [], [], []
    for s in range(0, len(texts), text_batch):
        enc = tokenize(tokenizer, list(texts[s : s + text_batch]), max_tokens, pad_to_max=True, mode=tokenization)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        with autocast:
            e, f = model.encode_text(ids, mask)
        emb.append(e), masks.append(mask), feats.append(f.float() if f is not None else None)
    feat = torch.cat(feats) if all(f is not None for f in feats) else None
    return torch.cat(emb), torch.cat(masks), feat


@torch.no_grad()
def encode_images(model, image_loader, n: int, device, autocast):
    """The ``n`` images of ``image_loader`` (batches of ``image`` and ``index``) in index order:
    (tokens [n, 1+N, Dv], feature [n, E] float32, or None without projections)."""
    emb, feat = [None] * n, [None] * n
    for batch in image_loader:
        with autocast:
            e, f = model.encode_image(batch["image"].to(device))
        for j, i in enumerate(batch["index"].tolist()):
            emb[i], feat[i] = e[j], (f[j].float() if f is not None else None)
    return torch.stack(emb), (torch.stack(feat) if all(f is not None for f in feat) else None)


@torch.no_grad()
def evaluate_retrieval(model, dataset, image_loader, tokenizer, *, k_test: int = 256, max_tokens: int = 30, text_batch: int = 256, pair_batch: int = 256, device: torch.device | str = "cpu", amp: bool = False, rerank_score: str = "itm", tokenization: str = "ours", rerank: bool = True, head: str = "itm") -> dict[str, dict[str, float]]:
    """Returns ``{"retrieval_itc": {...}, "retrieval": {...}}`` (the second only with ``rerank``).

    ``rerank``: re-rank each query's ITC top ``k_test`` with the model's ITM head
    ``model.heads.<head>`` (an error if the model has none). ``rerank_score``: ``itm``
    ranks by the ITM "match" logit (official ALBEF); ``itm+itc`` by that logit plus the
    ITC cosine (LAVIS). ``tokenization``: ``ours`` or ``official`` (``[CLS]`` + words, no
    ``[SEP]``), as in training (``data.tokenization``).
    """
    if rerank_score not in ("itm", "itm+itc"):
        raise ValueError(f"rerank_score must be 'itm' or 'itm+itc', got {rerank_score!r}")
    if rerank:
        model.head(head)  # asks for the ITM head explicitly: a model without one is an error here, not a silent ITC-only run
    add_itc = rerank_score == "itm+itc"
    was_training = model.training
    model.eval()
    device = torch.device(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
    try:
        text_embeds, text_mask, text_feat = encode_texts(model, tokenizer, dataset.text, max_tokens, text_batch, device, autocast, tokenization)
        image_embeds, image_feat = encode_images(model, image_loader, len(dataset), device, autocast)
        sims = image_feat @ text_feat.t()  # [N_i, N_t], cosine (no temperature), as the official code
        results = {"retrieval_itc": retrieval_metrics(sims, sims.t(), dataset.txt2img, dataset.img2txt)}
        if rerank:
            s_i2t, s_t2i = _rerank_both(model, sims, k_test, text_embeds, text_mask, image_embeds, pair_batch, autocast, add_itc, head)
            results["retrieval"] = retrieval_metrics(s_i2t, s_t2i, dataset.txt2img, dataset.img2txt)
    finally:
        model.train(was_training)
    return results


@EVALUATOR_REGISTRY.register()
class RetrievalEvaluator(Evaluator):
    """Image-text retrieval on a split in the official format (``RetrievalEvalJSON``).

    Metrics: ``<prefix>/{txt_r1, txt_r5, txt_r10, img_r1, img_r5, img_r10, txt_r_mean,
    img_r_mean, r_mean}`` ranked by ITC then re-ranked by ITM, and the same under
    ``<prefix>_itc/`` for the ITC similarities alone.

    Args:
        split: ``data.<split>`` to evaluate (``test`` or ``val``).
        prefix: metric prefix (default: the config key under ``eval``).
        batch_size: images per encoder forward.
        k_test: candidates per query re-ranked by ITM (official: 256 COCO, 128 Flickr30K).
        itm_batch_size: (text, image) pairs per fusion forward when re-ranking.
        max_tokens: caption length (official evaluation: 30, padded to it).
        rerank: re-rank with the ITM head (``false``: ITC only, for models without one).
        rerank_score: ``itm`` (official) or ``itm+itc`` (LAVIS).
        head: key of the ITM head in ``model.heads``.
    """

    def __init__(
        self,
        *,
        dataset: Any,
        loader_fn: LoaderFn,
        tokenizer: Any,
        prefix: str,
        split: str = "test",
        batch_size: int = 64,
        k_test: int = 256,
        itm_batch_size: int = 256,
        max_tokens: int = 30,
        rerank: bool = True,
        rerank_score: str = "itm",
        head: str = "itm",
        tokenization: str = "ours",
        device: torch.device | str = "cpu",
        amp: bool = False,
    ):
        super().__init__(dataset=dataset, prefix=prefix, split=split, device=device, amp=amp)
        if not hasattr(dataset, "txt2img") or not hasattr(dataset, "img2txt"):
            raise ValueError(f"eval.{prefix}: RetrievalEvaluator needs a retrieval split (RetrievalEvalJSON), got {type(dataset).__name__}")
        if rerank_score not in ("itm", "itm+itc"):
            raise ValueError(f"eval.{prefix}.rerank_score must be 'itm' or 'itm+itc', got {rerank_score!r}")
        if k_test < 1:
            raise ValueError(f"eval.{prefix}.k_test must be >= 1, got {k_test}")
        self.loader_fn, self.tokenizer = loader_fn, tokenizer
        self.batch_size, self.k_test, self.itm_batch_size, self.max_tokens = batch_size, k_test, itm_batch_size, max_tokens
        self.rerank, self.rerank_score, self.head, self.tokenization = rerank, rerank_score, head, tokenization

    def check(self, model) -> None:
        if self.rerank and not model.has_head(self.head):
            raise ValueError(
                f"eval.{self.prefix}: re-ranking needs the model's ITM head (model.heads.{self.head}), and this model has "
                f"none (is model.objectives.itm off?). Set eval.{self.prefix}.rerank=false to evaluate ITC retrieval only."
            )

    def evaluate(self, model) -> dict[str, float]:
        self.check(model)
        res = evaluate_retrieval(
            model, self.dataset, self.loader_fn(self.dataset, self.batch_size), self.tokenizer, k_test=self.k_test,
            max_tokens=self.max_tokens, pair_batch=self.itm_batch_size, device=self.device, amp=self.amp,
            rerank_score=self.rerank_score, tokenization=self.tokenization, rerank=self.rerank, head=self.head,
        )
        out = {f"{self.prefix}_itc/{k}": v for k, v in res["retrieval_itc"].items()}
        if "retrieval" in res:
            out.update({f"{self.prefix}/{k}": v for k, v in res["retrieval"].items()})
        return out

    def describe(self) -> str:
        return f"retrieval on data.{self.split} ({len(self.dataset)} images, {len(self.dataset.text)} captions)"


def format_results_table(results: dict[str, dict[str, float]]) -> str:
    cols = ["txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean"]
    head = f"| {'scores':<15} | " + " | ".join(f"{c:>7}" for c in cols) + " |"
    lines = [head, "|" + "-" * 17 + "|" + "|".join("-" * 9 for _ in cols) + "|"]
    for name, m in results.items():
        lines.append(f"| {name:<15} | " + " | ".join(f"{m[c]:7.2f}" for c in cols) + " |")
    return "\n".join(lines)
