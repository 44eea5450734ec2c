"""What one step knows, handed to every objective (and to the evaluators' forward passes).

Objectives never see the model. They get a :class:`StepContext`: the batch, the online
(and, on request, teacher) encodings of it, computed lazily and cached, and a few narrow
callables (:class:`EncodeFns`): encode an image or a text, fuse a text with visual
tokens, look a head up -- each with ``teacher=True`` to run the same function on the
momentum teacher's weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from albef.modeling.fusion.visual import VisualInput


@dataclass
class TeacherOutput:
    """Contrastive targets from the teacher for one batch (all without gradient).

    image_feat_m, text_feat_m: [B, E] momentum (or detached online) features.
    image_feat_all, text_feat_all: [B + Q, E] = batch features then the queue.
    idx_all: [B + Q] image ids (-100 = unknown) or None when the batch has no ids.
    image_embeds_m: [B, 1+N, Dv] momentum image tokens, or None (see ``StepContext.image``).
    alpha: distillation weight for this step: a float (0 = no distillation) or the
        teacher's 0-d tensor (see :func:`distilling`).
    """

    image_feat_m: torch.Tensor
    text_feat_m: torch.Tensor
    image_feat_all: torch.Tensor
    text_feat_all: torch.Tensor
    idx_all: torch.Tensor | None
    image_embeds_m: torch.Tensor | None
    alpha: float | torch.Tensor


def distilling(alpha: float | torch.Tensor, flag: bool = True) -> bool:
    """Whether an objective computes its distillation term: for a float alpha, alpha > 0;
    for a tensor alpha (the teacher's ramp buffer, whose value changes between steps of a
    compiled step without recompiling), the static ``flag`` (configured alpha > 0). A
    tensor alpha of 0 then mixes in the teacher with weight 0: the same loss."""
    if isinstance(alpha, torch.Tensor):
        return bool(flag)
    return float(alpha) > 0


@dataclass
class TextNegatives:
    """The batch's extra false texts (``data.text_negatives``), one per text, online encoder.

    hidden: [B, L, H] text-encoder states; mask: [B, L]; feat: [B, E] normalised feature
    (None without projections); valid: [B] bool, False where a text has no negative (its
    slot holds a placeholder that objectives must drop).
    """

    hidden: torch.Tensor
    mask: torch.Tensor
    feat: torch.Tensor | None
    valid: torch.Tensor


@dataclass
class EncodeFns:
    """The model's functions an objective may call (each takes ``teacher=False``; with
    ``teacher=True`` it runs on the momentum teacher's weights, without gradient).

    encode_image(image [B, 3, H, W]) -> (tokens [B, 1+N, Dv], feature [B, E] or None)
    encode_text(ids [B, L], mask [B, L]) -> (hidden [B, L, H], feature [B, E] or None)
    encode_visual(images [B, 3, H, W] or [B, K, 3, H, W]) -> VisualInput (K token sets)
    fuse(text [B, L, H], mask [B, L], visual: VisualInput) -> [B, L, H]
    prepare_visual(visual: VisualInput, teacher=False) -> VisualInput with the fusion's cross-attention
        keys/values attached (computed once per image; optional: None = leave as is)
    head(key) -> the head ``model.heads.<key>`` (raises if the model has none); with
        ``teacher=True`` its EMA copy, or None when the teacher keeps none.
    """

    encode_image: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
    encode_text: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
    encode_visual: Callable[..., VisualInput]
    fuse: Callable[..., torch.Tensor]
    head: Callable[..., nn.Module | None]
    prepare_visual: Callable[..., VisualInput] | None = None


class StepContext:
    """Online outputs of one batch plus lazily computed, cached encodings and similarities.

    ``image(teacher)`` (tokens [B, 1+N, Dv], feature [B, E]), ``text(teacher)`` (hidden
    [B, L, H], feature [B, E]), ``visual(teacher)`` (a :class:`VisualInput`) and
    ``fused(teacher)`` ([B, L, H]: the batch's texts fused with its images) are computed
    on first use; ``image_embeds``/``image_feat``/``text_embeds``/``text_feat`` are the
    online ones. ``teacher`` is the :class:`TeacherOutput` (momentum features and queue),
    also computed on first use. ``temp``: 0-dim learnable temperature (None when the
    model has no projections); ``alpha``: this step's distillation weight (float, or a
    0-d tensor with ``distill`` saying whether to distil at all); :attr:`distill`: whether
    objectives compute their distillation terms (:func:`distilling`); ``ramp``: this
    step's warm-up factor in [0, 1] (alpha = configured alpha * ramp), which objectives
    with an alpha of their own apply to it (:meth:`alpha_for`).

    Precomputed values may be given to the constructor (tests, objectives without a model).
    """

    def __init__(
        self,
        batch: dict[str, Any],
        fns: EncodeFns | None = None,
        *,
        temp: torch.Tensor | None = None,
        alpha: float | torch.Tensor | None = None,
        distill: bool | None = None,
        ramp: float | torch.Tensor = 1.0,
        teacher_fn: Callable[["StepContext"], TeacherOutput] | None = None,
        teacher: TeacherOutput | None = None,
        image_embeds: torch.Tensor | None = None,
        image_feat: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        text_feat: torch.Tensor | None = None,
    ):
        self.batch = batch
        self.fns = fns
        self.temp = temp
        if alpha is None:
            alpha = teacher.alpha if teacher is not None else 0.0
        self.alpha = alpha if isinstance(alpha, torch.Tensor) else float(alpha)
        self.distill = distilling(self.alpha, True if distill is None else distill)
        self.ramp = ramp if isinstance(ramp, torch.Tensor) else float(ramp)
        self._teacher_fn = teacher_fn
        self.stats: dict[str, torch.Tensor] = {}
        self._cache: dict[Any, Any] = {}
        if image_embeds is not None or image_feat is not None:
            self._cache[("image", False)] = (image_embeds, image_feat)
        if text_embeds is not None or text_feat is not None:
            self._cache[("text", False)] = (text_embeds, text_feat)
        if teacher is not None:
            self._cache["teacher"] = teacher

    def alpha_for(self, own: float | None) -> tuple[float | torch.Tensor, bool]:
        """(alpha, distil?) of an objective with its own configured alpha ``own``: None ->
        the teacher's (:attr:`alpha`, :attr:`distill`); a number -> ``own * ramp`` (the
        same warm-up ramp as the teacher's alpha), distilling when ``own > 0``."""
        if own is None:
            return self.alpha, self.distill
        alpha = own * self.ramp
        return alpha, distilling(alpha, own > 0)

    def _cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def _need_fns(self) -> EncodeFns:
        if self.fns is None:
            raise RuntimeError("this StepContext has no model functions (built from precomputed tensors only)")
        return self.fns

    # ------------------------------------------------------------------ the batch's encodings
    def image(self, teacher: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tokens [B, 1+N, Dv], normalised feature [B, E] or None) of ``batch['image']``."""
        return self._cached(("image", teacher), lambda: self._need_fns().encode_image(self.batch["image"], teacher=teacher))

    def text(self, teacher: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden [B, L, H], normalised feature [B, E] or None) of the batch's texts."""
        return self._cached(
            ("text", teacher),
            lambda: self._need_fns().encode_text(self.batch["input_ids"], self.batch["attention_mask"], teacher=teacher),
        )

    def visual(self, teacher: bool = False) -> VisualInput:
        """The batch's images as fusion input: one token set, or K for [B, K, 3, H, W] images."""
        def compute() -> VisualInput:
            img = self.batch.get("image")
            if img is None or img.dim() == 4:  # one image per text: reuse its encoding
                vis = VisualInput.of(self.image(teacher)[0])
            else:
                vis = self._need_fns().encode_visual(img, teacher=teacher)
            prepare = self.fns.prepare_visual if self.fns is not None else None
            # the fusion's keys/values of each image once, shared by every objective's pairs
            return prepare(vis, teacher=teacher) if prepare is not None else vis
        return self._cached(("visual", teacher), compute)

    def fused(self, teacher: bool = False) -> torch.Tensor:
        """[B, L, H]: the batch's texts fused with its own images."""
        return self._cached(("fused", teacher), lambda: self.fuse(self.text(teacher)[0], self.attention_mask, self.visual(teacher), teacher=teacher))

    def text_negatives(self) -> TextNegatives | None:
        """The batch's false texts (``text_neg_input_ids`` / ``text_neg_attention_mask`` /
        ``text_neg_valid``, made by the collator from ``data.text_negatives``) through the
        online text encoder, with gradient; None when the batch has none."""
        ids = self.batch.get("text_neg_input_ids")
        if ids is None:
            return None

        def compute() -> TextNegatives:
            from albef.data.compositional_negatives import KIND_STATS

            kind = self.batch.get("text_neg_kind")
            if kind is not None:  # why captions went without a negative, counted per step
                for code, name in KIND_STATS.items():
                    self.stats[f"text_negatives_{name}"] = (kind == code).sum().detach()
            mask = self.batch["text_neg_attention_mask"]
            if ids.shape != self.batch["input_ids"].shape:
                raise ValueError(f"text_neg_input_ids {tuple(ids.shape)} must have the shape of input_ids {tuple(self.batch['input_ids'].shape)} "
                                 "(the collator tokenises texts and their negatives together)")
            hidden, feat = self._need_fns().encode_text(ids, mask)
            return TextNegatives(hidden, mask, feat, self.batch["text_neg_valid"].bool())
        return self._cached("text_negatives", compute)

    @property
    def image_embeds(self) -> torch.Tensor:
        return self.image()[0]

    @property
    def image_feat(self) -> torch.Tensor:
        return self.image()[1]

    @property
    def text_embeds(self) -> torch.Tensor:
        return self.text()[0]

    @property
    def text_feat(self) -> torch.Tensor:
        return self.text()[1]

    @property
    def teacher(self) -> TeacherOutput:
        """Momentum features and queue (computed by the teacher on first use)."""
        if "teacher" not in self._cache:
            if self._teacher_fn is None:
                raise RuntimeError("this StepContext has no teacher")
            self._cache["teacher"] = self._teacher_fn(self)
        return self._cache["teacher"]

    @property
    def teacher_computed(self) -> bool:
        return "teacher" in self._cache

    # ------------------------------------------------------------------ narrow model functions
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, teacher: bool = False):
        return self._need_fns().encode_text(input_ids, attention_mask, teacher=teacher)

    def encode_image(self, image: torch.Tensor, teacher: bool = False):
        return self._need_fns().encode_image(image, teacher=teacher)

    def fuse(self, text_embeds: torch.Tensor, text_mask: torch.Tensor, visual: VisualInput | torch.Tensor, teacher: bool = False) -> torch.Tensor:
        return self._need_fns().fuse(text_embeds, text_mask, VisualInput.of(visual), teacher=teacher)

    def head(self, key: str, teacher: bool = False) -> nn.Module | None:
        return self._need_fns().head(key, teacher=teacher)

    # ------------------------------------------------------------------ batch facts
    @property
    def batch_size(self) -> int:
        ids = self.batch.get("input_ids")
        if ids is not None:
            return ids.shape[0]
        return self.image_feat.shape[0]

    @property
    def image_ids(self) -> torch.Tensor | None:
        return self.batch.get("image_id")

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.batch["attention_mask"]

    @property
    def sim_i2t(self) -> torch.Tensor:
        """[B, B+Q]: online image features vs teacher text features + queue, / temp (float32)."""
        return self._cached("sim_i2t", lambda: self.image_feat.float() @ self.teacher.text_feat_all.float().t() / self.temp)

    @property
    def sim_t2i(self) -> torch.Tensor:
        """[B, B+Q]: online text features vs teacher image features + queue, / temp (float32)."""
        return self._cached("sim_t2i", lambda: self.text_feat.float() @ self.teacher.image_feat_all.float().t() / self.temp)
