"""Evaluators: one registered component per kind of evaluation, configured under ``eval:``.

``eval`` is a map of components (like ``model.objectives``)::

    eval:
      retrieval:     {name: RetrievalEvaluator, split: test, k_test: 256}
      retrieval_val: {name: RetrievalEvaluator, split: val, k_test: 256}

Each entry evaluates one split (``data.<split>``) and returns a flat dict of metrics
named ``<prefix>/<metric>`` (the prefix defaults to the entry's key), which the trainer
logs to ``metrics.json`` / TensorBoard, prints as a table, and can select the best
checkpoint by (``train.best_metric``).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn


class Evaluator:
    """Base class. Subclasses implement :meth:`evaluate`; :meth:`check` fails early (before
    training) when the model cannot be evaluated this way, e.g. it lacks the head needed.

    Builder-supplied arguments: ``dataset`` (of ``data.<split>``), ``loader_fn(dataset,
    batch_size) -> DataLoader`` (the trainer's test loader), ``tokenizer``,
    ``tokenization``, ``device``, ``amp`` (bf16 autocast) and ``prefix``.
    """

    def __init__(self, *, dataset: Any, prefix: str, split: str = "test", device: torch.device | str = "cpu", amp: bool = False):
        self.dataset, self.prefix, self.split = dataset, prefix, split
        self.device, self.amp = torch.device(device), amp

    def check(self, model: nn.Module) -> None:
        """Raise a clear error if ``model`` cannot be evaluated by this evaluator."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        raise NotImplementedError

    def autocast(self):
        from contextlib import nullcontext

        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()

    def describe(self) -> str:
        return f"{type(self).__name__} on data.{self.split} ({len(self.dataset)} entries)"


def split_prefix(flat: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``{"a/x": 1, "a/y": 2, "b/x": 3}`` -> ``{"a": {"x": 1, "y": 2}, "b": {"x": 3}}``."""
    out: dict[str, dict[str, float]] = {}
    for k, v in flat.items():
        prefix, _, metric = k.rpartition("/")
        out.setdefault(prefix, {})[metric] = v
    return out


def format_metrics_table(flat: Mapping[str, float]) -> str:
    """A Markdown table: one row per prefix, one column per metric (in order of first appearance)."""
    groups = split_prefix(flat)
    cols: list[str] = []
    for metrics in groups.values():
        cols.extend(c for c in metrics if c not in cols)
    width = max([len(p) for p in groups] + [7])
    head = f"| {'':<{width}} | " + " | ".join(f"{c:>7}" for c in cols) + " |"
    lines = [head, "|" + "-" * (width + 2) + "|" + "|".join("-" * (max(len(c), 7) + 2) for c in cols) + "|"]
    for prefix, metrics in groups.items():
        cells = [f"{metrics[c]:>{max(len(c), 7)}.2f}" if c in metrics else " " * max(len(c), 7) for c in cols]
        lines.append(f"| {prefix:<{width}} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def shard_indices(n: int, rank: int, world: int) -> range:
    """Contiguous share of ``range(n)`` for ``rank``: every index exactly once over the ranks
    (no padding with repeated samples, unlike a DistributedSampler: accuracies stay exact)."""
    per = (n + world - 1) // world
    return range(min(n, rank * per), min(n, (rank + 1) * per))


LoaderFn = Callable[[Any, int], Any]
