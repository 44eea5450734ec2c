"""Export a trained model's image and text encoders (and the fused ITM scorer) to ONNX.

    python tools/export.py --model output/synthetic/model_final.pth --format onnx --out export/

Writes ``image_encoder.onnx``, ``text_encoder.onnx``, ``itm_scorer.onnx`` (unless ``--no-itm``,
or the model has no ITM head), ``manifest.json`` and ``tokenizer/`` to ``--out``; checks every
file with onnxruntime against the eager model at batch sizes 1 and 5 and prints the max abs
difference (:func:`albef.inference.export_onnx.export_onnx`). ``--benchmark`` then times
onnxruntime against eager PyTorch, one thread each (:mod:`albef.inference.onnx_latency`).
``--model`` is anything ``albef.load`` takes. Needs ``pip install 'albef[export]'``.
Exit status: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FORMATS = ("onnx",)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a checkpoint, model folder, zoo name or hf-hub:org/repo")
    p.add_argument("--format", default="onnx", help="export format (onnx)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--no-itm", action="store_true", help="export the two encoders only")
    p.add_argument("--exporter", default="dynamo", help="dynamo (torch.export, default) or torchscript (legacy tracer)")
    p.add_argument("--benchmark", action="store_true", help="then time onnxruntime vs eager PyTorch (1 thread, batch 1 and 32, 3 runs)")
    args = p.parse_args(argv)

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    if args.format not in FORMATS:
        return fail(f"--format {args.format!r} is not supported; supported: {', '.join(FORMATS)}")
    from albef.inference.export_onnx import EXPORTERS, ExportError, export_onnx, require_onnx

    if args.exporter not in EXPORTERS:
        return fail(f"--exporter {args.exporter!r}: choose one of {', '.join(EXPORTERS)}")
    try:
        require_onnx()
    except ImportError as e:
        return fail(str(e))

    import torch

    import albef
    from albef.utils.errors import USER_ERRORS
    from albef.model_zoo.zoo import ModelZooError

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    try:
        model, preprocess = albef.load(args.model, device="cpu", dtype="float32")
    except (ModelZooError, OSError, ValueError, *USER_ERRORS) as e:
        return fail(f"--model {args.model}: {e}")
    try:
        result = export_onnx(model, preprocess, args.out, opset=args.opset, itm=not args.no_itm, exporter=args.exporter,
                             source=os.fspath(args.model), log=print)
    except (ExportError, ValueError, OSError) as e:
        return fail(str(e))
    for name, reason in result.skipped.items():
        print(f"not exported: {name}: {reason}")
    print(f"wrote {result.manifest}")
    if args.benchmark:
        from albef.inference.onnx_latency import encoder_latency, latency_table

        print("latency, 1 thread (OMP/intra-op), median [min, max] of 3 runs:")
        print(latency_table(encoder_latency(args.out, model, preprocess)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
