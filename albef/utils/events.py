"""Metrics collection split from its sinks (detectron2 style).

The trainer and hooks ``put_scalar`` values, tensors included, without converting
them: a tensor stays on its device until :meth:`EventStorage.flush` turns every
pending tensor into a float with one ``torch.stack(...).tolist()``, i.e. one host
sync per log period instead of one per loss per step. Writers drain the storage.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
from collections import defaultdict
from typing import Any

import torch
from fvcore.common.history_buffer import HistoryBuffer

from albef.utils.file_io import PathManager

_CURRENT_STORAGE: list["EventStorage"] = []


def get_event_storage() -> "EventStorage":
    if not _CURRENT_STORAGE:
        raise RuntimeError("get_event_storage() called outside of an EventStorage context")
    return _CURRENT_STORAGE[-1]


class EventStorage:
    def __init__(self, start_iter: int = 0):
        self.iter = start_iter
        self._history: dict[str, HistoryBuffer] = defaultdict(lambda: HistoryBuffer(max_length=100000))
        self._smoothing: dict[str, bool] = {}
        self._pending: list[tuple[str, int, Any]] = []
        self._last_written: dict[str, int] = {}
        self._texts: list[tuple[int, str]] = []

    def __enter__(self) -> "EventStorage":
        _CURRENT_STORAGE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        assert _CURRENT_STORAGE[-1] is self
        _CURRENT_STORAGE.pop()

    def put_scalar(self, name: str, value: Any, smoothing_hint: bool = True) -> None:
        """Record ``value`` (float or 0-dim tensor) for the current iteration; no host sync."""
        if isinstance(value, torch.Tensor):
            value = value.detach().clone()  # a later in-place change must not rewrite history
        self._pending.append((name, self.iter, value))
        self._smoothing.setdefault(name, smoothing_hint)

    def put_scalars(self, smoothing_hint: bool = True, **kwargs: Any) -> None:
        for k, v in kwargs.items():
            self.put_scalar(k, v, smoothing_hint=smoothing_hint)

    def flush(self) -> None:
        """Convert pending values to floats (one device sync for all tensors)."""
        if not self._pending:
            return
        tensors = [(i, v) for i, (_, _, v) in enumerate(self._pending) if isinstance(v, torch.Tensor)]
        values = [v for _, _, v in self._pending]
        if tensors:
            by_device: dict[torch.device, list[int]] = defaultdict(list)
            for i, v in tensors:
                by_device[v.device].append(i)
            for dev, idxs in by_device.items():
                floats = torch.stack([values[i].float().reshape(()) for i in idxs]).tolist()
                for i, f in zip(idxs, floats):
                    values[i] = f
        for (name, it, _), val in zip(self._pending, values):
            self._history[name].update(float(val), it)
        self._pending = []

    def history(self, name: str) -> HistoryBuffer:
        self.flush()
        if name not in self._history:
            raise KeyError(f"No history metric available for {name}!")
        return self._history[name]

    def histories(self) -> dict[str, HistoryBuffer]:
        self.flush()
        return self._history

    def latest(self) -> dict[str, tuple[float, int]]:
        self.flush()
        return {k: (v.values()[-1][0], v.values()[-1][1]) for k, v in self._history.items() if v.values()}

    def new_since_last_write(self, writer: str) -> dict[str, tuple[float, int]]:
        """Per metric: (mean of the values recorded since ``writer`` last asked, latest iteration).

        Smoothed metrics (losses) are averaged over the period; others (lr, eval) take the latest value.
        """
        self.flush()
        out = {}
        for name, buf in self._history.items():
            vals = buf.values()
            key = (writer, name)
            last_it = self._last_written.get(key, -1)
            new = [(v, it) for v, it in vals if it > last_it]
            if not new:
                continue
            if self._smoothing.get(name, True):
                out[name] = (sum(v for v, _ in new) / len(new), new[-1][1])
            else:
                out[name] = (new[-1][0], new[-1][1])
            self._last_written[key] = new[-1][1]
        return out

    def smoothing_hint(self, name: str) -> bool:
        return self._smoothing.get(name, True)

    def step(self) -> None:
        self.iter += 1


class EventWriter:
    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class JSONWriter(EventWriter):
    """Append one JSON object per write to ``metrics.json`` (JSON lines).

    Keys: ``iteration`` plus every metric recorded since the previous write (losses
    averaged over the period; with ``log_period=1`` these are the exact per-step values).
    """

    def __init__(self, json_file: str, truncate: bool = False):
        # A fresh run starts a new file; a resumed one appends to its own history.
        self._file = PathManager.open(json_file, "w" if truncate else "a")

    def write(self) -> None:
        storage = get_event_storage()
        by_iter: dict[int, dict[str, float]] = defaultdict(dict)
        for name, (value, it) in storage.new_since_last_write("json").items():
            by_iter[it][name] = value
        for it in sorted(by_iter):
            self._file.write(json.dumps({"iteration": it, **by_iter[it]}, sort_keys=True) + "\n")
        self._file.flush()
        try:
            os.fsync(self._file.fileno())
        except (AttributeError, OSError):
            pass

    def close(self) -> None:
        self._file.close()


class TensorboardWriter(EventWriter):
    def __init__(self, log_dir: str):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir)

    def write(self) -> None:
        storage = get_event_storage()
        for name, (value, it) in storage.new_since_last_write("tensorboard").items():
            self._writer.add_scalar(name, value, it)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class CommonMetricPrinter(EventWriter):
    """Console line: iteration/max_iter, ETA, losses (median of the last 20), lr, alpha, times, pairs/s."""

    def __init__(self, max_iter: int, window: int = 20):
        self.logger = logging.getLogger("albef.train")
        self.max_iter = max_iter
        self.window = window
        self._last: tuple[int, float] | None = None

    def write(self) -> None:
        storage = get_event_storage()
        hist = storage.histories()
        iteration = storage.iter
        if iteration == self.max_iter:
            return  # the final evaluation/summary follow; nothing new to print
        def med(name: str) -> float | None:
            if name not in hist or not hist[name].values():
                return None
            return hist[name].median(self.window)

        eta = ""
        if "time" in hist and hist["time"].values():
            sec = hist["time"].global_avg() * (self.max_iter - iteration - 1)
            eta = f"eta: {datetime.timedelta(seconds=int(sec))}  "
        losses = "  ".join(
            f"{k}: {hist[k].median(self.window):.4f}" for k in sorted(hist) if k.startswith("loss") and hist[k].values()
        )
        parts = [f"{eta}iter: {iteration + 1}/{self.max_iter}", losses]
        for k, fmt in (("lr", "{:.3e}"), ("alpha", "{:.3f}"), ("time", "{:.4f}"), ("data_time", "{:.4f}"), ("pairs_per_s", "{:.1f}")):
            v = med(k) if k in ("time", "data_time", "pairs_per_s") else (hist[k].latest() if k in hist and hist[k].values() else None)
            if v is not None:
                parts.append(f"{k}: " + fmt.format(v))
        if "skipped_samples" in hist and hist["skipped_samples"].values():
            parts.append(f"skipped: {int(hist['skipped_samples'].latest())}")
        self.logger.info("  ".join(p for p in parts if p))


def append_metrics(json_file: str, results: dict[str, Any], iteration: int | None = None) -> None:
    """Append one ``metrics.json`` line of ``{prefix}/{metric}`` values (e.g. from ``--eval-only``):
    a flat ``{"prefix/metric": value}`` dict, or nested ``{prefix: {metric: value}}``."""
    row: dict[str, Any] = {"iteration": iteration}
    for prefix, metrics in results.items():
        if isinstance(metrics, dict):
            for k, v in metrics.items():
                row[f"{prefix}/{k}"] = v
        else:
            row[prefix] = metrics
    with PathManager.open(json_file, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
