"""Collators: a list of samples -> one batch, with the texts tokenised (inside DataLoader workers)."""
from __future__ import annotations

import numbers
from typing import Any

import torch

from albef.data.compositional_negatives import KIND_STATS
from albef.data.tokenization import check_tokenization_mode, tokenize
from albef.registry import COLLATOR_REGISTRY


@COLLATOR_REGISTRY.register()
class ImageTextCollator:
    """Samples (dicts) -> a batch dict, for every task's datasets.

    * ``text_field`` (a string per sample: caption, sentence, question) -> ``input_ids``,
      ``attention_mask`` [B, L] (see :func:`albef.data.tokenization.tokenize`);
    * tensors are stacked: ``image`` [B, 3, H, W] or, for K images per sample, [B, K, 3, H, W];
    * numbers -> a tensor (int64 for integers: ``label``, ``image_id``, ``index``);
    * ``skipped`` lists (bad files the dataset stepped over) are concatenated;
    * anything else (strings, ids of the official formats) -> a list.

    Args:
        max_tokens, tokenization: ``data.max_tokens``, ``data.tokenization`` (builder-supplied).
        text_field: the text entry (builder-supplied from the dataset's ``text_field``).
        with_image_ids: keep ``image_id`` (the dataset's ``has_image_ids``; without ids ITC
            uses the diagonal as positives, as the official pretraining).
        tokenizer: builder-supplied (None for samples without text, e.g. retrieval images).
        pad_to_max: pad every batch to ``max_tokens`` (one shape for every step: what a
            compiled or graph-captured step needs) instead of to its longest text.
            Builder-supplied from ``data.padding``.
        text_negatives: a ``data.text_negatives`` generator (builder-supplied, training
            only): each text gets a false counterpart, tokenised with the texts (same
            length): ``text_neg_input_ids``, ``text_neg_attention_mask`` [B, L],
            ``text_neg_valid`` [B] bool and ``text_neg_kind`` [B] long (the generator's
            kind index; < 0: no negative, the slot holds the text itself).
    """

    def __init__(self, tokenizer=None, max_tokens: int = 30, tokenization: str = "ours", text_field: str = "caption", with_image_ids: bool = True,
                 pad_to_max: bool = False, text_negatives=None):
        self.tokenizer, self.max_tokens, self.text_field, self.with_image_ids = tokenizer, max_tokens, text_field, with_image_ids
        self.pad_to_max = bool(pad_to_max)
        self.tokenization = check_tokenization_mode(tokenization)
        self.text_negatives = text_negatives

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for key in samples[0]:
            values = [s[key] for s in samples]
            if key == "skipped":
                continue
            if key == "image_id" and not self.with_image_ids:
                continue
            if key == self.text_field:
                if self.tokenizer is None:
                    raise ValueError(f"ImageTextCollator: samples carry text '{key}' but no tokenizer was given")
                if self.text_negatives is None:
                    batch.update(tokenize(self.tokenizer, values, self.max_tokens, pad_to_max=self.pad_to_max, mode=self.tokenization))
                else:
                    batch.update(self._with_negatives(values, [s.get("image_id") for s in samples]))
            elif isinstance(values[0], torch.Tensor):
                batch[key] = torch.stack(values)
            elif isinstance(values[0], numbers.Integral) and not isinstance(values[0], bool):
                batch[key] = torch.tensor(values, dtype=torch.long)
            elif isinstance(values[0], numbers.Real):
                batch[key] = torch.tensor(values, dtype=torch.float32)
            else:
                batch[key] = values
        batch["skipped"] = [x for s in samples for x in s.get("skipped", [])]
        return batch

    def _with_negatives(self, texts: list[str], image_ids: list) -> dict[str, torch.Tensor]:
        ids = image_ids if all(i is not None for i in image_ids) else None
        negs, kind = self.text_negatives(texts, ids)
        if len(negs) != len(texts) or len(kind) != len(texts):
            raise ValueError(f"data.text_negatives returned {len(negs)} texts / {len(kind)} kinds for {len(texts)} captions")
        enc = tokenize(self.tokenizer, list(texts) + list(negs), self.max_tokens, pad_to_max=self.pad_to_max, mode=self.tokenization)
        b = len(texts)
        kind_t = torch.tensor(kind, dtype=torch.long)
        return {
            "input_ids": enc["input_ids"][:b], "attention_mask": enc["attention_mask"][:b],
            "text_neg_input_ids": enc["input_ids"][b:], "text_neg_attention_mask": enc["attention_mask"][b:],
            # a generator that hands back the caption itself made no negative, whatever its kind says
            "text_neg_valid": (kind_t >= 0) & torch.tensor([n != t for n, t in zip(negs, texts)], dtype=torch.bool), "text_neg_kind": kind_t,
            # why captions went without a false text, counted per batch and logged as they are
            "stats": {f"text_negatives_{name}": (kind_t == code).sum() for code, name in KIND_STATS.items()},
        }


def PretrainCollator(tokenizer, max_tokens: int, with_image_ids: bool = True, tokenization: str = "ours") -> ImageTextCollator:
    """The pretraining batch (``image``, ``input_ids``/``attention_mask`` [B, L] of the caption,
    ``image_id``, ``skipped``): an :class:`ImageTextCollator` on ``caption``."""
    return ImageTextCollator(tokenizer, max_tokens, tokenization=tokenization, text_field="caption", with_image_ids=with_image_ids)


@COLLATOR_REGISTRY.register()
class VQACollator(ImageTextCollator):
    """:class:`ImageTextCollator` plus the answers of VQA samples, flattened over the batch.

    Training samples carry ``answers`` (unique answer strings) and ``answer_weights``;
    the batch gets ``answer_input_ids`` / ``answer_attention_mask`` [A, La] (every answer
    as ``[CLS] answer [SEP]``: ``[SEP]`` is the end-of-answer token the decoder learns to
    produce, in either tokenization mode, as the official code appends it), ``answer_weight``
    [A] and ``answer_question`` [A] (the row of the answer's question). Evaluation samples
    (empty ``answer_weights``) keep ``answers`` as lists of the annotators' answers.

    Args:
        max_answer_tokens: answers are cut to this many tokens (official: not truncated).
    """

    def __init__(self, tokenizer=None, max_tokens: int = 30, tokenization: str = "ours", text_field: str = "question",
                 with_image_ids: bool = True, max_answer_tokens: int = 32, pad_to_max: bool = False):
        super().__init__(tokenizer, max_tokens, tokenization=tokenization, text_field=text_field, with_image_ids=with_image_ids,
                         pad_to_max=pad_to_max)
        self.max_answer_tokens = int(max_answer_tokens)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        answers = [s.pop("answers", None) for s in samples]
        weights = [s.pop("answer_weights", None) for s in samples]
        batch = super().__call__(samples)
        if any(w for w in weights):
            flat = [a for ans in answers for a in ans]
            enc = tokenize(self.tokenizer, flat, self.max_answer_tokens, mode="ours")
            batch["answer_input_ids"], batch["answer_attention_mask"] = enc["input_ids"], enc["attention_mask"]
            batch["answer_weight"] = torch.tensor([w for ws in weights for w in ws], dtype=torch.float32)
            batch["answer_question"] = torch.tensor([q for q, ans in enumerate(answers) for _ in ans], dtype=torch.long)
        elif any(a is not None for a in answers):
            batch["answers"] = answers
        return batch
