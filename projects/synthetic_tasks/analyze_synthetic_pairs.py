#!/usr/bin/env python
"""Where a model trained on the synthetic data gets retrieval right and wrong.

    python projects/synthetic_tasks/analyze_synthetic_pairs.py --output-dir output/synthetic

Loads ``OUTPUT_DIR/config.yaml`` and ``model_final.pth`` and, on the synthetic test split,
reports for image->text retrieval (ITC cosine, and the ITM logit over all pairs) whether the
top caption is the right one, its minimal-pair partner (same words, two attributes or the
relation swapped) or a caption of another scene; and the within-pair accuracy: how often
the right caption outscores its partner (50% = a bag-of-words model).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # run from a checkout without installing

from albef.data.tokenization import tokenize  # noqa: E402
from albef.evaluation.retrieval import itm_scores  # noqa: E402
from projects.synthetic_tasks.run import build_evaluators, load_config_of_run, load_run  # noqa: E402


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True)
    args = p.parse_args(argv)
    cfg = load_config_of_run(args.output_dir)
    if cfg.data.synthetic is None:
        print("error: this run did not use the synthetic data", file=sys.stderr)
        return 2
    run = load_run(cfg, os.path.join(args.output_dir, "model_final.pth"))
    evaluators = build_evaluators(run)
    model, tokenizer = run.model, run.tokenizer
    ds = next(iter(evaluators.values())).dataset  # the first evaluator's split: data.test
    with open(os.path.join(cfg.data.synthetic.root, "manifest.json")) as f:
        groups = json.load(f)["test_groups"]
    n = len(ds)
    group = torch.empty(n, dtype=torch.long)
    for g, members in enumerate(groups):
        for i in members.values():
            group[i] = g
    ev = next(e for e in evaluators.values() if hasattr(e, "max_tokens"))
    enc = {k: v.to(run.device) for k, v in tokenize(tokenizer, ds.text, ev.max_tokens, pad_to_max=True, mode=cfg.data.tokenization).items()}
    text_embeds, text_feat = model.encode_text(enc["input_ids"], enc["attention_mask"])
    image_embeds, image_feat = model.encode_image(torch.stack([ds[i]["image"] for i in range(n)]).to(run.device))
    scores = {"itc": image_feat @ text_feat.t()}
    if model.has_head("itm"):
        img_idx, txt_idx = torch.arange(n).repeat_interleave(n), torch.arange(n).repeat(n)
        scores["itm"] = torch.cat([
            itm_scores(model, "itm", text_embeds[txt_idx[s:s + 4096]], enc["attention_mask"][txt_idx[s:s + 4096]], image_embeds[img_idx[s:s + 4096]])
            for s in range(0, n * n, 4096)
        ]).view(n, n)
    scores = {k: v.float().cpu() for k, v in scores.items()}
    same = group.view(-1, 1) == group.view(1, -1)
    eye = torch.eye(n, dtype=torch.bool)
    print("| scores | top caption right | its pair partner | another scene | within-pair accuracy |\n|---|---|---|---|---|")
    for name, s in scores.items():
        top = s.argmax(dim=1)
        right = (top == torch.arange(n)).float().mean().item()
        partner = (same[torch.arange(n), top] & (top != torch.arange(n))).float().mean().item()
        within = s.masked_fill(~same | eye, float("-inf")).max(dim=1).values  # best partner score
        pair_acc = (s.diagonal() > within).float().mean().item()
        print(f"| {name} | {100 * right:.1f}% | {100 * partner:.1f}% | {100 * (1 - right - partner):.1f}% | {100 * pair_acc:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
