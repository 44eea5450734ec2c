#!/usr/bin/env python
"""Which NLVR2 sentences a model fine-tuned on the synthetic pairs gets right.

    python projects/synthetic_tasks/analyze_synthetic_nlvr.py --output-dir output/nlvr_synthetic [--checkpoint model_final.pth] [--split test]

Loads ``OUTPUT_DIR/config.yaml`` and the checkpoint, predicts every entry of the split
with the ``eval.nlvr`` evaluator's head and prints the accuracy per sentence form
("side": an object in the named picture, "side_relation": a relation inside it, "each",
"one" (in one picture but not the other), "neither"), separately for true and false
sentences (chance 50% everywhere: each form is balanced).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # run from a checkout without installing

from albef.data.synthetic.tasks.nlvr import nlvr_sentence_form  # noqa: E402
from projects.synthetic_tasks.run import build_evaluators, load_config_of_run, load_run  # noqa: E402


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--checkpoint", default="model_final.pth")
    p.add_argument("--split", default="test", choices=["val", "test"])
    args = p.parse_args(argv)
    cfg = load_config_of_run(args.output_dir)
    evals = {k: v for k, v in (cfg.eval or {}).items() if v is not None and v.get("name") == "ClassificationEvaluator" and v.get("split") == args.split}
    if cfg.data.get("synthetic_task") is None or cfg.data.synthetic_task.task != "nlvr" or not evals:
        print(f"error: {args.output_dir} is not a synthetic NLVR2 run with a ClassificationEvaluator on split {args.split!r}", file=sys.stderr)
        return 2
    run = load_run(cfg, os.path.join(args.output_dir, args.checkpoint))
    ev = build_evaluators(run)[next(iter(evals))]
    model = run.model
    preds = []
    for batch in ev.loader_fn(ev.dataset, ev.batch_size):
        batch.pop("skipped", None)
        batch = {k: v.to(run.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        preds.append(ev.predict(model, batch).argmax(dim=1).cpu())
    pred = torch.cat(preds).tolist()
    with open(cfg.data[args.split].ann_files[0]) as f:
        entries = json.load(f)
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for e, y in zip(entries, pred):
        ok = int(y == (e["label"] == "True"))
        for key in ((nlvr_sentence_form(e["sentence"]), e["label"]), (nlvr_sentence_form(e["sentence"]), "all")):
            counts[key][0] += ok
            counts[key][1] += 1
    print(f"| form ({args.split}) | true sentences | false sentences | all | entries |\n|---|---|---|---|---|")
    for form in ("side", "side_relation", "each", "one", "neither"):
        if counts[(form, "all")][1]:
            acc = {lab: 100 * c[0] / c[1] if (c := counts[(form, lab)])[1] else float("nan") for lab in ("True", "False", "all")}
            print(f"| {form} | {acc['True']:.1f}% | {acc['False']:.1f}% | {acc['all']:.1f}% | {counts[(form, 'all')][1]} |")
    print(f"| all | | | {100 * sum(int(y == (e['label'] == 'True')) for e, y in zip(entries, pred)) / len(entries):.2f}% | {len(entries)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
