"""What the demo computes, as plain Python: a loaded model's scores, Grad-CAM overlays, VQA
answers, entailment / NLVR2 predictions and index search, for one request at a time.

Every method takes what a page gives (a PIL image or None, a string) and returns tables as
rows and images as PIL images; bad input raises :class:`DemoInputError` with the sentence
the page shows. The Gradio layer (:mod:`albef.demo.app`) only wires these to components.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image

from albef.demo.overlay import display_size, heat_overlay

#: the score table's columns (the page, the API route and the tests read them by name)
SCORE_COLUMNS = ("text", "ITC similarity", "ITC probability", "ITM match probability")


class DemoInputError(ValueError):
    """Input the demo cannot answer (no image, no text, a head the checkpoint lacks): its
    message is what the page shows."""


def parse_texts(texts: str | Sequence[str] | None) -> list[str]:
    """Texts of a text box, one per line (blank lines dropped); DemoInputError when none."""
    lines = texts.splitlines() if isinstance(texts, str) else list(texts or [])
    out = [" ".join(str(t).split()) for t in lines]
    out = [t for t in out if t]
    if not out:
        raise DemoInputError("Enter at least one text (one per line).")
    return out


def _need_image(image: Any, what: str = "an image") -> Image.Image:
    if image is None:
        raise DemoInputError(f"Upload {what} or pick an example first.")
    if not isinstance(image, Image.Image):
        raise DemoInputError(f"expected a picture, got {type(image).__name__}")
    return image


class DemoPredictor:
    """The demo's model.

    Args:
        model, preprocess: from :func:`albef.load`.
        gradcam_layer: the fusion layer whose cross-attention Grad-CAM reads (default 0,
            the first: in the last layer only [CLS] reaches the ITM head, so its word maps
            are empty; ``configs/grounding/synthetic.yaml`` chose 0 on the val split).
        index: an image index for the search tab (``search_text(model, preprocess, texts, k)``), or None.
    """

    def __init__(self, model: torch.nn.Module, preprocess: Any, gradcam_layer: int = 0, index: Any = None):
        self.model, self.preprocess, self.index = model, preprocess, index
        self.num_fusion_layers = len(model.fusion.layer)
        self.gradcam_layer = self.check_layer(gradcam_layer)
        cfg = getattr(model, "config", None) or {}
        fusion = (cfg.get("model") or {}).get("fusion") or {}
        self.visual_inputs = int(fusion.get("num_visual_inputs") or 1)
        vqa = next((v for v in (cfg.get("eval") or {}).values() if v is not None and v.get("name") == "VQAEvaluator"), {}) or {}
        self.answer_k = int(vqa.get("k_test", 128))
        self.max_answer_tokens = int(vqa.get("max_answer_tokens", 12))
        self._candidates = None

    # ------------------------------------------------------------------ what the checkpoint can do
    @property
    def heads(self) -> list[str]:
        return sorted(self.model.heads)

    def has(self, head: str) -> bool:
        return self.model.has_head(head)

    def describe(self) -> str:
        """One line about the model: where it came from, its heads, its device."""
        src = getattr(self.model, "source", None) or "the given weights"
        dev = next(self.model.parameters()).device
        return (f"Model: `{src}` · heads: {', '.join(self.heads) or 'none'} · image {self.preprocess.image_res} px · "
                f"{self.num_fusion_layers} fusion layers · {dev.type}")

    def missing_head_message(self, head: str) -> str:
        """Why a tab is off: the head it needs and the checkpoint that has it."""
        need = {
            "answer": ("VQA", "a VQA answer decoder (`model.heads.answer`)", "configs/vqa/synthetic.yaml"),
            "cls": ("Entailment / NLVR2", "a classifier head (`model.heads.cls`)", "configs/ve/synthetic.yaml or configs/nlvr/synthetic.yaml"),
            "itm": ("Image and text", "an ITM head (`model.heads.itm`)", "configs/pretrain/synthetic.yaml"),
        }[head]
        return (f"**{need[0]} needs {need[1]}; this checkpoint has {', '.join(self.heads) or 'no heads'}.** "
                f"Start the demo with a checkpoint fine-tuned for it, e.g. the output of "
                f"`python tools/train_net.py --config-file {need[2].split(' or ')[0]}`"
                + (f" (or {need[2].split(' or ')[1]})" if " or " in need[2] else "") + ".")

    def _require(self, head: str) -> None:
        if not self.has(head):
            raise DemoInputError(self.missing_head_message(head).replace("**", ""))

    def check_layer(self, layer: Any) -> int:
        try:
            value = int(layer)
        except (TypeError, ValueError):
            raise DemoInputError(f"Grad-CAM layer must be a whole number, got {layer!r}") from None
        if not 0 <= value < self.num_fusion_layers:
            raise DemoInputError(f"Grad-CAM layer must be 0..{self.num_fusion_layers - 1} (the model has "
                                 f"{self.num_fusion_layers} fusion layers), got {value}")
        return value

    # ------------------------------------------------------------------ image and text
    def scores(self, image: Any, texts: str | Sequence[str]) -> list[list[Any]]:
        """One row per text (:data:`SCORE_COLUMNS`): ITC cosine similarity, ITC probability (a
        softmax over these texts) and ITM match probability (None without an ITM head)."""
        image = _need_image(image)
        lines = parse_texts(texts)
        if self.visual_inputs != 1:
            raise DemoInputError(f"this checkpoint reads {self.visual_inputs} images per text (NLVR2): use the Entailment / NLVR2 tab")
        try:
            s = self.model.match(self.preprocess.image(image), self.preprocess.text(lines))
        except ValueError as e:  # e.g. a fine-tuned model without ITC projections
            raise DemoInputError(f"this checkpoint cannot score image-text pairs: {e}") from e
        itm = s.itm_probability[0].tolist() if s.itm_probability is not None else [None] * len(lines)
        return [[t, round(a, 4), round(b, 4), None if c is None else round(c, 4)]
                for t, a, b, c in zip(lines, s.similarity[0].tolist(), s.itc_probability[0].tolist(), itm)]

    def word_overlays(self, image: Any, texts: str | Sequence[str], line: Any = 1, layer: Any = None
                      ) -> tuple[list[tuple[Image.Image, str]], str, float]:
        """ITM Grad-CAM of text number ``line`` (1-based) of ``texts``: ([(overlay, label)]: the
        sentence's map, then one per word), the text, and its match probability."""
        image = _need_image(image)
        lines = parse_texts(texts)
        self._require("itm")
        layer = self.gradcam_layer if layer is None else self.check_layer(layer)
        try:
            n = int(line)
        except (TypeError, ValueError):
            raise DemoInputError(f"the Grad-CAM line must be a number, got {line!r}") from None
        if not 1 <= n <= len(lines):
            raise DemoInputError(f"there {'is' if len(lines) == 1 else 'are'} {len(lines)} text line(s): pick a Grad-CAM line 1..{len(lines)}, got {n}")
        text = lines[n - 1]
        cam = self.model.word_gradcam(self.preprocess.image(image), self.preprocess.text([text]), layer=layer)
        shown = display_size(image)
        items = [(heat_overlay(shown, cam.sentence), "sentence")]
        items += [(heat_overlay(shown, m), w) for w, m in cam.words]
        return items, text, cam.score

    # ------------------------------------------------------------------ VQA
    def answer(self, image: Any, question: str | None, top: int = 5) -> tuple[str, list[list[Any]]]:
        """(answer, rows [candidate, log-likelihood] of the ``top`` ranked candidates; [] when
        the answer was generated because the checkpoint has no answer list)."""
        self._require("answer")
        image = _need_image(image)
        q = parse_texts([question or ""])[0] if (question or "").strip() else None
        if q is None:
            raise DemoInputError("Enter a question.")
        pre = self.preprocess
        if pre.answer_list:
            if self._candidates is None:  # tokenised once: the same list ranks every question
                self._candidates = pre.text(pre.answer_list, self.max_answer_tokens)
            k = min(self.answer_k, len(pre.answer_list))
            out = self.model.answer(pre.image(image), pre.text([q]), self._candidates, k=k)
            rows = [[pre.answer_list[i], round(float(s), 4)] for i, s in zip(out.ranked[0, :top].tolist(), out.scores[0, :top].tolist())]
            return out.answers[0], rows
        out = self.model.answer(pre.image(image), pre.text([q]), max_answer_tokens=self.max_answer_tokens)
        return out.answers[0], []

    # ------------------------------------------------------------------ entailment / NLVR2
    def classify(self, image: Any, text: str | None, image2: Any = None) -> list[list[Any]]:
        """Rows [class, probability] of SNLI-VE (image, hypothesis) or NLVR2 (left and right
        image, sentence), most probable first."""
        self._require("cls")
        image = _need_image(image, "an image" if self.visual_inputs == 1 else "the left image")
        if not (text or "").strip():
            raise DemoInputError("Enter a hypothesis / sentence.")
        pre = self.preprocess
        if self.visual_inputs == 2:
            image2 = _need_image(image2, "the right image")
            pixels = pre.image([image, image2])[None]  # [1, 2, 3, H, W]
        else:
            pixels = pre.image(image)
        pred = self.model.classify(pixels, pre.text([" ".join(text.split())]))
        names = getattr(self.model.head("cls"), "class_names", None)
        names = list(names) if names is not None else [f"class {i}" for i in range(pred.probs.shape[1])]
        rows = [[n, round(p, 4)] for n, p in zip(names, pred.probs[0].tolist())]
        return sorted(rows, key=lambda r: -r[1])

    # ------------------------------------------------------------------ search
    def search(self, text: str | None, k: Any = 8, rerank: bool = False) -> list[tuple[str, str]]:
        """The ``k`` images of the index that best match ``text``: [(path, label)], by ITC, or
        re-ranked by the ITM match probability of 4k ITC candidates (``rerank``)."""
        if self.index is None:
            raise DemoInputError("No image index: start the demo with --index DIR (made by tools/index_images.py).")
        query = parse_texts([text or ""])[0] if (text or "").strip() else None
        if query is None:
            raise DemoInputError("Enter a text to search for.")
        try:
            k = max(1, int(k))
        except (TypeError, ValueError):
            raise DemoInputError(f"the number of results must be a number, got {k!r}") from None
        return search_index(self.index, self.model, self.preprocess, query, k, rerank)


def search_index(index: Any, model: Any, preprocess: Any, query: str, k: int, rerank: bool = False) -> list[tuple[str, str]]:
    """The one place the demo calls the index (:meth:`albef.inference.index.ImageIndex.search_text`):
    the hits of one query as gallery items (path, "ITC s[ · ITM p]")."""
    try:
        hits = index.search_text(model, preprocess, [query], k, rerank="itm" if rerank else None)[0]
    except ValueError as e:  # an index of another model's features
        raise DemoInputError(str(e)) from e
    return [(str(h.path), f"ITC {h.score:.3f}" + ("" if h.itm_probability is None else f" · ITM {h.itm_probability:.3f}"))
            for h in hits]
