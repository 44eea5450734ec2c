#!/usr/bin/env python
"""Tabulate several ``projects/noisy_pairs/inspect_pseudo_targets.py`` results: mean ± sd over runs.

    python projects/noisy_pairs/teacher_table.py --label mod@noise_60 DIR1 DIR2 DIR3 \\
        [--label no_mod@noise_60 DIR4 DIR5 DIR6] [--out table.md]

Each DIR holds a ``pseudo_targets.json``. One line per (label, pair kind): how often the
momentum teacher's top-1 text is a correct description of the image and chance (the
share of the caption bank that correctly describes the image), how often it names the
image's two objects (relation and clutter aside) and chance, how often it is the pair's
own (possibly noisy) caption, and the teacher's weight on correct descriptions.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from projects.ablations.ablation_report import _fmt  # noqa: E402
from projects.ablations.ablation_report import mean_sd as _mean_sd  # noqa: E402


def mean_sd(vals: list[float], digits: int = 1) -> str:
    """``m ± sd`` over runs (``m`` for one run)."""
    return _fmt(_mean_sd(vals), len(vals), digits)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", action="append", nargs="+", required=True, metavar=("LABEL", "DIR"),
                   help="a label and the result folders of its runs (repeat for several)")
    p.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    lines = ["| model | pair kind | pairs per run | teacher top-1 correct (%) | chance (%) | top-1 names both objects (%) | chance (%) | top-1 is the pair's own caption (%) | teacher weight on correct (%) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, *dirs in args.label:
        if not dirs:
            p.error(f"--label {label}: no result folders")
        results = []
        for d in dirs:
            path = os.path.join(d, "pseudo_targets.json")
            if not os.path.isfile(path):
                p.error(f"{path} does not exist (run projects/noisy_pairs/inspect_pseudo_targets.py --out {d})")
            with open(path, encoding="utf-8") as f:
                results.append(json.load(f)["stats"])
        kinds = list(dict.fromkeys(k for r in results for k in r))
        missing = [k for k in kinds if not all(k in r for r in results)]
        if missing:
            p.error(f"--label {label}: the runs do not all have pair kinds {missing}")
        for k in kinds:
            rows = [r[k] for r in results]
            both = all("top1_names_both_objects" in r for r in rows)
            n = sorted({r["pairs"] for r in rows})
            lines.append(
                f"| {label} ({len(dirs)} run{'s' if len(dirs) > 1 else ''}) | {k} | {'/'.join(map(str, n))} | {mean_sd([r['top1_correct'] for r in rows])} | "
                f"{mean_sd([r['chance'] for r in rows], 2)} | "
                + (f"{mean_sd([r['top1_names_both_objects'] for r in rows])} | {mean_sd([r['chance_names_both_objects'] for r in rows], 2)} | " if both else "n/a | n/a | ")
                + f"{mean_sd([r['top1_is_own_caption'] for r in rows])} | {mean_sd([100 * r['weight_on_correct'] for r in rows], 2)} |"
            )
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
