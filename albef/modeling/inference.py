"""Inference with a trained model: features, ITC similarity, ITM match probability,
classification, VQA answers and Grad-CAM, with typed outputs.

These are methods of every ALBEF model (:class:`~albef.modeling.meta_arch.base.ALBEFModel`
inherits :class:`InferenceMixin`), and the evaluators call the same methods: evaluating a
split and answering one question are one code path.

Inputs are tensors: images [B, 3, H, W] ([B, K, 3, H, W] for NLVR2's K images per text)
and a :class:`~albef.data.preprocess.TextBatch` (ids and mask [B, L]), both made by the
``preprocess`` that :func:`albef.load` returns. Every method runs without gradients (Grad-CAM
differentiates the probabilities only) in the model's current mode; :func:`albef.load` puts
the model in eval mode and sets :attr:`InferenceMixin.inference_dtype` (bf16 autocast where
the device has it).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from albef.data.preprocess import TextBatch
from albef.modeling.fusion.visual import VisualInput


@dataclass
class Features:
    """``extract_features`` output (LAVIS modes). Image side: ``image_embeds`` [B_i, 1+N, Dv]
    (ViT tokens), ``image_feat`` [B_i, E] (projected, L2-normalised; None without
    projections). Text side: ``text_embeds`` [B_t, L, H], ``text_mask`` [B_t, L],
    ``text_feat`` [B_t, E]. ``multimodal_embeds`` [B, L, H]: the fusion encoder's states of
    text row b attending to image row b (mode ``multimodal``; [CLS] = ``[:, 0]``)."""

    image_embeds: torch.Tensor | None = None
    image_feat: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    text_feat: torch.Tensor | None = None
    multimodal_embeds: torch.Tensor | None = None


@dataclass
class ImageTextScores:
    """Every image against every text. ``similarity`` [N_i, N_t]: ITC cosine of the
    normalised features; ``itc_probability`` [N_i, N_t]: softmax over the texts of
    similarity / temperature; ``itm_probability`` [N_i, N_t]: the ITM head's "match"
    probability of each pair (None without an ITM head)."""

    similarity: torch.Tensor
    itc_probability: torch.Tensor
    itm_probability: torch.Tensor | None


@dataclass
class ClassPrediction:
    """``logits``, ``probs`` [B, C]; ``labels``: the arg-max class name of each row (when
    class names are known), ``index`` [B] the arg-max class."""

    logits: torch.Tensor
    probs: torch.Tensor
    index: torch.Tensor
    labels: list[str] | None = None


@dataclass
class Answers:
    """VQA answers: ``answers`` (B strings); ranking a candidate list also gives ``ranked``
    [B, k] (candidate indices, best first) and ``scores`` [B, k] (their log-likelihoods)."""

    answers: list[str]
    ranked: torch.Tensor | None = None
    scores: torch.Tensor | None = None


@dataclass
class WordGradCAM:
    """Grad-CAM of one (image, text) pair: ``sentence`` [gh, gw]; ``words`` [(word, map [gh, gw])]
    (word pieces merged); ``score``: the ITM match probability explained."""

    sentence: torch.Tensor
    words: list[tuple[str, torch.Tensor]]
    score: float


class InferenceMixin:
    """The inference methods of an ALBEF model (needs ``encode_image``, ``encode_text``,
    ``encode_visual``, ``prepare_visual``, ``fuse``, ``head`` and ``temp``)."""

    #: autocast dtype of the inference methods (None: the caller's precision, as in training)
    inference_dtype: torch.dtype | None = None

    def _autocast(self):
        dt = self.inference_dtype
        if dt is None or dt == torch.float32:
            return nullcontext()
        return torch.autocast(self._device().type, dtype=dt)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _text(self, text: Any) -> TextBatch:
        return TextBatch.of(text).to(self._device())

    def _images(self, image: torch.Tensor) -> torch.Tensor:
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"images must be a tensor [B, 3, H, W] (preprocess.image(...)), got {type(image).__name__}")
        if image.dim() == 3:
            image = image[None]
        return image.to(self._device())

    # ------------------------------------------------------------------ shared steps
    def fused_states(self, image: torch.Tensor, text: Any) -> torch.Tensor:
        """Fusion encoder states [B, L, H] of text row b with image row b (images [B, 3, H, W] or [B, K, 3, H, W])."""
        t = self._text(text)
        text_embeds, _ = self.encode_text(t.input_ids, t.attention_mask)
        visual = self.prepare_visual(self.encode_visual(self._images(image)))
        return self.fuse(text_embeds, t.attention_mask, visual)

    def itm_logits(self, text_embeds: torch.Tensor, text_mask: torch.Tensor, visual: VisualInput | torch.Tensor, head: str = "itm") -> torch.Tensor:
        """ITM logits [P, 2] (no match, match) of P (text, image) pairs, row by row, float32."""
        return self.head(head)(self.fuse(text_embeds, text_mask, visual)[:, 0]).float()

    @torch.no_grad()
    def pair_itm_logits(self, t_idx: torch.Tensor, i_idx: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor,
                        image_embeds: torch.Tensor, pair_batch: int = 256, head: str = "itm") -> torch.Tensor:
        """ITM "match" logits [P] of the P pairs (text ``t_idx[p]``, image ``i_idx[p]``) of encoded
        texts [N_t, L, H] and images [N_i, 1+N, Dv] (:meth:`pair_itm_head_logits`, match column)."""
        return self.pair_itm_head_logits(t_idx, i_idx, text_embeds, text_mask, image_embeds, pair_batch, head)[:, 1]

    @torch.no_grad()
    def pair_itm_head_logits(self, t_idx: torch.Tensor, i_idx: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor,
                             image_embeds: torch.Tensor, pair_batch: int = 256, head: str = "itm") -> torch.Tensor:
        """ITM logits [P, 2] (no match, match) of the P pairs (text ``t_idx[p]``, image ``i_idx[p]``).

        Pairs are processed grouped by image, ``pair_batch`` per fusion forward: the
        cross-attention keys and values of each image in a chunk are computed once
        (``prepare_visual``) and shared by all of that image's pairs. Input order kept.
        """
        order = torch.argsort(i_idx, stable=True)
        out = torch.empty(order.numel(), 2, device=text_embeds.device)
        for s in range(0, order.numel(), pair_batch):
            sel = order[s : s + pair_batch]
            images, inverse = torch.unique_consecutive(i_idx[sel], return_inverse=True)
            ti = t_idx[sel]
            visual = self.prepare_visual(image_embeds[images]).index(inverse)
            out[sel] = self.itm_logits(text_embeds[ti], text_mask[ti], visual, head)
        return out

    def classify_logits(self, image: torch.Tensor, text: Any, head: str = "cls") -> torch.Tensor:
        """Class logits [B, C] of the classifier ``model.heads.<head>`` on the fused [CLS] (float32)."""
        return self.head(head)(self.fused_states(image, text)[:, 0]).float()

    # ------------------------------------------------------------------ user methods
    @torch.no_grad()
    def extract_features(self, image: torch.Tensor | None = None, text: Any = None, mode: str = "multimodal") -> Features:
        """``mode``: ``image`` (needs ``image``), ``text`` (needs ``text``) or ``multimodal``
        (both, paired row by row; a single image or text is broadcast). See :class:`Features`."""
        if mode not in ("image", "text", "multimodal"):
            raise ValueError(f"mode must be 'image', 'text' or 'multimodal', got {mode!r}")
        out = Features()
        with self._autocast():
            if mode in ("image", "multimodal"):
                if image is None:
                    raise ValueError(f"mode={mode!r} needs an image")
                img_emb, img_feat = self.encode_image(self._images(image))
                out.image_embeds, out.image_feat = img_emb.float(), None if img_feat is None else img_feat.float()
            if mode in ("text", "multimodal"):
                if text is None:
                    raise ValueError(f"mode={mode!r} needs a text")
                t = self._text(text)
                txt_emb, txt_feat = self.encode_text(t.input_ids, t.attention_mask)
                out.text_embeds, out.text_mask, out.text_feat = txt_emb.float(), t.attention_mask, None if txt_feat is None else txt_feat.float()
            if mode == "multimodal":
                n_i, n_t = img_emb.shape[0], txt_emb.shape[0]
                if n_i != n_t and 1 not in (n_i, n_t):
                    raise ValueError(f"multimodal features pair images and texts row by row: got {n_i} images and {n_t} texts")
                n = max(n_i, n_t)
                img_emb = img_emb.expand(n, *img_emb.shape[1:])
                mask = t.attention_mask.expand(n, -1)
                txt_emb = txt_emb.expand(n, *txt_emb.shape[1:])
                out.multimodal_embeds = self.fuse(txt_emb, mask, self.prepare_visual(img_emb)).float()
        return out

    @torch.no_grad()
    def similarity(self, image: torch.Tensor, text: Any) -> torch.Tensor:
        """ITC cosine similarity [N_i, N_t] of every image with every text (needs projections)."""
        f = self.extract_features(image, None, "image").image_feat
        g = self.extract_features(None, text, "text").text_feat
        if f is None or g is None:
            raise ValueError("ITC similarity needs a model with projections (model.embed_dim set)")
        return f @ g.t()

    @torch.no_grad()
    def match(self, image: torch.Tensor, text: Any, head: str | None = "itm", pair_batch: int = 256) -> ImageTextScores:
        """Every image against every text: ITC similarity and probability, and the ITM match
        probability (the fusion encoder on all N_i x N_t pairs; ``head=None`` skips it).
        See :class:`ImageTextScores`."""
        t = self._text(text)
        with self._autocast():
            img_emb, img_feat = self.encode_image(self._images(image))
            txt_emb, txt_feat = self.encode_text(t.input_ids, t.attention_mask)
            if img_feat is None or txt_feat is None:
                raise ValueError("ITC scores need a model with projections (model.embed_dim set)")
            sim = img_feat.float() @ txt_feat.float().t()  # [N_i, N_t]
            itm = None
            if head is not None and self.has_head(head):
                n_i, n_t = sim.shape
                i_idx = torch.arange(n_i, device=sim.device).repeat_interleave(n_t)
                t_idx = torch.arange(n_t, device=sim.device).repeat(n_i)
                logits = self.pair_itm_head_logits(t_idx, i_idx, txt_emb, t.attention_mask, img_emb, pair_batch, head)
                itm = logits.softmax(dim=-1)[:, 1].view(n_i, n_t)
            elif head is not None and head != "itm":
                self.head(head)  # an explicitly named head that is missing: its error
        temp = float(self.temp) if self.temp is not None else 1.0
        return ImageTextScores(similarity=sim, itc_probability=(sim / temp).softmax(dim=1), itm_probability=itm)

    @torch.no_grad()
    def classify(self, image: torch.Tensor, text: Any, head: str = "cls", class_names: Sequence[str] | None = None) -> ClassPrediction:
        """SNLI-VE (image [B, 3, H, W], hypothesis) or NLVR2 (images [B, 2, 3, H, W], sentence)
        class probabilities of ``model.heads.<head>``. ``class_names``: default the head's
        ``class_names`` attribute, if any."""
        with self._autocast():
            logits = self.classify_logits(image, text, head)
        names = list(class_names) if class_names is not None else getattr(self.head(head), "class_names", None)
        index = logits.argmax(dim=1)
        if names is not None and len(names) != logits.shape[1]:
            raise ValueError(f"{len(names)} class names for a head with {logits.shape[1]} classes")
        return ClassPrediction(logits, logits.softmax(dim=1), index, [names[i] for i in index.tolist()] if names else None)

    @torch.no_grad()
    def answer(self, image: torch.Tensor, question: Any, candidates: TextBatch | None = None, *, k: int = 128,
               head: str = "answer", max_answer_tokens: int = 32, double_count_first_token: bool = False) -> Answers:
        """VQA: with ``candidates`` (a TextBatch of the answer list, ``preprocess.text(answers,
        max_answer_tokens)``) rank them (official: top ``k`` by the first token, then by the
        full log-likelihood); without, generate greedily up to ``max_answer_tokens`` (the
        question's TextBatch must carry its tokenizer)."""
        from albef.modeling.heads.answer_decoder import rank_answers

        dec = self.head(head)
        q = self._text(question)
        with self._autocast():
            states = self.fused_states(image, q)
            if candidates is not None:
                cand = TextBatch.of(candidates).to(states.device)
                idx, scores = rank_answers(dec, states, q.attention_mask, cand.input_ids, cand.attention_mask, k, double_count_first_token)
                names = cand.texts if cand.texts is not None else [str(i) for i in range(len(cand))]
                return Answers([names[i] for i in idx[:, 0].tolist()], idx, scores.float())
            tok = q.tokenizer
            if tok is None:
                raise ValueError("generating answers needs the tokenizer: pass the question as preprocess.text([...])")
            ids = dec.generate(states, q.attention_mask, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, max_answer_tokens)
        return Answers([s.strip() for s in tok.batch_decode(ids.tolist(), skip_special_tokens=True)])

    def gradcam(self, image: torch.Tensor, text: Any, *, mode: str = "itm", layer: int = 2, block: int = 8, head: str = "itm"):
        """Batched Grad-CAM of (image [B, 3, H, W], text) pairs (:class:`albef.modeling.gradcam.GradCAM`):
        ``itm`` on the cross-attention of fusion ``layer``, or ``itc`` on ViT ``block``."""
        from albef.modeling.gradcam import itc_gradcam, itm_gradcam

        t = self._text(text)
        img = self._images(image)
        with self._autocast():
            if mode == "itm":
                return itm_gradcam(self, img, t.input_ids, t.attention_mask, layer=layer, head=head)
            if mode == "itc":
                return itc_gradcam(self, img, t.input_ids, t.attention_mask, block=block)
        raise ValueError(f"Grad-CAM mode must be 'itm' or 'itc', got {mode!r}")

    def word_gradcam(self, image: torch.Tensor, text: TextBatch, *, layer: int = 2, head: str = "itm") -> WordGradCAM:
        """Per-word ITM Grad-CAM of one image and one text (a TextBatch of one, with its tokenizer)."""
        from albef.modeling.gradcam import word_maps

        t = self._text(text)
        if len(t) != 1 or self._images(image).shape[0] != 1:
            raise ValueError("word_gradcam explains one image and one text")
        if t.tokenizer is None:
            raise ValueError("word_gradcam needs the text's tokenizer: pass preprocess.text('...')")
        cam = self.gradcam(image, t, mode="itm", layer=layer, head=head)
        words = [(w, m.cpu()) for w, m in word_maps(cam.tokens[0].float(), t.input_ids[0].tolist(), t.tokenizer)]
        return WordGradCAM(cam.sentence[0].float().cpu(), words, float(cam.score[0]))
