#!/usr/bin/env python
"""Zero-shot classification of an ImageFolder (root/<class name>/<images>; '_' in a folder
name is a space in its prompts): top-1 / top-5 accuracy, chance level and a per-class table.

    python tools/zero_shot.py --model output/synthetic/model_final.pth --images DIR \\
        [--templates "a photo of {a} {}." ...] [--rerank-k K] [--batch-size N] [--out results.json]

A template's {} is the class name, {a} its article (a / an). --rerank-k K re-ranks each
image's top K classes by the ITM head (albef/inference/zero_shot.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    from albef.inference.zero_shot import DEFAULT_TEMPLATES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint, model folder, zoo name or hf-hub:org/repo (albef.load)")
    p.add_argument("--images", required=True, help="ImageFolder root: root/<class name>/<images>")
    p.add_argument("--templates", nargs="+", default=list(DEFAULT_TEMPLATES), help=f"prompt templates (default {list(DEFAULT_TEMPLATES)})")
    p.add_argument("--rerank-k", type=int, default=0, help="re-rank each image's top K classes by ITM (0: ITC only)")
    p.add_argument("--itm-prompts", choices=("mean", "first"), default="mean", help="ITM score of a class: mean over its prompts, or the first")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="default: cuda if available")
    p.add_argument("--tokenizer", default=None, help="vocab.txt / tokenizer folder, if the one the checkpoint names moved")
    p.add_argument("--out", default=None, help="write the results (and each image's prediction) as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    import torch

    import albef
    from albef.checkpoint.checkpointer import CheckpointMismatchError
    from albef.data.image_folder import ImageFolderError, read_image_folder
    from albef.data.tokenization import TokenizerError
    from albef.inference.zero_shot import ZeroShotClassifier, classify_folder, format_result
    from albef.model_zoo.zoo import ModelZooError

    torch.set_grad_enabled(False)
    try:
        folder = read_image_folder(args.images)
        model, preprocess = albef.load(args.model, device=args.device, tokenizer=args.tokenizer)
        clf = ZeroShotClassifier(model, preprocess, folder.class_names, args.templates, rerank_k=args.rerank_k, itm_prompts=args.itm_prompts)
        result = classify_folder(clf, folder, batch_size=args.batch_size)
    except (ImageFolderError, ModelZooError, CheckpointMismatchError, TokenizerError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    print(f"model {args.model}  images {args.images}  templates {args.templates}  rerank_k {clf.rerank_k}")
    print(format_result(result))
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable file(s): {', '.join(p for p, _ in result.skipped)}")
    if args.out:
        out = {"model": args.model, "images": args.images, "templates": args.templates, "rerank_k": clf.rerank_k,
               "itm_prompts": args.itm_prompts, **result.to_dict()}
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
