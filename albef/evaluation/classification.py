"""Accuracy of a classification head on the fused [CLS] token (SNLI-VE, NLVR2)."""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from torch.utils.data import Subset

from albef.data.preprocess import TextBatch
from albef.evaluation.base import Evaluator, LoaderFn, shard_indices
from albef.registry import EVALUATOR_REGISTRY
from albef.utils import comm

logger = logging.getLogger("albef.evaluation")


@EVALUATOR_REGISTRY.register()
class ClassificationEvaluator(Evaluator):
    """``<prefix>/acc`` (percent of entries whose arg-max class is the label) and, with
    ``class_names``, ``<prefix>/acc_<name>`` per class.

    Each entry is counted exactly once: with several processes every rank takes a
    contiguous share and the counts are summed (the official evaluation pads the split
    with repeated samples through its DistributedSampler, which biases the accuracy).

    Args:
        split: ``data.<split>`` (a dataset returning ``label``).
        prefix: metric prefix (default: the config key under ``eval``).
        batch_size: entries per forward.
        head: key of the classifier in ``model.heads``.
        label_key: batch entry holding the label.
        class_names: names of classes 0..C-1 (per-class accuracies); default: the
            dataset's ``class_names`` if it has them.
    """

    def __init__(
        self,
        *,
        dataset: Any,
        loader_fn: LoaderFn,
        prefix: str,
        split: str = "test",
        batch_size: int = 64,
        head: str = "cls",
        label_key: str = "label",
        class_names: Sequence[str] | None = None,
        device: torch.device | str = "cpu",
        amp: bool = False,
    ):
        super().__init__(dataset=dataset, prefix=prefix, split=split, device=device, amp=amp)
        self.loader_fn, self.batch_size, self.head, self.label_key = loader_fn, batch_size, head, label_key
        names = class_names if class_names is not None else getattr(dataset, "class_names", None)
        self.class_names = list(names) if names is not None else None

    def check(self, model) -> None:
        if not model.has_head(self.head):
            raise ValueError(f"eval.{self.prefix}: the model has no classification head model.heads.{self.head}")

    @torch.no_grad()
    def predict(self, model, batch: dict[str, Any]) -> torch.Tensor:
        """Logits [B, C] of ``batch`` (already on the device)."""
        with self.autocast():
            return model.classify_logits(batch["image"], TextBatch(batch["input_ids"], batch["attention_mask"]), self.head)

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        self.check(model)
        was_training = model.training
        model.eval()
        n_cls = getattr(model.head(self.head), "num_classes", None) or (len(self.class_names) if self.class_names else 0)
        part = shard_indices(len(self.dataset), comm.get_rank(), comm.get_world_size())
        correct = torch.zeros(max(n_cls, 1), device=self.device)
        total = torch.zeros(max(n_cls, 1), device=self.device)
        try:
            if len(part):
                for batch in self.loader_fn(Subset(self.dataset, part), self.batch_size):
                    batch.pop("skipped", None)
                    batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                    labels = batch[self.label_key]
                    pred = self.predict(model, batch).argmax(dim=1)
                    total.index_add_(0, labels, torch.ones_like(labels, dtype=total.dtype))
                    correct.index_add_(0, labels, (pred == labels).to(total.dtype))
        finally:
            model.train(was_training)
        correct, total = comm.all_reduce_sum(correct), comm.all_reduce_sum(total)
        out = {f"{self.prefix}/acc": 100.0 * float(correct.sum() / total.sum().clamp(min=1))}
        if self.class_names:
            for c, name in enumerate(self.class_names[: correct.numel()]):
                if total[c] > 0:
                    out[f"{self.prefix}/acc_{name}"] = 100.0 * float(correct[c] / total[c])
        return out
