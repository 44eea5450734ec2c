#!/usr/bin/env python
"""How alike a run's text features of *different* test captions are.

    python projects/noisy_pairs/text_collapse.py RUN_DIR [RUN_DIR ...] [--weights model_final.pth]

For each run (its ``config.yaml`` and checkpoint), every caption of the test split it
names goes through the text encoder and ITC projection; printed: the mean and the
minimum cosine between the features of two different captions (1.0: the text side has
collapsed and text-to-image retrieval ranks every caption's images alike; a run trained
on clean captions sits near 0.6).
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--weights", default="model_final.pth", help="checkpoint file name inside each run dir")
    args = p.parse_args(argv)

    import torch

    from albef.config import load_config
    from albef.data.files import read_json_list
    from albef.data.text import pre_caption
    from albef.evaluation.retrieval import encode_texts
    from albef.modeling.build import build_model_from_weights

    print("| run | mean cosine between different test captions | minimum |")
    print("|---|---|---|")
    for run in args.runs:
        cfg_file, weights = os.path.join(run, "config.yaml"), os.path.join(run, args.weights)
        for f in (cfg_file, weights):
            if not os.path.isfile(f):
                p.error(f"{f} does not exist")
        cfg = load_config(cfg_file)
        if cfg.data.test is None or "ann_file" not in cfg.data.test:
            p.error(f"{cfg_file}: data.test names no ann_file")
        texts = sorted({pre_caption(c, cfg.data.max_words) for e in read_json_list(cfg.data.test.ann_file)
                        for c in (e["caption"] if isinstance(e["caption"], list) else [e["caption"]])})
        model, tok, device, amp = build_model_from_weights(cfg, weights, strict=True)
        with torch.no_grad():
            autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
            _, _, feat = encode_texts(model, tok, texts, cfg.data.max_tokens, 256, device, autocast, cfg.data.tokenization)
        if feat is None:
            p.error(f"{run}: the model has no ITC projections")
        feat = feat.float().cpu()
        sim = feat @ feat.t()
        off = sim[~torch.eye(len(texts), dtype=torch.bool)]
        print(f"| {run} | {off.mean():.3f} | {off.min():.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
