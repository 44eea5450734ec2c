#!/usr/bin/env python
"""How many runs of a sweep left the no-alignment plateau, per variant and condition.

    python projects/noisy_pairs/takeoff.py projects/noisy_pairs/results/runs.jsonl [--threshold 55]

On the synthetic benchmark a short run either "takes off" (ITC aligns the two
modalities, retrieval climbs well above the MLM + ITM baseline's r_mean of about 50) or
stays on that plateau (``projects/ablations/README.md``: r_mean 50.1 ± 0.6 without ITC).
Mean R@1 over seeds mixes the two outcomes; this table separates them: per cell, the
runs whose ITC r_mean exceeds ``--threshold``, and the mean ITC / ITM R@1 of those runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", help="a runs.jsonl of projects/ablations/run_ablation.py")
    p.add_argument("--threshold", type=float, default=55.0, help="ITC r_mean above which a run counts as taken off")
    args = p.parse_args(argv)
    if not os.path.isfile(args.runs):
        p.error(f"{args.runs} does not exist")
    with open(args.runs, encoding="utf-8") as f:
        runs = [json.loads(line) for line in f if line.strip()]
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        v, _, c = r["variant"].partition("@")
        cells.setdefault((v, c or "-"), []).append(r)
    print(f"| variant | condition | runs above ITC r_mean {args.threshold:g} | their ITC R@1 (TR / IR) | their ITM R@1 (TR / IR) | ITC r_mean of each seed |")
    print("|---|---|---|---|---|---|")
    for (v, c) in sorted(cells, key=lambda k: (k[0], k[1])):
        rs = sorted(cells[(v, c)], key=lambda r: r["seed"])
        if "retrieval_itc/r_mean" not in rs[0]["metrics"]:
            continue
        up = [r for r in rs if r["metrics"]["retrieval_itc/r_mean"] > args.threshold]

        def pair(prefix):
            if not up:
                return "n/a"
            return " / ".join(f"{statistics.fmean(r['metrics'][f'{prefix}/{k}'] for r in up):.1f}" for k in ("txt_r1", "img_r1"))

        each = ", ".join(f"{r['metrics']['retrieval_itc/r_mean']:.1f}" for r in rs)
        print(f"| `{v}` | {c} | {len(up)} of {len(rs)} | {pair('retrieval_itc')} | {pair('retrieval')} | {each} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
