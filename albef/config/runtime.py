"""Run-time choices that depend on the machine as well as the config (``auto`` values).

The data loader and the trainer both ask here, so they never disagree: whether the
step runs on CUDA, whether it is compiled, and whether training batches are padded to
one fixed length (a compiled step needs one shape).
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from albef.utils import comm


def train_device_type(cfg: DictConfig) -> str:
    """``cuda`` or ``cpu`` (or another device type named in ``train.device``)."""
    d = cfg.train.device
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(d).type


def _switch(value, key: str) -> bool | None:
    """true/false (or on/off), None for null/auto; anything else names the key."""
    if value is None or value == "auto":
        return None
    if isinstance(value, bool):
        return value
    if value in ("on", "off"):
        return value == "on"
    raise ValueError(f"{key} must be true, false or null (auto), got {value!r}")


def compile_enabled(cfg: DictConfig) -> bool:
    """``train.compile``: true, false, or null/auto: on where the step is host-bound and
    the compiled region was checked (one CUDA process); off on the CPU, where it measured
    no faster, and under DDP, whose compiled form this project has not measured."""
    c = _switch(cfg.train.compile, "train.compile")
    if c is None:
        return train_device_type(cfg) == "cuda" and comm.get_world_size() == 1
    return c


def pad_to_max(cfg: DictConfig) -> bool:
    """``data.padding``: max_length (True), longest (False), auto (max_length when compiled)."""
    p = cfg.data.padding
    if p == "auto":
        return compile_enabled(cfg)
    if p in ("max_length", "longest"):
        return p == "max_length"
    raise ValueError(f"data.padding must be auto, longest or max_length, got {p!r}")


def pin_memory(cfg: DictConfig) -> bool:
    """``data.loader.pin_memory``: true, false, or null/auto (on when training on CUDA)."""
    p = _switch(cfg.data.loader.pin_memory, "data.loader.pin_memory")
    return train_device_type(cfg) == "cuda" if p is None else p
