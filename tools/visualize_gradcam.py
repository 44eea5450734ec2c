"""Grad-CAM of one image and one sentence: where the model looks for the sentence and for each word.

    python tools/visualize_gradcam.py --config-file configs/pretrain/synthetic.yaml \
        --weights output/synthetic/model_final.pth --image IMG.jpg --text "a red circle left of a blue square" --out cam.png

Writes one PNG: the image, the sentence's heat map and one heat map per word, labelled.
Works with any checkpoint whose model has an ITM head (pretraining, retrieval, grounding):
the config builds the model, ``--weights`` fills it (ours or official, converted on the
fly). The map is the ITM Grad-CAM on the cross-attention of fusion layer ``--layer``
(default: the config's grounding evaluator's layer, else layer n/2 - 1 of n: the 3rd of 6, as official).
The same in a notebook: :func:`albef.utils.visualization.gradcam_png` (this figure) or
:func:`albef.modeling.gradcam.explain` (the maps). Needs matplotlib
(``pip install 'albef[report]'``). Exit status: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True, help="a checkpoint whose model has an ITM head")
    p.add_argument("--image", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--layer", type=int, default=None, help="fusion layer (0-based) whose cross-attention is explained")
    p.add_argument("opts", nargs="*", help="config overrides KEY=VALUE")
    args = p.parse_args(argv)

    from albef.config import load_config
    from albef.data.files import load_image
    from albef.modeling.build import build_model_from_weights
    from albef.utils.visualization import gradcam_png

    try:
        cfg = load_config(args.config_file, [f"model.weights={args.weights}", *args.opts])
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        image = load_image(args.image)
    except OSError as e:
        print(f"error: --image {args.image}: {e}", file=sys.stderr)
        return 2

    def needs_itm(model) -> None:  # refused before the weights are read
        if not model.has_head("itm"):
            raise ValueError(f"the model of {args.config_file} has no ITM head (model.heads.itm with an ITM objective); "
                             "Grad-CAM explains the ITM match score")

    try:
        model, tok, _, _ = build_model_from_weights(cfg, args.weights, check=needs_itm)
        layer, n_words, p_match = gradcam_png(cfg, model, tok, image, args.text, args.out, layer=args.layer)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({n_words} words, p(match) {p_match:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
