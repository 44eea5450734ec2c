"""Composition probes: does the model prefer a true caption to the same caption minimally edited?

For every caption of a retrieval split and every edit kind (relation flipped, the two
objects exchanged, one attribute changed, or a user's rules: :mod:`albef.data.caption_edits`)
the edited caption is false of the image. The probe scores both captions against the
image, with ITM (the fused matched-class logit, as retrieval re-ranking does) and with
ITC (cosine of the unimodal features), and reports per kind the share of captions whose
true version scores higher (ties count as failures). Chance is 50%; a bag-of-words model
is at 50% on relation flips and object exchanges by construction, since the edited
caption has the same words.

Retrieval R@1 can hide this: on a test set where the edited caption of an image is no
other image's caption, retrieval never asks the question.
"""
from __future__ import annotations

import json
import os
import random
from contextlib import nullcontext
from typing import Any, Sequence

import torch

from albef.data.caption_edits import CaptionEdits, SwapWords, load_edit_rules
from albef.data.tokenization import tokenize
from albef.evaluation.base import Evaluator, LoaderFn
from albef.evaluation.retrieval import encode_images, encode_texts, pair_itm_logits
from albef.registry import EVALUATOR_REGISTRY
from albef.utils import comm

__all__ = ["probe_items", "preference_shares", "evaluate_composition", "CompositionEvaluator", "world_manifest"]


def world_manifest(ann_file: str | None) -> dict | None:
    """The synthetic world's ``manifest.json`` beside ``ann_file`` (its colours and shapes
    make the built-in rules use only the world's own words), or None."""
    if not ann_file:
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(ann_file)), "manifest.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def probe_items(texts: Sequence[str], edits: CaptionEdits, kinds: Sequence[str] | None = None,
                balanced: bool = True, txt2img: Sequence[int] | None = None) -> tuple[list[tuple[int, str, str, str]], dict[str, int]]:
    """The probe's questions: ``[(caption index, kind, true caption, edited caption), ...]``
    and ``{kind: number of captions it does not apply to}``.

    Each caption is asked about, and with ``balanced`` so is each of its paraphrases
    (``edits.paraphrases_of``: "B right of A" for "A left of B"), whose true text is then
    the paraphrase. On a split whose captions all say "left" (never "right"), a model that
    merely prefers the word "left" would otherwise pass every relation flip; balanced, it
    scores 50%. The edit of caption ``j``'s ``p``-th version under ``kind`` draws from
    ``Random(f"{j}/{p}/{kind}")`` (reproducible). With ``txt2img``, an edit that is another
    caption of the same image (or its paraphrase) is true, so it is not asked (a symmetric
    relation such as "next to" in a user's rules); like an edit that does not apply, it
    counts in ``unmatched`` when no version of the caption is left to ask."""
    kinds = list(kinds or edits.kinds)
    items, unmatched = [], {k: 0 for k in kinds}
    true_of: dict[int, set[str]] = {}
    if txt2img is not None:
        for j, t in enumerate(texts):
            true_of.setdefault(txt2img[j], set()).update([t, *edits.paraphrases_of(t)])
    for j, t in enumerate(texts):
        versions = [t] + (edits.paraphrases_of(t) if balanced else [])
        same = true_of.get(txt2img[j], set()) if txt2img is not None else {t, *versions}
        for kind in kinds:
            found = False
            for p, s in enumerate(versions):
                e = edits.edit(s, kind, random.Random(f"{j}/{p}/{kind}"))
                if e is not None and e != s and e not in same:
                    items.append((j, kind, s, e))
                    found = True
            unmatched[kind] += not found
    return items, unmatched


def preference_shares(true_scores: torch.Tensor, false_scores: torch.Tensor, item_kinds: Sequence[str], kinds: Sequence[str]) -> dict[str, float]:
    """``{kind: % of its items with true_scores > false_scores}`` (ties lose); NaN for a kind with no item."""
    wins = (true_scores.float() > false_scores.float()).cpu()
    out = {}
    for kind in kinds:
        sel = torch.tensor([k == kind for k in item_kinds], dtype=torch.bool)
        out[kind] = 100.0 * wins[sel].float().mean().item() if bool(sel.any()) else float("nan")
    return out


@torch.no_grad()
def mlm_swap_preference(model, texts: Sequence[str], txt2img: Sequence[int], image_embeds: torch.Tensor, tokenizer, rule: SwapWords, *,
                        max_tokens: int = 30, tokenization: str = "ours", head: str = "mlm", autocast=None, batch_size: int = 256) -> tuple[float, int]:
    """Fill-in probe of a word-swap kind with the MLM head: in each caption, the first word
    that the rule swaps (one word piece, e.g. "left") is masked and the image-conditioned
    MLM head predicts it; the caption counts as right when the true word's logit beats its
    swap partner's ("right"). Returns (% right, captions probed). A model that knows the
    axis of a relation but not its direction is at 50% here."""
    vocab = tokenizer.get_vocab()
    pairs = {vocab[a]: vocab[b] for a, b in rule.table.items() if a in vocab and b in vocab}  # one-piece words only
    if not pairs:
        return float("nan"), 0
    dev = image_embeds.device
    swap_from = torch.tensor(list(pairs), device=dev)
    swap_to = torch.tensor(list(pairs.values()), device=dev)
    t2i = torch.as_tensor(list(txt2img), dtype=torch.long, device=dev)
    right, n = 0, 0
    for s in range(0, len(texts), batch_size):
        enc = tokenize(tokenizer, list(texts[s : s + batch_size]), max_tokens, pad_to_max=True, mode=tokenization)
        ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
        hit = torch.isin(ids, swap_from)  # [b, L]
        has = hit.any(dim=1)
        if not bool(has.any()):
            continue
        rows = has.nonzero().squeeze(1)
        col = hit[rows].float().argmax(dim=1)  # the first swappable word of each row
        ar = torch.arange(rows.numel(), device=dev)
        ids, mask = ids[rows], mask[rows]
        true_id = ids[ar, col]
        alt_id = swap_to[(true_id.view(-1, 1) == swap_from.view(1, -1)).float().argmax(dim=1)]
        with autocast or nullcontext():
            hidden, _ = model.encode_text(ids.index_put((ar, col), torch.full_like(true_id, tokenizer.mask_token_id)), mask)
            fused = model.fuse(hidden, mask, image_embeds[t2i[s + rows]])
            logits = model.head(head)(fused[ar, col]).float()  # [b', V]
        right += int((logits[ar, true_id] > logits[ar, alt_id]).sum())
        n += rows.numel()
    return (100.0 * right / n if n else float("nan")), n


@torch.no_grad()
def evaluate_composition(model, dataset, image_loader, tokenizer, edits: CaptionEdits, *, kinds: Sequence[str] | None = None, max_tokens: int = 30,
                         text_batch: int = 256, pair_batch: int = 256, device: torch.device | str = "cpu", amp: bool = False,
                         tokenization: str = "ours", head: str = "itm", mlm_head: str | None = None, balanced: bool = True) -> dict[str, Any]:
    """The probe on a retrieval split (``dataset.text``, ``dataset.txt2img``; images from ``image_loader``).

    ``balanced``: ask each question of the captions' paraphrases too (:func:`probe_items`).

    Returns ``{"kinds": {kind: {"itm": %, "itc": %, "n": questions, "unmatched": captions}},
    "items": [{"caption", "edited", "kind", "image", "itm_true", "itm_false", "itc_true", "itc_false"}, ...]}``
    (``itm`` entries only when the model has the ITM head ``head``; with ``mlm_head``, word-swap
    kinds also get ``mlm``/``mlm_n``: :func:`mlm_swap_preference`).
    """
    kinds = list(kinds or edits.kinds)
    items, unmatched = probe_items(dataset.text, edits, kinds, balanced=balanced, txt2img=dataset.txt2img)
    device = torch.device(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
    was_training = model.training
    model.eval()
    try:
        texts = list(dataset.text)
        index = {t: i for i, t in enumerate(texts)}

        def idx(s: str) -> int:
            if s not in index:
                index[s] = len(texts)
                texts.append(s)
            return index[s]

        true_idx = [idx(s) for _, _, s, _ in items]
        false_idx = [idx(e) for _, _, _, e in items]
        text_embeds, text_mask, text_feat = encode_texts(model, tokenizer, texts, max_tokens, text_batch, device, autocast, tokenization)
        image_embeds, image_feat = encode_images(model, image_loader, len(dataset), device, autocast)

        cap = torch.tensor(true_idx, dtype=torch.long, device=device)
        img = torch.tensor([dataset.txt2img[j] for j, _, _, _ in items], dtype=torch.long, device=device)
        fal = torch.tensor(false_idx, dtype=torch.long, device=device)
        item_kinds = [k for _, k, _, _ in items]
        scores: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if image_feat is not None and text_feat is not None:
            scores["itc"] = ((image_feat[img] * text_feat[cap]).sum(1), (image_feat[img] * text_feat[fal]).sum(1))
        if model.has_head(head) and items:
            both = pair_itm_logits(model, head, torch.cat([cap, fal]), torch.cat([img, img]), text_embeds, text_mask, image_embeds, pair_batch, autocast)
            scores["itm"] = (both[: len(items)], both[len(items):])
        elif model.has_head(head):
            scores["itm"] = (torch.zeros(0), torch.zeros(0))
        mlm = {}
        if mlm_head is not None and model.has_head(mlm_head):
            m_texts, m_t2i = [], []
            for j, t in enumerate(dataset.text):
                for s in [t] + (edits.paraphrases_of(t) if balanced else []):
                    m_texts.append(s), m_t2i.append(dataset.txt2img[j])
            for k in kinds:
                rule = edits.rules[k]
                if isinstance(rule, SwapWords):
                    mlm[k] = mlm_swap_preference(model, m_texts, m_t2i, image_embeds, tokenizer, rule, max_tokens=max_tokens,
                                                 tokenization=tokenization, head=mlm_head, autocast=autocast)
    finally:
        model.train(was_training)

    per_kind = {k: {"n": sum(1 for x in item_kinds if x == k), "unmatched": unmatched[k]} for k in kinds}
    for name, (t, f) in scores.items():
        for k, share in preference_shares(t, f, item_kinds, kinds).items():
            per_kind[k][name] = share
    for k, (share, n) in mlm.items():
        per_kind[k]["mlm"], per_kind[k]["mlm_n"] = share, n
    rows = []
    for p, (j, kind, s, e) in enumerate(items):
        row = {"caption": s, "edited": e, "kind": kind, "image": int(dataset.txt2img[j]), "caption_index": j}
        for name, (t, f) in scores.items():
            row[f"{name}_true"], row[f"{name}_false"] = float(t[p]), float(f[p])
        rows.append(row)
    return {"kinds": per_kind, "items": rows}


@EVALUATOR_REGISTRY.register()
class CompositionEvaluator(Evaluator):
    """``eval.<key>: {name: CompositionEvaluator, split: test, rules: shapes_world}``: the
    composition probe on a retrieval split. Metrics ``<prefix>/<kind>_itm`` and
    ``<prefix>/<kind>_itc`` (% of questions whose true caption scores higher than the
    edited one) and ``<prefix>/<kind>_n`` (how many questions: captions the kind applies
    to, and their paraphrases when ``balanced``).

    Args:
        rules: ``shapes_world`` (the synthetic world's grammar), a YAML rules file or a mapping.
        kinds: the kinds to probe (null: every kind of the rules).
        max_tokens, batch_size: text length and image batch of the forward passes.
        head: the ITM head's key.
        balanced: also ask each question of the captions' paraphrases (see :func:`probe_items`).
        manifest: the synthetic world's manifest for ``shapes_world`` rules (default: the
            ``manifest.json`` beside the split's file, if any).
    """

    def __init__(self, *, dataset, prefix: str, loader_fn: LoaderFn, tokenizer, split: str = "test", rules: Any = "shapes_world",
                 kinds: Sequence[str] | None = None, max_tokens: int = 30, batch_size: int = 128, tokenization: str = "ours",
                 head: str = "itm", device: torch.device | str = "cpu", amp: bool = False, manifest: dict | None = None, balanced: bool = True):
        super().__init__(dataset=dataset, prefix=prefix, split=split, device=device, amp=amp)
        if not hasattr(dataset, "txt2img"):
            raise ValueError(f"eval.{prefix}: CompositionEvaluator needs a retrieval split (data.{split} of RetrievalEvalJSON), got {type(dataset).__name__}")
        if manifest is None:
            manifest = world_manifest(getattr(dataset, "ann_file", None))
        self.edits = load_edit_rules(rules, manifest)
        self.kinds = list(kinds or self.edits.kinds)
        self.edits.subset(self.kinds)  # unknown kinds fail here, before training
        self.loader_fn, self.tokenizer, self.tokenization = loader_fn, tokenizer, tokenization
        self.max_tokens, self.batch_size, self.head = int(max_tokens), int(batch_size), head
        self.balanced = bool(balanced)
        self.last: dict[str, Any] | None = None

    def evaluate(self, model) -> dict[str, float]:
        # The probe is not split across ranks: rank 0 runs it once and every rank returns its
        # metrics (as the other evaluators' all-reduced ones, the same everywhere); ``last``
        # (the per-question rows) is kept on rank 0 only.
        # A failure on rank 0 is broadcast too, so the other ranks raise instead of waiting.
        if not comm.is_main_process():
            out = comm.broadcast_object(None)
            if isinstance(out, str):
                raise RuntimeError(f"eval.{self.prefix}: the composition probe failed on rank 0: {out}")
            return out
        try:
            res = evaluate_composition(model, self.dataset, self.loader_fn(self.dataset, self.batch_size), self.tokenizer, self.edits,
                                       kinds=self.kinds, max_tokens=self.max_tokens, device=self.device, amp=self.amp,
                                       tokenization=self.tokenization, head=self.head, balanced=self.balanced)
        except Exception as e:
            comm.broadcast_object(f"{type(e).__name__}: {e}")
            raise
        self.last = res
        out: dict[str, float] = {}
        for kind, r in res["kinds"].items():
            for name in ("itm", "itc"):
                if name in r:
                    out[f"{self.prefix}/{kind}_{name}"] = r[name]
            out[f"{self.prefix}/{kind}_n"] = float(r["n"])
        return comm.broadcast_object(out)
