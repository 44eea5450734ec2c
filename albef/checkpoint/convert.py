"""Convert a checkpoint file between the official ALBEF layout and ours, as a file -> file step.

:func:`convert_checkpoint_file` is what ``tools/convert_albef_checkpoint.py`` runs. The key
mapping itself (every official key mapped, dropped with a reason, or reported) is
:mod:`albef.checkpoint.official`; this module adds what a whole file needs: the model the
result must fit (built from a config, every weight left to the checkpoint), the check that
the result loads into it, and writing ``.pth`` or safetensors.

Official -> ours writes ``{'model': state_dict, 'conversion_report': ..., 'source': ...,
'task': ...}`` (plain containers, readable with ``torch.load(weights_only=True)``, usable
as ``model.weights``); ours -> official writes ``{'model': official_state_dict}`` in the
layout of ``task``, keys in the official order. A safetensors output holds the state dict
with the rest as string metadata.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from albef.checkpoint.checkpointer import CheckpointFormatError, format_load_report, read_checkpoint_file, write_safetensors
from albef.checkpoint.detect import detect_official_task, detect_our_task, is_official_state_dict
from albef.checkpoint.official import convert_official_to_ours, convert_ours_to_official
from albef.checkpoint.report import LoadReport

# The official release's backbone (ViT-B/16 + BERT-base), for official files without a config.
DEFAULT_CONFIG = "pretrain/ALBEF-4M.yaml"


class ConversionError(ValueError):
    """Bad input for a conversion (wrong direction, a config that does not fit, ...); the
    message names the file and what is wrong."""


@dataclass
class ConversionResult:
    """What :func:`convert_checkpoint_file` did: ``report`` (key by key), the official
    ``task`` layout read or written, ``written`` (False: ``strict`` and incomplete, nothing
    written), the output ``format`` (pt / safetensors) and its ``num_keys``."""

    report: LoadReport
    task: str
    to_official: bool
    written: bool
    format: str
    num_keys: int


def default_config_file() -> str:
    """The config an official checkpoint is fitted to when none is given."""
    from albef.config.paths import core_config_file

    return core_config_file(DEFAULT_CONFIG)


def checkpoint_vocab_size(state_dict: dict[str, torch.Tensor]) -> int | None:
    """Rows of the text encoder's word embeddings ([V, H]), in either layout; None without one."""
    for k, v in state_dict.items():
        if k.endswith("embeddings.word_embeddings.weight") and not k.startswith(("text_encoder_m.", "teacher.", "text_decoder")):
            return int(v.shape[0])
    return None


def build_conversion_model(config_file: str, opts: Sequence[str] = (), vocab_size: int | None = None) -> torch.nn.Module:
    """The model of ``config_file`` + ``opts`` that a converted checkpoint must fill.

    Every weight comes from the checkpoint, so the encoders get no public (DeiT / BERT)
    initialisation and nothing is downloaded; a null ``model.text_encoder.config.vocab_size``
    is taken from ``vocab_size`` (the checkpoint's embeddings). Config and component errors
    become :class:`ConversionError` naming the key."""
    from omegaconf import open_dict

    from albef.config import load_config
    from albef.modeling import build_model

    try:
        cfg = load_config(config_file, list(opts))
        with open_dict(cfg):
            for enc in ("vision_encoder", "text_encoder"):
                if cfg.model[enc].get("pretrained") is not None:
                    cfg.model[enc].pretrained = None
            node = cfg.model.text_encoder.get("config")
            if node is not None and node.get("vocab_size", 0) is None:
                if vocab_size is None:
                    raise CheckpointFormatError("model.text_encoder.config.vocab_size is null and the checkpoint has no word embeddings")
                cfg.model.text_encoder.config.vocab_size = vocab_size
        torch.manual_seed(0)  # the few weights the checkpoint cannot fill are the same on every run
        return build_model(cfg)
    except (ValueError, RuntimeError) as e:  # ConfigError, ComponentError, CheckpointFormatError
        raise ConversionError(str(e)) from e


def write_checkpoint(obj: dict[str, Any], path: str, fmt: str, metadata: dict[str, str]) -> None:
    """``obj`` as a ``.pth`` (written to a temporary name, then renamed: never half a file), or
    ``obj['model']`` as safetensors with ``metadata``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if fmt == "safetensors":
        write_safetensors(obj["model"], path, metadata)
    else:
        tmp = path + ".tmp"
        torch.save(obj, tmp)
        os.replace(tmp, path)


def output_format(path: str, fmt: str | None = None) -> str:
    """``fmt``, else safetensors for a ``.safetensors`` path, else pt."""
    return fmt or ("safetensors" if path.endswith(".safetensors") else "pt")


def convert_checkpoint_file(src: str, dst: str, *, to_official: bool = False, task: str | None = None, config_file: str | None = None,
                            opts: Sequence[str] = (), fmt: str | None = None, strict: bool = False) -> ConversionResult:
    """Convert the checkpoint ``src`` (official -> ours, or ours -> official with ``to_official``) into ``dst``.

    ``task``: the official layout ``src`` is in (default: detected from its keys) or, with
    ``to_official``, the layout to write (default: from the checkpoint's heads).
    ``config_file`` + ``opts``: our model; official -> ours fits the checkpoint to it (default
    :data:`DEFAULT_CONFIG`) and proves the result loads into it; ours -> official first checks
    that the checkpoint matches it exactly (skipped without a config). ``strict``: write
    nothing unless the conversion is complete (``result.written`` says).

    Raises :class:`CheckpointFormatError` (unreadable ``src``) or :class:`ConversionError`."""
    fmt = output_format(dst, fmt)
    sd = read_checkpoint_file(src)["model"]
    official = is_official_state_dict(sd)
    if to_official:
        if official:
            raise ConversionError(f"{src}: already in the official ALBEF layout (visual_encoder.* keys)")
        from albef.checkpoint.adapt import is_legacy_state_dict, upgrade_legacy_keys

        if is_legacy_state_dict(sd):  # written before heads had their own layer
            sd = upgrade_legacy_keys(sd)
        if config_file:
            model_sd = build_conversion_model(config_file, opts, checkpoint_vocab_size(sd)).state_dict()
            missing = [k for k in model_sd if k not in sd]
            unexpected = [k for k in sd if k not in model_sd]
            mismatched = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in model_sd.items() if k in sd and sd[k].shape != v.shape]
            if missing or unexpected or mismatched:
                raise ConversionError(f"{src} does not match the model of {config_file}:\n" + format_load_report(missing, unexpected, mismatched))
        task = task or detect_our_task(sd)
        try:
            out_sd, report = convert_ours_to_official(sd, task=task, source=src)
        except ValueError as e:
            raise ConversionError(str(e)) from e
        written = not strict or report.complete
        if written:
            write_checkpoint({"model": out_sd}, dst, fmt, {"format": "albef-official", "task": task, "source": src})
        return ConversionResult(report, task, True, written, fmt, len(out_sd))

    if not official:
        raise ConversionError(f"{src}: not an official ALBEF checkpoint (no visual_encoder.* / text_encoder_m.* keys); "
                              f"use --to-official to convert one of ours")
    task = task or detect_official_task(sd)
    model = build_conversion_model(config_file or default_config_file(), opts, checkpoint_vocab_size(sd))
    out_sd, report = convert_official_to_ours(sd, model, task=task, source=src)
    model.load_state_dict(out_sd, strict=False)  # proves the result loads into the configured model
    written = not strict or report.complete
    if written:
        info = report.to_dict()
        info.pop("mapped")  # one line per key; the counts are in the report's text
        write_checkpoint({"model": out_sd, "conversion_report": info, "source": src, "task": task}, dst, fmt,
                         {"format": "albef", "task": task, "source": src, "conversion_report": json.dumps(info)})
    return ConversionResult(report, task, False, written, fmt, len(out_sd))
