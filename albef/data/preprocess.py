"""What a trained model needs done to its inputs: images to tensors at the checkpoint's
resolution and normalisation, texts cleaned as the datasets clean them and turned into token
ids with its tokenizer, length and template.

:func:`albef.load` returns a :class:`Preprocess` built from the checkpoint's config, so
inference sees the inputs exactly as the test split did during training::

    model, preprocess = albef.load("output/synthetic/model_final.pth")
    image = preprocess.image("photo.jpg")            # [1, 3, H, W]
    texts = preprocess.text(["a red circle", "a blue square"])   # TextBatch, ids [2, L]
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import torch
from PIL import Image

from albef.data.files import load_image
from albef.data.text import pre_caption, pre_question
from albef.data.tokenization import tokenize
from albef.data.transforms import TestTransform

ImageLike = Union[str, "os.PathLike[str]", Image.Image, torch.Tensor]


@dataclass
class TextBatch:
    """Tokenised texts: ``input_ids``, ``attention_mask`` [N, L]; ``texts`` the N strings
    they came from (None when built from ids); ``tokenizer`` what made them (decoding
    generated answers needs it)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    texts: list[str] | None = None
    tokenizer: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> "TextBatch":
        return TextBatch(self.input_ids.to(device), self.attention_mask.to(device), self.texts, self.tokenizer)

    @classmethod
    def of(cls, text: Any) -> "TextBatch":
        """A TextBatch from a TextBatch, a mapping with ``input_ids``/``attention_mask`` or an
        ``(input_ids, attention_mask)`` pair."""
        if isinstance(text, cls):
            return text
        if isinstance(text, dict) and "input_ids" in text:
            return cls(text["input_ids"], text["attention_mask"])
        if isinstance(text, (tuple, list)) and len(text) == 2 and all(isinstance(t, torch.Tensor) for t in text):
            return cls(text[0], text[1])
        if isinstance(text, str) or (isinstance(text, (list, tuple)) and text and isinstance(text[0], str)):
            raise TypeError("texts must be tokenised first: pass preprocess.text([...]) (from albef.load), not strings")
        raise TypeError(f"expected a TextBatch (preprocess.text([...])), got {type(text).__name__}")


class Preprocess:
    """The checkpoint's preprocessing.

    Args:
        tokenizer: the checkpoint's tokenizer (``data.tokenizer``).
        image_res, mean, std: the test transform (resize to ``image_res`` square, bicubic; normalise).
        max_tokens: text length (``data.max_tokens``); ``tokenization``: ``ours`` or ``official``.
    """

    def __init__(self, tokenizer: Any, image_res: int, mean: Sequence[float], std: Sequence[float],
                 max_tokens: int = 30, tokenization: str = "ours", max_words: int = 30):
        self.tokenizer = tokenizer
        self.max_words = int(max_words)
        self.transform = TestTransform(image_res, mean, std)
        self.image_res, self.max_tokens, self.tokenization = int(image_res), int(max_tokens), tokenization

    @classmethod
    def from_config(cls, cfg: Any, tokenizer: Any) -> "Preprocess":
        t = cfg.data.transforms
        return cls(tokenizer, int(t.image_res), list(t.mean), list(t.std), int(cfg.data.max_tokens), str(cfg.data.tokenization),
                   int(cfg.data.get("max_words", 30)))

    # ------------------------------------------------------------------ images
    def load(self, image: ImageLike) -> torch.Tensor:
        """One image (a path, a PIL image, or an already transformed tensor [3, H, W]) -> [3, H, W]."""
        if isinstance(image, torch.Tensor):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"an image tensor must be [3, H, W] (already transformed), got {tuple(image.shape)}")
            return image
        if isinstance(image, Image.Image):
            return self.transform(image.convert("RGB"))
        if isinstance(image, (str, os.PathLike)):
            try:
                return self.transform(load_image(os.fspath(image)))
            except OSError as e:
                raise OSError(f"{os.fspath(image)}: {e}") from e
        raise TypeError(f"an image is a path, a PIL image or a [3, H, W] tensor, got {type(image).__name__}")

    def image(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """One image or a list of them -> [B, 3, H, W] (B = 1 for a single image)."""
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("no images given")
            return torch.stack([self.load(x) for x in images])
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            return images
        return self.load(images)[None]

    __call__ = image

    # ------------------------------------------------------------------ texts
    def text(self, texts: str | Sequence[str], max_tokens: int | None = None, clean: str | None = "caption") -> TextBatch:
        """One text or a list -> :class:`TextBatch` (padded to the longest, at most ``max_tokens``).

        ``clean``: ``caption`` (default) cleans each text as the datasets clean captions
        (:func:`~albef.data.text.pre_caption`: lower case, no punctuation, ``data.max_words``
        words), ``question`` as VQA questions (:func:`~albef.data.text.pre_question`), None
        keeps it as given. ``TextBatch.texts`` holds the cleaned texts."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("no texts given")
        if clean not in (None, "caption", "question"):
            raise ValueError(f"clean must be 'caption', 'question' or None, got {clean!r}")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is a {type(t).__name__}, not a string")
            if not t.strip():
                raise ValueError(f"text {i} is empty")
        if clean == "caption":
            texts = [pre_caption(t, self.max_words) for t in texts]
        elif clean == "question":
            texts = [pre_question(t) for t in texts]
        for i, t in enumerate(texts):
            if not t:
                raise ValueError(f"text {i} is empty once cleaned (punctuation only)")
        enc = tokenize(self.tokenizer, texts, max_tokens or self.max_tokens, mode=self.tokenization)
        return TextBatch(enc["input_ids"], enc["attention_mask"], texts, self.tokenizer)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Token ids [B, T] -> B strings (special tokens dropped)."""
        return [t.strip() for t in self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)]
