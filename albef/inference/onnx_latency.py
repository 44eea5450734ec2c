"""Latency of the exported encoders in onnxruntime against the eager model, one thread each.

Each measurement is ``runs`` runs; a run times calls (after one warm-up call) until at least
``min_seconds`` have passed and reports the mean time per call. Runs alternate between
onnxruntime and PyTorch, so drift in the machine's speed hits both. Text is timed at the
full length ``max_tokens`` (every position attended), images at the checkpoint's resolution.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from albef.inference.export_onnx import IMAGE_FILE, TEXT_FILE, ImageEncoderGraph, TextEncoderGraph, require_onnx


@dataclass
class Latency:
    """ms per call of ``graph`` at ``batch`` in ``runtime``: the median of the runs and their range."""

    graph: str
    batch: int
    runtime: str
    median_ms: float
    min_ms: float
    max_ms: float
    runs_ms: list[float]


def time_per_call(fn: Callable[[], Any], min_seconds: float) -> float:
    """Seconds per call of ``fn``: one warm-up call, then calls until ``min_seconds`` have passed (at least 3)."""
    fn()
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < min_seconds:
        fn()
        n += 1
    return (time.perf_counter() - start) / n


def encoder_latency(export_dir: str, model: nn.Module, preprocess: Any, batch_sizes: Sequence[int] = (1, 32), runs: int = 3,
                    min_seconds: float = 1.0, threads: int = 1) -> list[Latency]:
    """onnxruntime (``image_encoder.onnx``, ``text_encoder.onnx`` in ``export_dir``, CPU provider)
    vs the eager model on the same inputs, ``threads`` intra-op threads each."""
    require_onnx()
    import onnxruntime as ort

    torch.set_num_threads(threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    graphs = {"image_encoder": (IMAGE_FILE, ImageEncoderGraph(model).eval()), "text_encoder": (TEXT_FILE, TextEncoderGraph(model).eval())}
    sessions = {}
    for name, (file, _) in graphs.items():
        path = os.path.join(export_dir, file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: not found (export first)")
        sessions[name] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    vocab = len(preprocess.tokenizer)
    g = torch.Generator().manual_seed(0)

    def inputs(name: str, b: int) -> dict[str, torch.Tensor]:
        if name == "image_encoder":
            return {"pixel_values": torch.randn(b, 3, preprocess.image_res, preprocess.image_res, generator=g)}
        ids = torch.randint(vocab, (b, preprocess.max_tokens), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    cases = [(name, int(b)) for name in graphs for b in batch_sizes]
    feeds = {c: inputs(*c) for c in cases}
    times: dict[tuple[str, int, str], list[float]] = {}
    for _ in range(runs):
        for name, b in cases:
            x = feeds[(name, b)]
            np_x = {k: v.numpy() for k, v in x.items()}
            sess, module = sessions[name], graphs[name][1]

            def eager():
                with torch.inference_mode():
                    module(*x.values())

            times.setdefault((name, b, "onnxruntime"), []).append(time_per_call(lambda: sess.run(None, np_x), min_seconds))
            times.setdefault((name, b, "pytorch"), []).append(time_per_call(eager, min_seconds))
    out = []
    for (name, b, rt), ts in times.items():
        ms = [t * 1e3 for t in ts]
        out.append(Latency(name, b, rt, statistics.median(ms), min(ms), max(ms), ms))
    return out


def latency_table(rows: Sequence[Latency]) -> str:
    """A Markdown table: graph, batch, onnxruntime and PyTorch ms per call (median [min, max]), speed-up."""
    by = {(r.graph, r.batch, r.runtime): r for r in rows}
    lines = ["| graph | batch | onnxruntime ms/call | PyTorch eager ms/call | eager / onnxruntime |", "|---|---:|---:|---:|---:|"]
    for graph, batch in dict.fromkeys((r.graph, r.batch) for r in rows):
        o, p = by[(graph, batch, "onnxruntime")], by[(graph, batch, "pytorch")]
        lines.append(f"| {graph} | {batch} | {o.median_ms:.2f} [{o.min_ms:.2f}, {o.max_ms:.2f}] | "
                     f"{p.median_ms:.2f} [{p.min_ms:.2f}, {p.max_ms:.2f}] | {p.median_ms / o.median_ms:.2f}x |")
    return "\n".join(lines)
