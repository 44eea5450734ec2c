#!/usr/bin/env python
"""Convert an official ALBEF checkpoint to this codebase's layout, or back.

    python tools/convert_albef_checkpoint.py ALBEF_4M.pth albef_4m_ours.pth
    python tools/convert_albef_checkpoint.py mscoco.pth coco_ours.safetensors --task retrieval --strict \\
        --config-file configs/retrieval/coco.yaml
    python tools/convert_albef_checkpoint.py snli_ve.pth ve_ours.pth --strict --config-file configs/ve/snli_ve.yaml
    python tools/convert_albef_checkpoint.py nlvr.pth nlvr_ours.pth --strict --config-file configs/nlvr/nlvr2.yaml
    python tools/convert_albef_checkpoint.py pretrain_model_nlvr.pth ta_ours.pth --task nlvr_ta --strict \\
        --config-file configs/nlvr/ta_pretrain.yaml
    python tools/convert_albef_checkpoint.py output/run/model_final.pth official.pth --to-official

Official -> ours: the model is built from ``--config-file`` (default
``configs/pretrain/ALBEF-4M.yaml``: ViT-B/16 + BERT-base; a null vocabulary size is
taken from the checkpoint) plus KEY=VALUE overrides; every official key is mapped,
dropped with a reason, or reported (see ``albef/checkpoint/official.py``); position
embeddings are interpolated to the model's resolution, and a checkpoint of another
task is fitted as ``model.weights`` would fit it (e.g. ALBEF.pth onto the NLVR2
text-assignment config: each fusion layer duplicated, the new head initialised).
OUT is ``{'model': state_dict, 'conversion_report': ..., 'source': ..., 'task': ...}``
(plain containers, readable with
``torch.load(weights_only=True)`` and usable as ``model.weights``), or a safetensors file.
Keys the checkpoint cannot fill are absent from OUT: loading it then needs
``model.weights_strict=false``.

Ours -> official (``--to-official``): writes ``{'model': official_state_dict}`` in the
layout of ``--task`` (pretrain, retrieval/grounding, ve, nlvr or nlvr_ta; default: from
the checkpoint's heads), keys in the official order. A given ``--config-file`` is used to
check that the checkpoint matches that model first.

Layouts (``--task``): pretrain (ALBEF.pth, ALBEF_4M.pth), retrieval / grounding
(mscoco.pth, flickr30k.pth, refcoco.pth), ve (snli_ve.pth), nlvr (nlvr.pth), nlvr_ta
(pretrain_model_nlvr.pth, the text-assignment step), vqa (vqa.pth, read only: its answer
decoder becomes the AnswerDecoder head ``heads.answer``).

Inputs are read without executing code (``weights_only=True`` or safetensors). Exit
status: 0 done, 1 incomplete conversion with ``--strict``, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from albef.checkpoint.checkpointer import (  # noqa: E402
    CheckpointFormatError,
    format_load_report,
    read_checkpoint_file,
    write_safetensors,
)
from albef.checkpoint.official import (  # noqa: E402
    TASKS,
    convert_official_to_ours,
    convert_ours_to_official,
    detect_official_task,
    detect_our_task,
    format_report,
    is_official_state_dict,
)

DEFAULT_CONFIG = os.path.join(REPO, "configs", "pretrain", "ALBEF-4M.yaml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("input", metavar="IN", help="checkpoint to convert (.pth/.pt or .safetensors)")
    p.add_argument("output", metavar="OUT", help="file to write")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="official layout the checkpoint is in (default: detected from its keys) or, with --to-official, "
                        "the layout to write (default: from the checkpoint's heads)")
    p.add_argument("--config-file", metavar="FILE", default=None, help=f"our model's config (default {os.path.relpath(DEFAULT_CONFIG, REPO)})")
    p.add_argument("--format", choices=("pt", "safetensors"), default=None, help="output format (default: from OUT's extension, else pt)")
    p.add_argument("--to-official", action="store_true", help="convert one of our checkpoints to the official layout")
    p.add_argument("--strict", action="store_true", help="fail (exit 1, nothing written) unless the conversion is complete")
    p.add_argument("opts", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return p.parse_intermixed_args(argv)


def _build_model(config_file: str, opts: list[str], vocab_size: int | None):
    from omegaconf import open_dict

    from albef.config import load_config
    from albef.modeling import build_model

    cfg = load_config(config_file, opts)
    with open_dict(cfg):
        # every weight comes from the checkpoint: no DeiT / BERT initialisation (and no download)
        for enc in ("vision_encoder", "text_encoder"):
            if cfg.model[enc].get("pretrained") is not None:
                cfg.model[enc].pretrained = None
        node = cfg.model.text_encoder.get("config")
        if node is not None and node.get("vocab_size", 0) is None:
            if vocab_size is None:
                raise CheckpointFormatError("model.text_encoder.config.vocab_size is null and the checkpoint has no word embeddings")
            cfg.model.text_encoder.config.vocab_size = vocab_size
    torch.manual_seed(0)
    return build_model(cfg)


def _vocab_size(sd: dict[str, torch.Tensor]) -> int | None:
    for k, v in sd.items():
        if k.endswith("embeddings.word_embeddings.weight") and not k.startswith(("text_encoder_m.", "teacher.", "text_decoder")):
            return int(v.shape[0])
    return None


def _write(obj: dict[str, Any], state_dict: dict[str, torch.Tensor], path: str, fmt: str, metadata: dict[str, str]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if fmt == "safetensors":
        write_safetensors(state_dict, path, metadata)
    else:
        tmp = path + ".tmp"
        torch.save(obj, tmp)
        os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fmt = args.format or ("safetensors" if args.output.endswith(".safetensors") else "pt")
    try:
        ckpt = read_checkpoint_file(args.input)
    except CheckpointFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sd = ckpt["model"]
    official = is_official_state_dict(sd)

    if args.to_official:
        if official:
            print(f"error: {args.input}: already in the official ALBEF layout (visual_encoder.* keys)", file=sys.stderr)
            return 2
        from albef.checkpoint.adapt import is_legacy_state_dict, upgrade_legacy_keys

        if is_legacy_state_dict(sd):  # written before heads had their own layer
            sd = upgrade_legacy_keys(sd)
        if args.config_file:
            try:
                model_sd = _build_model(args.config_file, args.opts, _vocab_size(sd)).state_dict()
            except (ValueError, RuntimeError) as e:  # config and component errors name the key
                print(f"error: {e}", file=sys.stderr)
                return 2
            missing = [k for k in model_sd if k not in sd]
            unexpected = [k for k in sd if k not in model_sd]
            mismatched = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in model_sd.items() if k in sd and sd[k].shape != v.shape]
            if missing or unexpected or mismatched:
                print(f"error: {args.input} does not match the model of {args.config_file}:\n"
                      + format_load_report(missing, unexpected, mismatched), file=sys.stderr)
                return 2
        task = args.task or detect_our_task(sd)
        try:
            out_sd, report = convert_ours_to_official(sd, task=task, source=args.input)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(format_report(report))
        if args.strict and not report.complete:
            print("error: incomplete conversion (--strict): nothing written", file=sys.stderr)
            return 1
        _write({"model": out_sd}, out_sd, args.output, fmt, {"format": "albef-official", "task": task, "source": args.input})
        print(f"wrote {args.output} ({fmt}, official {task} layout, {len(out_sd)} keys)")
        return 0

    if not official:
        print(f"error: {args.input}: not an official ALBEF checkpoint (no visual_encoder.* / text_encoder_m.* keys); "
              f"use --to-official to convert one of ours", file=sys.stderr)
        return 2
    task = args.task or detect_official_task(sd)
    try:
        model = _build_model(args.config_file or DEFAULT_CONFIG, args.opts, _vocab_size(sd))
    except (ValueError, RuntimeError) as e:  # config and component errors name the key
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_sd, report = convert_official_to_ours(sd, model, task=task, source=args.input)
    model.load_state_dict(out_sd, strict=False)  # proves the result loads into the configured model
    print(format_report(report))
    if args.strict and not report.complete:
        print("error: incomplete conversion (--strict): nothing written", file=sys.stderr)
        return 1
    info = report.to_dict()
    info.pop("mapped")  # one line per key; the counts are in the printed report
    _write(
        {"model": out_sd, "conversion_report": info, "source": args.input, "task": task}, out_sd, args.output, fmt,
        {"format": "albef", "task": task, "source": args.input, "conversion_report": json.dumps(info)},
    )
    note = "" if report.complete else " (incomplete: load it with model.weights_strict=false)"
    print(f"wrote {args.output} ({fmt}, {len(out_sd)} keys){note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
