"""Zero-shot image classification from class names and prompt templates (CLIP-style),
optionally re-ranked by ALBEF's image-text matching head.

    model, preprocess = albef.load("output/synthetic/model_final.pth")
    clf = ZeroShotClassifier(model, preprocess, ["red circle", "blue square"], ["{a} {}"], rerank_k=2)
    pred = clf.predict(preprocess.image(["a.jpg", "b.jpg"]))     # pred.labels, pred.topk [B, k]

Every class is embedded by prompt ensembling: the ITC text features of its T prompts
(``model.extract_features(mode="text")``, each L2-normalised) are averaged and the mean is
normalised again. An image's class logits are its ITC image feature against those class
embeddings over the model's temperature. With ``rerank_k`` = r > 1, the r best classes of
each image by ITC are put in the order of the ITM head's "match" logit
(``model.pair_itm_logits``) of (image, prompt): the mean logit over the class's T prompts
(``itm_prompts="mean"``, the ensemble of ITC applied to ITM) or the first template's only
(``"first"``, T times fewer fusion passes). Classes below the first r keep their ITC order.

:func:`classify_folder` runs a classifier over an :class:`~albef.data.image_folder.ImageFolder`
and scores it: top-1 / top-5 accuracy, chance level and per-class accuracy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from albef.data.image_folder import ImageFolder, load_images
from albef.data.preprocess import TextBatch

#: CLIP's single prompt; ``{a}`` is the article of the class name ("a" / "an")
DEFAULT_TEMPLATES = ("a photo of {a} {}.",)


def article(name: str) -> str:
    """``"an"`` before a vowel, else ``"a"`` (``"an orange square"``)."""
    return "an" if name[:1].lower() in "aeiou" else "a"


def format_prompt(template: str, name: str) -> str:
    """``template`` with ``{}`` the class name and ``{a}`` its article; ValueError naming a
    template without ``{}`` or with other fields."""
    if "{}" not in template:
        raise ValueError(f"prompt template {template!r} has no '{{}}' for the class name")
    try:
        return template.format(name, a=article(name))
    except (IndexError, KeyError, ValueError) as e:
        raise ValueError(f"prompt template {template!r}: only '{{}}' (class name) and '{{a}}' (its article) are fields ({e})") from None


@dataclass
class ZeroShotPrediction:
    """Zero-shot classification of B images among C classes.

    ``logits`` [B, C]: ITC cosine / temperature; ``probs`` [B, C]: their softmax over the
    classes; ``topk`` [B, k]: class indices best first (the first ``rerank_k`` in ITM order
    when re-ranked); ``itm_logits`` [B, C] or None: the ITM match logit of the classes each
    image re-ranked (its top ``rerank_k`` by ITC), NaN elsewhere; ``class_names`` (C)."""

    logits: torch.Tensor
    probs: torch.Tensor
    topk: torch.Tensor
    class_names: list[str]
    itm_logits: torch.Tensor | None = None

    @property
    def labels(self) -> list[str]:
        """The top-1 class name of each image (B)."""
        return [self.class_names[i] for i in self.topk[:, 0].tolist()]


class ZeroShotClassifier:
    """A classifier over ``class_names`` (C) made from ``templates`` (T) prompts per class.

    Args:
        model: an ALBEF model (its inference methods); ``preprocess``: its :class:`~albef.data.preprocess.Preprocess`.
        rerank_k: re-rank each image's top ``rerank_k`` classes by ITM (0 or 1: ITC only).
        itm_prompts: ``"mean"`` (mean ITM logit over the T prompts) or ``"first"`` (the first template).
        text_batch: prompts per text-encoder forward.

    Attributes: ``prompts`` (C*T strings, class-major), ``class_embeddings`` [C, E] (normalised).
    """

    def __init__(self, model: Any, preprocess: Any, class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                 rerank_k: int = 0, itm_prompts: str = "mean", text_batch: int = 256, head: str = "itm"):
        self.class_names = [str(c) for c in class_names]
        self.templates = list(templates)
        if not self.class_names:
            raise ValueError("zero-shot classification needs at least one class name")
        if not self.templates:
            raise ValueError("zero-shot classification needs at least one prompt template")
        if isinstance(rerank_k, bool) or not isinstance(rerank_k, int) or rerank_k < 0:
            raise ValueError(f"rerank_k must be an integer >= 0, got {rerank_k!r}")
        if itm_prompts not in ("mean", "first"):
            raise ValueError(f"itm_prompts must be 'mean' or 'first', got {itm_prompts!r}")
        if rerank_k > 1 and not model.has_head(head):
            raise ValueError(f"rerank_k={rerank_k} needs the ITM head model.heads.{head}; this model has none")
        self.model, self.preprocess, self.head, self.itm_prompts = model, preprocess, head, itm_prompts
        self.rerank_k = min(rerank_k, len(self.class_names)) if rerank_k > 1 else 0
        self.prompts = [format_prompt(t, c) for c in self.class_names for t in self.templates]
        self.class_embeddings, self._itm_text = self._encode_prompts(int(text_batch))

    def _encode_prompts(self, text_batch: int):
        """Class embeddings [C, E]; with re-ranking also the ITM prompts' encoder states [C*T' , L, H] and mask."""
        C, T = len(self.class_names), len(self.templates)
        tokens = self.preprocess.text(self.prompts)  # one batch: every prompt padded to one length
        feats, states, masks = [], [], []
        for s in range(0, len(tokens), text_batch):
            chunk = TextBatch(tokens.input_ids[s : s + text_batch], tokens.attention_mask[s : s + text_batch])
            f = self.model.extract_features(None, chunk, mode="text")
            if f.text_feat is None:
                raise ValueError("zero-shot classification needs a model with projections (model.embed_dim set)")
            feats.append(f.text_feat)
            if self.rerank_k:
                states.append(f.text_embeds)
                masks.append(f.text_mask)
        feat = torch.cat(feats).view(C, T, -1)
        # each prompt counts equally (features are unit vectors); the mean is renormalised so
        # the logits stay cosines
        emb = torch.nn.functional.normalize(feat.mean(dim=1), dim=-1)
        if not self.rerank_k:
            return emb, None
        states, masks = torch.cat(states), torch.cat(masks)
        if self.itm_prompts == "first":  # rows c*T: the first template of each class
            states, masks = states[::T].contiguous(), masks[::T].contiguous()
        return emb, (states, masks)

    @property
    def temperature(self) -> float:
        t = getattr(self.model, "temp", None)
        return float(t) if t is not None else 1.0

    @torch.no_grad()
    def predict(self, images: torch.Tensor, k: int = 5) -> ZeroShotPrediction:
        """Classify images [B, 3, H, W] (``preprocess.image([...])``); ``topk`` keeps ``min(k, C)`` classes."""
        C = len(self.class_names)
        f = self.model.extract_features(images, None, mode="image")
        emb = self.class_embeddings.to(f.image_feat.device)
        logits = f.image_feat @ emb.t() / self.temperature  # [B, C]
        # stable: equal logits keep class order, so a ranking is reproducible
        order = torch.argsort(logits, dim=1, descending=True, stable=True)
        itm = None
        if self.rerank_k:
            order, itm = self._rerank(f.image_embeds, order)
        return ZeroShotPrediction(logits, logits.softmax(dim=1), order[:, : min(k, C)], self.class_names, itm)

    def _rerank(self, image_embeds: torch.Tensor, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``order`` [B, C] with its first r columns sorted by ITM; the ITM logits [B, C] (NaN off the top r)."""
        B, C = order.shape
        r = self.rerank_k
        T = len(self.templates) if self.itm_prompts == "mean" else 1
        states, mask = self._itm_text
        dev = image_embeds.device
        cand = order[:, :r]  # [B, r]
        t_idx = (cand[:, :, None] * T + torch.arange(T, device=dev)).reshape(-1)  # prompt rows of each candidate
        i_idx = torch.arange(B, device=dev).repeat_interleave(r * T)
        with self.model._autocast():  # the model's inference precision, as its own methods use
            pair = self.model.pair_itm_logits(t_idx, i_idx, states.to(dev), mask.to(dev), image_embeds, head=self.head)
        score = pair.float().view(B, r, T).mean(dim=2)  # [B, r]
        rank = torch.argsort(score, dim=1, descending=True, stable=True)
        order = torch.cat([cand.gather(1, rank), order[:, r:]], dim=1)
        itm = torch.full((B, C), math.nan, device=dev).scatter_(1, cand, score)
        return order, itm


# --------------------------------------------------------------------------- over a labelled folder
@dataclass
class ClassAccuracy:
    """One class of a :class:`ZeroShotResult`: ``n`` images, ``top1`` % (None when n = 0)."""

    name: str
    n: int
    top1: float | None


@dataclass
class ZeroShotResult:
    """Accuracy over a labelled folder: ``top1``, ``top5`` (% of ``n`` images; top-5 is
    top-min(5, C)), ``chance_top1`` = 100/C, ``chance_top5`` = 100 min(5, C)/C;
    ``per_class`` (C rows); ``predictions`` [n] top-1 class per kept image, ``labels`` [n]
    their truth, ``paths`` (n kept files); ``skipped`` ``(path, reason)`` of files that did not load."""

    top1: float
    top5: float
    chance_top1: float
    chance_top5: float
    n: int
    class_names: list[str]
    per_class: list[ClassAccuracy]
    predictions: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "top1": self.top1, "top5": self.top5, "chance_top1": self.chance_top1, "chance_top5": self.chance_top5,
            "n": self.n, "num_classes": len(self.class_names),
            "per_class": [{"class": c.name, "n": c.n, "top1": c.top1} for c in self.per_class],
            "predictions": [{"image": p, "label": self.class_names[y], "top1": self.class_names[q]}
                            for p, y, q in zip(self.paths, self.labels.tolist(), self.predictions.tolist())],
            "skipped": [{"image": p, "reason": r} for p, r in self.skipped],
        }


def accuracy(topk: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[float, float, list[tuple[int, float | None]]]:
    """``(top-1 %, top-5 %, [(n, top-1 %) per class])`` of rankings ``topk`` [N, >=1] (class
    indices best first; top-5 reads the first min(5, width) columns) against ``labels`` [N]."""
    hit1 = (topk[:, 0] == labels).float()
    hit5 = (topk[:, :5] == labels[:, None]).any(dim=1).float()
    n = torch.bincount(labels, minlength=num_classes)
    correct = torch.bincount(labels, weights=hit1, minlength=num_classes)
    per = [(int(c), 100.0 * float(h) / int(c) if c else None) for c, h in zip(n.tolist(), correct.tolist())]
    return 100.0 * hit1.mean().item(), 100.0 * hit5.mean().item(), per


def classify_folder(classifier: ZeroShotClassifier, folder: ImageFolder, batch_size: int = 64,
                    progress: Callable[[int], None] | None = None) -> ZeroShotResult:
    """Classify every image of ``folder`` (``batch_size`` per forward) among its classes
    (``classifier.class_names`` must be ``folder.class_names``) and score the rankings.
    ``progress(n)`` is called with the number of files done after each batch."""
    if list(classifier.class_names) != list(folder.class_names):
        raise ValueError(f"the classifier's classes {classifier.class_names} are not the folder's {folder.class_names}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    C = len(folder.class_names)
    tops, labels, kept_paths, skipped = [], [], [], []
    for s in range(0, len(folder), batch_size):
        paths = folder.paths[s : s + batch_size]
        images, kept, bad = load_images(classifier.preprocess, paths)
        skipped += bad
        if images is not None:
            tops.append(classifier.predict(images, k=5).topk.cpu())
            labels.append(folder.labels[s : s + batch_size][kept])
            kept_paths += [paths[i] for i in kept]
        if progress is not None:
            progress(min(s + batch_size, len(folder)))
    if not tops:
        raise ValueError(f"{folder.root}: none of its {len(folder)} image files could be read")
    topk, y = torch.cat(tops), torch.cat(labels)
    top1, top5, per = accuracy(topk, y, C)
    return ZeroShotResult(
        top1=top1, top5=top5, chance_top1=100.0 / C, chance_top5=100.0 * min(5, C) / C, n=int(y.numel()),
        class_names=list(folder.class_names), per_class=[ClassAccuracy(c, n, a) for c, (n, a) in zip(folder.class_names, per)],
        predictions=topk[:, 0], labels=y, paths=kept_paths, skipped=skipped,
    )


def format_result(result: ZeroShotResult) -> str:
    """The summary line and the per-class table (class, n, top-1 %) as printed by ``tools/zero_shot.py``."""
    lines = [f"top-1 {result.top1:.2f} %  top-5 {result.top5:.2f} %  chance {result.chance_top1:.2f} % / {result.chance_top5:.2f} %  "
             f"({result.n} images, {len(result.class_names)} classes)"]
    width = max(len("class"), *(len(c.name) for c in result.per_class))
    lines.append(f"{'class':<{width}}  {'n':>5}  {'top-1 %':>7}")
    for c in result.per_class:
        acc = f"{c.top1:7.2f}" if c.top1 is not None else f"{'-':>7}"
        lines.append(f"{c.name:<{width}}  {c.n:>5}  {acc}")
    return "\n".join(lines)
