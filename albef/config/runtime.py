"""Run-time choices that depend on the machine as well as the config (``auto`` values).

One place decides them, so the data loader and the trainer never disagree: whether the
step runs on CUDA, whether it is compiled, and whether training batches are padded to
one fixed length (a compiled step needs one shape).
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig


def train_device_type(cfg: DictConfig) -> str:
    """``cuda`` or ``cpu`` (or another device type named in ``train.device``)."""
    d = cfg.train.device
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(d).type


def compile_enabled(cfg: DictConfig) -> bool:
    """``train.compile``: on, off, or auto (on where the step is host-bound: CUDA)."""
    c = cfg.train.compile
    if c in ("auto", None):
        return train_device_type(cfg) == "cuda"
    if c in ("on", True):
        return True
    if c in ("off", False):
        return False
    raise ValueError(f"train.compile must be auto, on or off, got {c!r}")


def pad_to_max(cfg: DictConfig) -> bool:
    """``data.padding``: max_length (True), longest (False), auto (max_length when compiled)."""
    p = cfg.data.get("padding", "auto")
    if p == "auto":
        return compile_enabled(cfg)
    if p in ("max_length", "longest"):
        return p == "max_length"
    raise ValueError(f"data.padding must be auto, longest or max_length, got {p!r}")


def pin_memory(cfg: DictConfig) -> bool:
    """``data.loader.pin_memory``: true, false, or auto (on when training on CUDA)."""
    p = cfg.data.loader.pin_memory
    if p == "auto":
        return train_device_type(cfg) == "cuda"
    if isinstance(p, bool):
        return p
    raise ValueError(f"data.loader.pin_memory must be auto, true or false, got {p!r}")
