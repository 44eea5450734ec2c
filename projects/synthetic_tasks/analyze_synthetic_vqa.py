"""Per-kind VQA accuracy of a synthetic VQA run, from its result file and the data's manifest.

    python projects/synthetic_tasks/analyze_synthetic_vqa.py --output-dir output/vqa_synthetic [--split test]

The official result format keeps only ``question_id`` and ``answer``; the synthetic data's
manifest says what kind of question each entry is (colour, shape, relation, object,
count). Prints a Markdown table: VQA accuracy per kind, and the majority-answer baseline
(the most common training answer, every time) beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # run from a checkout without installing

from albef.config import load_config  # noqa: E402
from albef.evaluation.vqa import vqa_accuracy  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--split", default="test", choices=["val", "test"])
    args = p.parse_args(argv)
    cfg = load_config(os.path.join(args.output_dir, "config.yaml"))
    if cfg.data.get("synthetic_task") is None or cfg.data.synthetic_task.task != "vqa":
        print(f"error: {args.output_dir} is not a synthetic VQA run", file=sys.stderr)
        return 2
    key = next((k for k, v in (cfg.eval or {}).items() if v is not None and v.get("name") == "VQAEvaluator" and v.get("split") == args.split), None)
    result_file = os.path.join(args.output_dir, f"{key}_result.json") if key else None
    if not result_file or not os.path.isfile(result_file):
        print(f"error: no VQA result file for split {args.split!r} in {args.output_dir}", file=sys.stderr)
        return 2
    root = os.path.join(cfg.data.synthetic.root, "vqa")
    with open(os.path.join(root, "manifest.json")) as f:
        manifest = json.load(f)
    with open(os.path.join(root, f"{args.split}.json")) as f:
        questions = json.load(f)
    with open(result_file) as f:
        answers = {r["question_id"]: r["answer"] for r in json.load(f)}
    majority = manifest["majority_baseline"]["answer"]
    acc, base = defaultdict(list), defaultdict(list)
    for q, kind in zip(questions, manifest["kinds"][args.split]):
        for k in (kind, "all"):
            acc[k].append(vqa_accuracy(answers[q["question_id"]], q["answer"]))
            base[k].append(vqa_accuracy(majority, q["answer"]))
    print(f"| kind ({args.split}) | questions | VQA accuracy | majority answer ('{majority}') |\n|---|---|---|---|")
    for k in sorted(acc, key=lambda k: (k == "all", k)):
        print(f"| {k} | {len(acc[k])} | {100 * sum(acc[k]) / len(acc[k]):.2f} | {100 * sum(base[k]) / len(base[k]):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
