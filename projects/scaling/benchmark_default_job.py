#!/usr/bin/env python
"""Run the default job as a user would and report its wall time and retrieval numbers.

    python projects/scaling/benchmark_default_job.py [--config-file configs/pretrain/synthetic.yaml] [--output-dir DIR] [KEY=VALUE ...]

Prints a Markdown table: total wall-clock time of ``tools/train_net.py`` (data generation,
training and evaluation included), training throughput, and the final retrieval
recall of ITC alone and of ITM re-ranking, checked against the targets of the
default job (<= 10 minutes, R@1 >= 25% both directions, ITM >= ITC).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=os.path.join(REPO, "configs", "pretrain", "synthetic.yaml"))
    p.add_argument("--output-dir", default=os.path.join(REPO, "output", "benchmark_default_job"))
    p.add_argument("--fresh-data", action="store_true", help="delete the generated synthetic data first, so its generation is timed too")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.fresh_data:
        sys.path.insert(0, REPO)
        from albef.config import load_config

        cfg = load_config(args.config_file, args.opts)
        root = cfg.data.synthetic.root if cfg.data.synthetic is not None else None
        if root and os.path.isfile(os.path.join(root, "manifest.json")):  # only a generated data set
            shutil.rmtree(root)
            print(f"removed {root}")
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", args.config_file, f"output_dir={args.output_dir}", *args.opts]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    r = subprocess.run(cmd, cwd=REPO)
    wall = time.time() - t0
    if r.returncode != 0:
        print(f"train_net.py failed with exit code {r.returncode}")
        return r.returncode
    rows = [json.loads(l) for l in open(os.path.join(args.output_dir, "metrics.json"))]
    final = {k: v for row in rows for k, v in row.items() if k.startswith("retrieval")}
    steps = [row for row in rows if "pairs_per_s" in row]
    pps = statistics.median(row["pairs_per_s"] for row in steps) if steps else float("nan")
    itc = {k.split("/")[1]: v for k, v in final.items() if k.startswith("retrieval_itc/")}
    itm = {k.split("/")[1]: v for k, v in final.items() if k.startswith("retrieval/")}
    print("\n| metric | ITC only | ITC + ITM re-ranking |\n|---|---|---|")
    for k in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean"):
        print(f"| {k} | {itc.get(k, float('nan')):.2f} | {itm.get(k, float('nan')):.2f} |")
    print(f"\nwall time: {wall / 60:.2f} min (train_net.py end to end); median training throughput {pps:.0f} pairs/s")
    checks = {
        "finishes in <= 10 min": wall <= 600,
        "R@1 >= 25% both directions (re-ranked)": itm.get("txt_r1", 0) >= 25 and itm.get("img_r1", 0) >= 25,
        "ITM re-ranking >= ITC alone (r_mean)": itm.get("r_mean", 0) >= itc.get("r_mean", 0),
    }
    for name, ok in checks.items():
        print(f"- [{'x' if ok else ' '}] {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
