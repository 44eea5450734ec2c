"""Checkpoints that continue a run exactly, loaded with ``weights_only=True``.

A file holds plain containers only: ``model`` (online weights, teacher EMA weights
and queues), ``optimizer``, ``iteration`` (last completed), ``rng`` (one entry per
rank: python, numpy, torch CPU and CUDA generator states), ``data_position`` (samples
consumed from the global stream) and ``config`` (the merged YAML as a string).
"""
from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
import torch
from fvcore.common.checkpoint import Checkpointer

from albef.utils import comm
from albef.utils.file_io import PathManager

logger = logging.getLogger("albef.checkpoint")


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's keys or shapes do not match the model (strict load)."""


def format_load_report(missing: list[str], unexpected: list[str], mismatched: list[tuple[str, tuple, tuple]]) -> str:
    lines = []
    if missing:
        lines.append(f"missing in checkpoint ({len(missing)}): " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        lines.append(f"unexpected in checkpoint ({len(unexpected)}): " + ", ".join(unexpected[:20]) + (" ..." if len(unexpected) > 20 else ""))
    if mismatched:
        lines.append(
            f"shape mismatch ({len(mismatched)}): "
            + ", ".join(f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched[:20])
        )
    return "\n".join(lines)


class ALBEFCheckpointer(Checkpointer):
    """fvcore's Checkpointer with weights-only loading and strict key checking by default."""

    def __init__(self, model: torch.nn.Module, save_dir: str = "", *, strict: bool = True, **kwargs: Any):
        super().__init__(model, save_dir, save_to_disk=comm.is_main_process(), **kwargs)
        self.strict = strict
        self.path_manager = PathManager

    def save(self, name: str, **kwargs: Any) -> None:
        """Like fvcore's, but atomic: a run killed while saving leaves the previous checkpoint intact."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        tmp = save_file + ".tmp"
        with open(tmp, "wb") as f:
            torch.save(data, f)
        os.replace(tmp, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        with open(path + ".tmp", "w") as f:
            f.write(last_filename_basename)
        os.replace(path + ".tmp", path)

    def _load_file(self, f: str) -> dict[str, Any]:
        with self.path_manager.open(f, "rb") as fh:
            try:
                ckpt = torch.load(fh, map_location="cpu", weights_only=True)
            except Exception as e:  # pickle.UnpicklingError and friends: refuse, say which file
                raise RuntimeError(f"{f}: cannot be loaded as a weights-only checkpoint ({e.__class__.__name__}: {e})") from e
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            raise CheckpointMismatchError(f"{f}: not an albef checkpoint (expected a dict with a 'model' entry)")
        return ckpt

    def _load_model(self, checkpoint: dict[str, Any]):
        model_sd = self.model.state_dict()
        ckpt_sd = checkpoint["model"]
        missing = [k for k in model_sd if k not in ckpt_sd]
        unexpected = [k for k in ckpt_sd if k not in model_sd]
        mismatched = [(k, tuple(ckpt_sd[k].shape), tuple(v.shape)) for k, v in model_sd.items() if k in ckpt_sd and tuple(ckpt_sd[k].shape) != tuple(v.shape)]
        if (missing or unexpected or mismatched) and self.strict:
            raise CheckpointMismatchError("checkpoint does not match the model:\n" + format_load_report(missing, unexpected, mismatched))
        return super()._load_model(checkpoint)


def get_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state (collective: all ranks must call)."""
    return comm.all_gather_object(get_rng_state())
