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

The conversion is :func:`albef.checkpoint.convert.convert_checkpoint_file`. Inputs are read
without executing code (``weights_only=True`` or safetensors). Exit
status: 0 done, 1 incomplete conversion with ``--strict``, 2 bad input.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout without installing

from albef.checkpoint.checkpointer import CheckpointFormatError  # noqa: E402
from albef.checkpoint.convert import DEFAULT_CONFIG, ConversionError, convert_checkpoint_file  # noqa: E402
from albef.checkpoint.official import TASKS  # noqa: E402
from albef.checkpoint.report import format_report  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("input", metavar="IN", help="checkpoint to convert (.pth/.pt or .safetensors)")
    p.add_argument("output", metavar="OUT", help="file to write")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="official layout the checkpoint is in (default: detected from its keys) or, with --to-official, "
                        "the layout to write (default: from the checkpoint's heads)")
    p.add_argument("--config-file", metavar="FILE", default=None, help=f"our model's config (default configs/{DEFAULT_CONFIG})")
    p.add_argument("--format", choices=("pt", "safetensors"), default=None, help="output format (default: from OUT's extension, else pt)")
    p.add_argument("--to-official", action="store_true", help="convert one of our checkpoints to the official layout")
    p.add_argument("--strict", action="store_true", help="fail (exit 1, nothing written) unless the conversion is complete")
    p.add_argument("opts", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        res = convert_checkpoint_file(args.input, args.output, to_official=args.to_official, task=args.task,
                                      config_file=args.config_file, opts=args.opts, fmt=args.format, strict=args.strict)
    except (CheckpointFormatError, ConversionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(res.report))
    if not res.written:
        print("error: incomplete conversion (--strict): nothing written", file=sys.stderr)
        return 1
    if res.to_official:
        print(f"wrote {args.output} ({res.format}, official {res.task} layout, {res.num_keys} keys)")
    else:
        note = "" if res.report.complete else " (incomplete: load it with model.weights_strict=false)"
        print(f"wrote {args.output} ({res.format}, {res.num_keys} keys){note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
