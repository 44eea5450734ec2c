"""Checkpoints that continue a run exactly, loaded with ``weights_only=True``.

A file holds plain containers only: ``model`` (online weights, teacher EMA weights
and queues), ``optimizer``, ``iteration`` (last completed), ``rng`` (one entry per
rank: python, numpy, torch CPU and CUDA generator states), ``data_position`` (samples
consumed from the global stream) and ``config`` (the merged YAML as a string).

``--resume`` loads our own checkpoint of the same model, strictly
(:meth:`ALBEFCheckpointer.load`). ``model.weights`` (:meth:`ALBEFCheckpointer.load_weights`)
starts a run from any checkpoint -- ours, a ``.safetensors`` file, a flat state dict, or
an official ALBEF file (``visual_encoder.*`` / ``text_encoder.bert.*`` keys, renamed by
:mod:`albef.checkpoint.official`) -- of the same or another task and resolution, fitted to
the model by :func:`albef.checkpoint.adapt.adapt_state_dict`; the report of what was
mapped, interpolated, initialised fresh or dropped is logged.
"""
from __future__ import annotations

import logging
import os
import random
import re
from typing import Any

import numpy as np
import torch
from fvcore.common.checkpoint import Checkpointer

from albef.utils import comm
from albef.utils.file_io import PathManager

logger = logging.getLogger("albef.checkpoint")


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's keys or shapes do not match the model (strict load)."""


class CheckpointFormatError(CheckpointMismatchError):
    """A file that cannot be read as a weights-only checkpoint (message names the file)."""


def _is_safetensors_file(path: str) -> bool:
    if path.endswith(".safetensors"):
        return True
    try:  # 8-byte little-endian header length, then the JSON header
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 32)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_checkpoint_file(path: str) -> dict[str, Any]:
    """Read ``path`` without executing code: ``{'model': state_dict, ...extra}``.

    A ``.safetensors`` file (or one with its header) is read with ``safetensors``; any
    other file with ``torch.load(..., weights_only=True)``, so a pickle that would run
    code on loading is refused. A flat state dict, or one under ``state_dict``/``module``,
    is returned as ``{'model': ...}``.
    Raises :class:`CheckpointFormatError` naming the file.
    """
    local = path if os.path.isfile(path) else PathManager.get_local_path(path)
    if not os.path.isfile(local):
        raise CheckpointFormatError(f"{path}: checkpoint file not found")
    if _is_safetensors_file(local):
        try:
            from safetensors import safe_open

            with safe_open(local, framework="pt", device="cpu") as fh:
                sd = {k: fh.get_tensor(k) for k in fh.keys()}
                meta = dict(fh.metadata() or {})
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointFormatError(f"{path}: cannot be read as a safetensors file ({e.__class__.__name__}: {e})") from e
        return {"model": sd, "safetensors_metadata": meta}
    with PathManager.open(local, "rb") as fh:
        try:
            ckpt = torch.load(fh, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle.UnpicklingError and friends: refuse, say which file
            raise CheckpointFormatError(f"{path}: cannot be loaded as a weights-only checkpoint ({e.__class__.__name__}: {e})") from e
    if isinstance(ckpt, dict) and _is_state_dict(ckpt.get("model")):
        return ckpt
    for key in ("state_dict", "module"):  # other release formats (e.g. some timm/ViT files)
        if isinstance(ckpt, dict) and _is_state_dict(ckpt.get(key)):
            return {"model": ckpt[key]}
    if _is_state_dict(ckpt):
        return {"model": ckpt}
    what = f"a dict with keys {sorted(map(str, ckpt))[:8]}" if isinstance(ckpt, dict) else type(ckpt).__name__
    raise CheckpointFormatError(f"{path}: not a model checkpoint (expected a state dict or a dict with a 'model' state dict, got {what})")


def write_safetensors(state_dict: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> None:
    """Write a state dict as safetensors. Tied entries (same storage) are stored once each, as copies."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state_dict.items()}
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)


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


def numbered_checkpoints(save_dir: str) -> list[str]:
    """The ``model_XXXXXXX.pth`` names in ``save_dir``, by iteration (oldest first)."""
    if not save_dir or not os.path.isdir(save_dir):
        return []
    return sorted((n for n in os.listdir(save_dir) if re.fullmatch(r"model_\d+\.pth", n)), key=lambda n: int(n[len("model_"):-len(".pth")]))


class ALBEFCheckpointer(Checkpointer):
    """fvcore's Checkpointer with weights-only loading and strict key checking by default."""

    def __init__(self, model: torch.nn.Module, save_dir: str = "", *, strict: bool = True, **kwargs: Any):
        super().__init__(model, save_dir, save_to_disk=comm.is_main_process(), **kwargs)
        self.strict = strict
        self.path_manager = PathManager
        self.official_task: str | None = None  # layout of official checkpoints; None = detect from the keys
        self.last_conversion_report = None  # LoadReport of the last official checkpoint loaded

    def save(self, name: str, **kwargs: Any) -> None:
        """Like fvcore's, but atomic: a run killed while saving leaves the previous checkpoint intact."""
        for obj in self.checkpointables.values():
            # a sharded optimizer (ZeroRedundancyOptimizer) gathers its state on rank 0 first:
            # collective, so before the other ranks return
            if hasattr(obj, "consolidate_state_dict"):
                obj.consolidate_state_dict(to=0)
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

    def resume_candidates(self) -> list[str]:
        """The checkpoints ``--resume`` may continue from, newest first: ``model_final.pth``,
        ``model_XXXXXXX.pth`` and the file ``last_checkpoint`` names, by time written (then by
        iteration), so a finished run that was extended and preempted continues from its latest
        checkpoint, not its old final one. Never a ``.tmp`` file being written, nor
        ``model_best.pth`` (written out of order, without the training state)."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        names = set(numbered_checkpoints(self.save_dir)) | ({"model_final.pth"} & set(os.listdir(self.save_dir)))
        tag = os.path.join(self.save_dir, "last_checkpoint")
        if os.path.isfile(tag):
            tagged = open(tag).read().strip()
            if tagged and tagged != "model_best.pth" and not tagged.endswith(".tmp") and os.path.isfile(os.path.join(self.save_dir, tagged)):
                names.add(tagged)

        def order(name: str) -> tuple[float, int]:
            stem = name[len("model_"):-len(".pth")]
            return os.path.getmtime(os.path.join(self.save_dir, name)), int(stem) if stem.isdigit() else -1

        return [os.path.join(self.save_dir, n) for n in sorted(names, key=order, reverse=True)]

    def load_newest_complete(self, checkpointables: list[str] | None = None) -> tuple[str, dict[str, Any]] | None:
        """Load the newest checkpoint that reads completely (:meth:`resume_candidates`): a file
        cut short (a node lost while it was copied or written on a file system without atomic
        renames) is skipped with a warning naming it, and the next older one is tried. Nothing
        is changed by a file that fails: it is read whole before any state is set.

        Under several processes rank 0 chooses and every rank loads the same file. Returns
        (path, extra entries), or None when there is no checkpoint at all; when there are
        checkpoints but none reads, a :class:`CheckpointFormatError` names each one and why."""
        if comm.get_world_size() > 1 and not comm.is_main_process():
            verdict = comm.broadcast_object(None)
            if "error" in verdict:
                raise CheckpointFormatError(verdict["error"])
            if verdict["path"] is None:
                return None
            try:
                return verdict["path"], self.load(verdict["path"], checkpointables=checkpointables)
            except Exception as e:
                raise CheckpointFormatError(f"rank {comm.get_rank()} cannot read {verdict['path']}, which rank 0 resumed from: {e}") from e
        found, failures = None, []
        for path in self.resume_candidates():
            try:
                found = (path, self.load(path, checkpointables=checkpointables))
                break
            except (CheckpointFormatError, RuntimeError, EOFError, OSError) as e:
                if isinstance(e, CheckpointMismatchError) and not isinstance(e, CheckpointFormatError):
                    if comm.get_world_size() > 1:
                        comm.broadcast_object({"error": str(e)})
                    raise  # a complete file of another model: an error, not a file to skip
                reason = str(e).splitlines()[0][:300]
                failures.append(reason if path in reason else f"{path}: {reason}")
                logger.warning("--resume: skipping %s, which cannot be read completely (%s)", path, reason)
        verdict: dict[str, Any] = {"path": found[0] if found else None}
        if found is None and failures:
            verdict = {"error": "--resume: no checkpoint in this output_dir can be read completely (not starting from scratch "
                                "over them): " + "; ".join(failures)}
        if comm.get_world_size() > 1:
            comm.broadcast_object(verdict)
        if "error" in verdict:
            raise CheckpointFormatError(verdict["error"])
        return found

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        with open(path + ".tmp", "w") as f:
            f.write(last_filename_basename)
        os.replace(path + ".tmp", path)

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        if path and not os.path.isfile(path) and not os.path.isfile(self.path_manager.get_local_path(path)):
            raise CheckpointFormatError(f"{path}: checkpoint file not found")
        return super().load(path, checkpointables)

    def _load_file(self, f: str) -> dict[str, Any]:
        ckpt = read_checkpoint_file(f)
        ckpt["__source__"] = f
        return ckpt

    def load_weights(self, path: str, strict: bool = True, reset_queue_ids: bool = True):
        """Initialise the model from ``path`` (``model.weights``), of this or another task.

        Official files are renamed into our layout first; then every key of the model is
        filled or explained (:func:`albef.checkpoint.adapt.adapt_state_dict`). An
        incomplete fit is an error with ``strict`` (the report says what is missing or
        unexplained), otherwise the part that fits is loaded and the report logged.
        Returns the :class:`~albef.checkpoint.report.LoadReport`.
        """
        from albef.checkpoint.adapt import adapt_state_dict
        from albef.checkpoint.detect import is_official_state_dict
        from albef.checkpoint.official import convert_official_to_ours
        from albef.checkpoint.report import LoadReport, format_report

        if path and not os.path.isfile(path) and not os.path.isfile(self.path_manager.get_local_path(path)):
            raise CheckpointFormatError(f"{path}: checkpoint file not found")
        sd = read_checkpoint_file(path)["model"]
        if is_official_state_dict(sd):  # renamed (official_to_ours_keys), then adapt_state_dict
            state, report = convert_official_to_ours(sd, self.model, task=self.official_task, source=path, reset_queue_ids=reset_queue_ids)
        else:
            report = LoadReport(source=path, direction="checkpoint->model", task=type(self.model).__name__)
            state, report = adapt_state_dict(sd, self.model, report=report, reset_queue_ids=reset_queue_ids)
        self.last_conversion_report = report
        text = format_report(report)
        if not report.complete and strict:
            raise CheckpointMismatchError(
                f"{text}\n{path} does not fill this model completely; set model.weights_strict=false to load the part that fits."
            )
        (logger.info if report.complete else logger.warning)("%s", text)
        self.model.load_state_dict(state, strict=False)
        return report

    def _load_model(self, checkpoint: dict[str, Any]):
        source = checkpoint.pop("__source__", "checkpoint")
        from albef.checkpoint.adapt import is_legacy_state_dict, upgrade_legacy_keys

        if is_legacy_state_dict(checkpoint["model"]):  # written before heads had their own layer
            checkpoint["model"] = upgrade_legacy_keys(checkpoint["model"])
        ckpt_sd = checkpoint["model"]
        model_sd = self.model.state_dict()
        missing = [k for k in model_sd if k not in ckpt_sd]
        unexpected = [k for k in ckpt_sd if k not in model_sd]
        mismatched = [(k, tuple(ckpt_sd[k].shape), tuple(v.shape)) for k, v in model_sd.items() if k in ckpt_sd and tuple(ckpt_sd[k].shape) != tuple(v.shape)]
        if missing or unexpected or mismatched:
            report = format_load_report(missing, unexpected, mismatched)
            if self.strict:
                raise CheckpointMismatchError(
                    f"{source}: checkpoint does not match the model:\n{report}\n"
                    f"(for model.weights, model.weights_strict=false loads the matching part)"
                )
            logger.warning("Partial load of %s (model.weights_strict=false):\n%s", source, report)
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
