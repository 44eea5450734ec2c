#!/usr/bin/env python
"""Probe every run of composition sweeps and tabulate probes and retrieval (mean ± sd over seeds).

    python projects/composition/make_table.py \\
        --sweep "default world=output/composition/default_world" \\
        --sweep "held-out combinations=output/composition/holdout_world" \\
        --out projects/composition/results

Each sweep folder is a ``projects/ablations/run_ablation.py --output-dir`` (its ``runs.jsonl`` lists the
runs and their retrieval metrics). Every run's ``model_final.pth`` is probed with
``projects/composition/probe_composition.py`` on the run's own test split (the result is kept as
``<run>/composition_probe.json`` and reused). Writes ``OUT/composition_table.md`` and
``OUT/probes.jsonl`` (one line per run: probes, R@1, wall time).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from projects.ablations.ablation_report import mean_sd  # noqa: E402

KINDS = ("relation_flip", "object_exchange", "attribute_change", "binding")
ORDER = ["default_recipe", "compositional_negatives"]


def probe_run(run_dir: str) -> dict:
    out = os.path.join(run_dir, "composition_probe.json")
    stale = False
    if os.path.isfile(out):
        with open(out, encoding="utf-8") as f:
            stale = not json.load(f).get("paraphrases", False)  # written before the balanced probe
    if stale or not os.path.isfile(out):
        from albef.config import load_config

        cfg = load_config(os.path.join(run_dir, "config.yaml"))
        if cfg.data.test is None:
            raise SystemExit(f"{run_dir}: its config has no data.test split to probe")
        cmd = [sys.executable, os.path.join(REPO, "tools", "probe_composition.py"), "--config-file", os.path.join(run_dir, "config.yaml"),
               "--weights", os.path.join(run_dir, "model_final.pth"), "--test", cfg.data.test.ann_file, "--out", run_dir]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"probe of {run_dir} failed:\n{r.stderr[-2000:]}")
    with open(out, encoding="utf-8") as f:
        return json.load(f)["kinds"]


def cell(vals: list) -> str:
    vals = [v for v in vals if v is not None]
    m, s = mean_sd(vals)
    return f"{m:.1f} ± {s:.1f}" if vals else "n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", action="append", required=True, help="NAME=FOLDER of a projects/ablations/run_ablation.py sweep")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    records = []
    lines = [
        "| world | recipe | seeds | relation flip, ITM | object exchange, ITM | attribute change, ITM | relation flip, ITC | object exchange, ITC "
        "| relation word, MLM fill-in | TR@1 | IR@1 | min / run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for spec in args.sweep:
        name, _, folder = spec.partition("=")
        with open(os.path.join(folder, "runs.jsonl"), encoding="utf-8") as f:
            runs = [json.loads(line) for line in f if line.strip()]
        variants = [v for v in ORDER if any(r["variant"] == v for r in runs)] + sorted({r["variant"] for r in runs} - set(ORDER))
        for v in variants:
            rs = sorted((r for r in runs if r["variant"] == v), key=lambda r: r["seed"])
            rows = []
            for r in rs:
                kinds = probe_run(os.path.join(folder, v, f"seed{r['seed']}"))
                rec = {"world": name, "variant": v, "seed": r["seed"], "wall_s": r["wall_s"], "probe": kinds,
                       "txt_r1": r["metrics"].get("retrieval/txt_r1"), "img_r1": r["metrics"].get("retrieval/img_r1")}
                records.append(rec)
                rows.append(rec)
            cols = [cell([x["probe"].get(k, {}).get("itm") for x in rows]) for k in KINDS]
            cols += [cell([x["probe"].get(k, {}).get("itc") for x in rows]) for k in KINDS[:2]]
            cols += [cell([x["probe"].get("relation_flip", {}).get("mlm") for x in rows])]
            cols += [cell([x["txt_r1"] for x in rows]), cell([x["img_r1"] for x in rows]), cell([x["wall_s"] / 60 for x in rows])]
            lines.append(f"| {name} | {v} | {', '.join(str(x['seed']) for x in rows)} | " + " | ".join(cols) + " |")
    with open(os.path.join(args.out, "probes.jsonl"), "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "composition_table.md"), "w", encoding="utf-8") as f:
        f.write("Cells: mean ± sample sd over seeds; probes in % of questions (each test caption and its paraphrase) whose true "
                "caption outscores the edited one (chance 50%); MLM fill-in: % of masked relation words where the MLM head ranks "
                "the true word above its partner; TR/IR@1: retrieval (ITM re-ranking of ITC's top 16), %.\n\n" + table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
