"""VQA evaluation: answers by ranking a candidate list (or greedy generation), VQA accuracy,
and the official result file ``[{"question_id": int, "answer": str}]`` for test servers."""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from torch.utils.data import Subset

from albef.data.preprocess import TextBatch
from albef.data.tokenization import tokenize
from albef.evaluation.base import Evaluator, LoaderFn, shard_indices
from albef.metrics.vqa_accuracy import normalize_answer, vqa_accuracy  # noqa: F401  (public here too)
from albef.registry import EVALUATOR_REGISTRY
from albef.utils import comm

logger = logging.getLogger("albef.evaluation")

@EVALUATOR_REGISTRY.register()
class VQAEvaluator(Evaluator):
    """``<prefix>/acc``: VQA accuracy (percent, the official 10-choose-9 average, see
    :func:`vqa_accuracy`) over the questions that have annotator answers; the answers of
    every question go to ``<output_dir>/<prefix>_result.json`` as ``[{"question_id",
    "answer"}]``, one entry per question id (each rank answers a contiguous share; nothing is
    padded or repeated).

    Args:
        split: ``data.<split>`` (a :class:`~albef.data.datasets.vqa.VQAJSON`).
        head: key of the answer decoder in ``model.heads``.
        inference: ``rank`` (official: the candidates of ``answer_list``: top ``k_test`` by
            the first token, then by the full answer log-likelihood) or ``generate`` (greedy,
            open-ended, up to ``max_answer_tokens``).
        k_test: candidates re-scored per question (official 128).
        double_count_first_token: reproduce the official score, which counts the first
            token's log-probability twice (default: each token once).
        answer_list: a JSON list file; default: the dataset's ``answer_list``.
        max_answer_tokens: tokens of a candidate / generated answer, [CLS] and [SEP] included.
    """

    def __init__(
        self,
        *,
        dataset: Any,
        loader_fn: LoaderFn,
        prefix: str,
        tokenizer: Any = None,
        split: str = "test",
        batch_size: int = 64,
        head: str = "answer",
        inference: str = "rank",
        k_test: int = 128,
        double_count_first_token: bool = False,
        answer_list: str | None = None,
        max_answer_tokens: int = 32,
        output_dir: str | None = None,
        device: torch.device | str = "cpu",
        amp: bool = False,
    ):
        super().__init__(dataset=dataset, prefix=prefix, split=split, device=device, amp=amp)
        if inference not in ("rank", "generate"):
            raise ValueError(f"eval.{prefix}.inference must be 'rank' or 'generate', got {inference!r}")
        if tokenizer is None:
            raise ValueError(f"eval.{prefix}: VQAEvaluator needs the tokenizer")
        self.loader_fn, self.tokenizer, self.batch_size, self.head = loader_fn, tokenizer, int(batch_size), head
        self.inference, self.k_test, self.double = inference, int(k_test), bool(double_count_first_token)
        self.max_answer_tokens, self.output_dir = int(max_answer_tokens), output_dir
        if answer_list is not None:
            from albef.data.datasets.vqa import read_answer_list

            self.answers = read_answer_list(answer_list)
        else:
            self.answers = getattr(dataset, "answer_list", None)
        if inference == "rank" and not self.answers:
            raise ValueError(f"eval.{prefix}: ranking needs a candidate list (eval.{prefix}.answer_list or the dataset's answer_list)")

    def check(self, model) -> None:
        if not model.has_head(self.head):
            raise ValueError(f"eval.{self.prefix}: the model has no answer decoder model.heads.{self.head}")

    @property
    def result_file(self) -> str | None:
        return os.path.join(self.output_dir, f"{self.prefix}_result.json") if self.output_dir else None

    @torch.no_grad()
    def answer(self, model, batch: dict[str, Any], cand: TextBatch | None = None) -> list[str]:
        """The predicted answer of every question of ``batch`` (tensors on the device): :meth:`model.answer
        <albef.modeling.inference.InferenceMixin.answer>` ranking the candidates or generating."""
        question = TextBatch(batch["input_ids"], batch["attention_mask"], tokenizer=self.tokenizer)
        if self.inference == "rank" and cand is None:
            cand = self._candidates()
        with self.autocast():
            return model.answer(batch["image"], question, cand if self.inference == "rank" else None, k=self.k_test, head=self.head,
                                max_answer_tokens=self.max_answer_tokens, double_count_first_token=self.double).answers

    def _candidates(self) -> TextBatch:
        enc = tokenize(self.tokenizer, self.answers, self.max_answer_tokens, mode="ours")
        return TextBatch(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device), list(self.answers), self.tokenizer)

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        self.check(model)
        was_training = model.training
        model.eval()
        part = shard_indices(len(self.dataset), comm.get_rank(), comm.get_world_size())
        results: list[tuple[int, str, float | None]] = []
        cand = self._candidates() if self.inference == "rank" else None
        try:
            if len(part):
                for batch in self.loader_fn(Subset(self.dataset, part), self.batch_size):
                    batch.pop("skipped", None)
                    annotations = batch.pop("answers", None)
                    batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                    preds = self.answer(model, batch, cand)
                    for j, (qid, pred) in enumerate(zip(batch["question_id"], preds)):
                        ann = annotations[j] if annotations is not None else None
                        results.append((int(qid), pred, vqa_accuracy(pred, ann) if ann else None))
        finally:
            model.train(was_training)
        merged: dict[int, tuple[str, float | None]] = {}
        for part_results in comm.all_gather_object(results):
            for qid, pred, acc in part_results:
                merged.setdefault(qid, (pred, acc))  # one answer per question id
        if comm.is_main_process() and self.result_file:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(self.result_file, "w") as f:
                json.dump([{"question_id": q, "answer": a} for q, (a, _) in merged.items()], f)
            logger.info("VQA answers of %d questions written to %s", len(merged), self.result_file)
        scored = [acc for _, acc in merged.values() if acc is not None]
        out = {f"{self.prefix}/answered": float(len(merged))}
        if scored:
            out[f"{self.prefix}/acc"] = 100.0 * sum(scored) / len(scored)
        return out
