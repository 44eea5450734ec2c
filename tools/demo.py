#!/usr/bin/env python
"""The browser demo on a trained model (the ``demo`` extra: gradio).

    python tools/demo.py --model output/synthetic/model_final.pth
    python tools/demo.py --model output/synthetic/model_final.pth --index output/index --port 7861

Serves http://127.0.0.1:7860 (loopback unless --host says otherwise). Examples: the test
split the checkpoint's config names (the synthetic world's test.json), or --examples DIR.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint file, model folder, zoo name or hf-hub:org/repo (albef.load)")
    p.add_argument("--index", default=None, help="image index folder (tools/index_images.py): adds the Search tab")
    p.add_argument("--examples", default=None, help="folder of example images (with test.json: its captions too); "
                                                    "default: the test split the checkpoint's config names")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if there is one)")
    p.add_argument("--tokenizer", default=None, help="the checkpoint's vocabulary, if it moved since training")
    p.add_argument("--gradcam-layer", type=int, default=0, help="fusion layer of the ITM Grad-CAM (default 0, the first)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from albef.demo.server import DemoSetupError, serve

    try:
        serve(args.model, index=args.index, examples=args.examples, host=args.host, port=args.port, device=args.device,
              tokenizer=args.tokenizer, gradcam_layer=args.gradcam_layer)
    except DemoSetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
