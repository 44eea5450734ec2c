#!/usr/bin/env python
"""Run ablation variants with several seeds on the same data and budget; tabulate them.

    python tools/run_ablation.py [--variants A.yaml B.yaml ...] [--seeds 0 1 2]
        [--output-dir output/ablations] [--max-iter N] [--base-config FILE] [--num-gpus N] [KEY=VALUE ...]

Each variant is a config file (default: every file in ``projects/ablations/configs``,
in the paper's order). Every (variant, seed) pair runs ``tools/train_net.py`` in its own
process with ``train.seed=<seed>``, the shared ``KEY=VALUE`` overrides and its own
``output_dir``; the wall time of that process is the run's time. Finished runs are
kept in ``<output-dir>/runs.jsonl`` and skipped when the command is repeated (so an
interrupted sweep continues), unless ``--rerun``.

``--base-config FILE`` swaps the variants' ``_base_`` (the synthetic default job) for
another config, e.g. a real-data recipe, so the same variant files run on real data.

Writes ``<output-dir>/ablation_table.md`` (mean ± sample sd of retrieval R@1/R@5 in both
directions and the time per run) and ``<output-dir>/ablation_chart.png``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import yaml  # noqa: E402

from albef.config import load_config  # noqa: E402
from albef.utils.ablation_report import bar_chart_png, markdown_table, summarize  # noqa: E402

# The paper's Table 1 order, then the extra variant; other files follow alphabetically.
PAPER_ORDER = ["mlm_itm", "itc_mlm_itm", "itc_mlm_itm_hard", "itc_mlm_itm_hard_mod", "mlm_itm_mod_no_itc"]


def variant_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def description(path: str) -> str:
    """The first comment line of a variant file."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                return line.lstrip("# ").strip()
    return ""


def materialize_variant(path: str, base_config: str | None, out_dir: str) -> str:
    """The config file a run uses: the variant itself, or a copy whose ``_base_`` is ``base_config``."""
    if base_config is None:
        return os.path.abspath(path)
    with open(path, encoding="utf-8") as f:
        body = yaml.safe_load(f) or {}
    body["_base_"] = os.path.abspath(base_config)
    os.makedirs(out_dir, exist_ok=True)
    dst = os.path.join(out_dir, os.path.basename(path))
    with open(dst, "w", encoding="utf-8") as f:
        f.write(f"# {path} with _base_ replaced by {base_config} (tools/run_ablation.py --base-config)\n")
        yaml.safe_dump(body, f, sort_keys=False)
    return dst


def fingerprint(cfg, num_gpus: int) -> str:
    """What makes two runs of a variant comparable: the resolved config minus seed and output dir."""
    import hashlib

    from albef.config import config_to_dict

    d = config_to_dict(cfg)
    d.pop("output_dir", None)
    d["train"].pop("seed", None)
    d["_num_gpus"] = num_gpus
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_runs(path: str, runs: list[dict]) -> None:
    """Atomically: an interrupted write never leaves a half line behind."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in runs)
    os.replace(tmp, path)


def load_runs(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def final_metrics(metrics_json: str) -> dict[str, float]:
    """The last value of every ``retrieval*/`` key in a run's metrics.json."""
    out: dict[str, float] = {}
    with open(metrics_json, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            out.update({k: v for k, v in row.items() if k.startswith("retrieval")})
    return out


def run_one(cfg_file: str, seed: int, run_dir: str, opts: list[str], log_path: str, num_gpus: int = 1) -> tuple[float, int]:
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--num-gpus", str(num_gpus), "--config-file", cfg_file, f"train.seed={seed}", f"output_dir={run_dir}", *opts]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    return time.time() - t0, rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", metavar="FILE", help="variant config files (default: projects/ablations/configs/*.yaml)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--output-dir", default=os.path.join(REPO, "output", "ablations"))
    p.add_argument("--max-iter", type=int, help="shorthand for train.max_iter=N (same budget for every variant)")
    p.add_argument("--base-config", metavar="FILE", help="run the variants on top of this config instead of their _base_")
    p.add_argument("--num-gpus", type=int, default=1, help="passed to train_net.py for every run")
    p.add_argument("--rerun", action="store_true", help="run again even if a (variant, seed) already finished")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table and chart from runs.jsonl")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY=VALUE", help="overrides for every run")
    args = p.parse_args(argv)

    files = args.variants or glob.glob(os.path.join(REPO, "projects", "ablations", "configs", "*.yaml"))
    if not files:
        p.error("no variant config files found")
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        p.error(f"variant config file(s) not found: {', '.join(missing)}")
    rank = {n: i for i, n in enumerate(PAPER_ORDER)}
    files = sorted(files, key=lambda f: (rank.get(variant_name(f), len(rank)), variant_name(f)))
    names = [variant_name(f) for f in files]
    if len(set(names)) != len(names):
        p.error(f"two variant files share a name: {names}")
    opts = list(args.opts)
    if args.max_iter is not None:
        opts.append(f"train.max_iter={args.max_iter}")
    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    runs_path = os.path.join(out, "runs.jsonl")
    runs = load_runs(runs_path)

    if not args.report_only:
        cfg_files = {n: materialize_variant(f, args.base_config, os.path.join(out, "configs")) for n, f in zip(names, files)}
        # Validate every variant first (a typo fails now, not after an hour), and generate
        # the synthetic data once, outside the timed runs.
        cfgs = {}
        for n, cf in cfg_files.items():
            try:
                cfgs[n] = load_config(cf, opts)
            except Exception as e:
                print(f"variant {n} ({cf}): {e}", file=sys.stderr)
                return 2
        from albef.data.build import prepare_synthetic

        for cfg in {c.data.synthetic.root if c.data.synthetic is not None else None: c for c in cfgs.values()}.values():
            prepare_synthetic(cfg)
        prints = {n: fingerprint(c, args.num_gpus) for n, c in cfgs.items()}
        done = {(r["variant"], r["seed"]): r.get("fingerprint") for r in runs}
        if not args.rerun:  # a finished run made with another config would mix into the table
            stale = sorted(f"{n} seed {s}" for (n, s), fp in done.items() if n in prints and s in args.seeds and fp is not None and fp != prints[n])
            if stale:
                print(f"{runs_path} holds runs made with another config, overrides or budget ({', '.join(stale)}); "
                      "use --rerun to replace them or another --output-dir", file=sys.stderr)
                return 2
        for seed in args.seeds:  # seed-major: a partial sweep still covers every variant
            for n in names:
                if (n, seed) in done and not args.rerun:
                    print(f"skip {n} seed {seed}: already in {runs_path}")
                    continue
                run_dir = os.path.join(out, n, f"seed{seed}")
                os.makedirs(run_dir, exist_ok=True)
                metrics_json = os.path.join(run_dir, "metrics.json")
                if os.path.exists(metrics_json):
                    os.remove(metrics_json)
                wall, rc = run_one(cfg_files[n], seed, run_dir, opts, os.path.join(run_dir, "stdout.log"), args.num_gpus)
                if rc != 0:
                    print(f"{n} seed {seed} failed (exit {rc}); see {os.path.join(run_dir, 'stdout.log')}", file=sys.stderr)
                    return rc
                cfg = cfgs[n]
                rec = {
                    "variant": n, "seed": seed, "wall_s": wall, "metrics": final_metrics(metrics_json),
                    "itc_off": cfg.model.objectives.get("itc") is None, "description": description(files[names.index(n)]),
                    "max_iter": cfg.train.max_iter, "config": cfg_files[n], "opts": opts, "fingerprint": prints[n],
                }
                runs = [r for r in runs if (r["variant"], r["seed"]) != (n, seed)] + [rec]
                write_runs(runs_path, runs)
                r1 = rec["metrics"]
                print(f"{n} seed {seed}: {wall / 60:.2f} min, TR@1 {r1.get('retrieval/txt_r1', float('nan')):.2f} IR@1 {r1.get('retrieval/img_r1', float('nan')):.2f}", flush=True)

    wanted = set(names)
    rows = summarize([r for r in runs if r["variant"] in wanted and r["seed"] in args.seeds], order=names)
    if not rows:
        print("no finished runs to report", file=sys.stderr)
        return 1
    table = markdown_table(rows)
    budget = sorted({r.get("max_iter") for r in runs if r["variant"] in wanted})
    header = (
        f"Ablation: {len(rows)} variants, seeds {sorted(args.seeds)}, {budget} iterations each. "
        "Cells: mean ± sample sd over seeds. TR = text retrieval (image->text), IR = image retrieval; "
        "TR/IR: ITM re-ranking of ITC's top k (ITM over every candidate for variants without ITC); "
        "ITC: cosine similarity alone (n/a without ITC). Time: wall clock of one train_net.py run.\n\n"
    )
    with open(os.path.join(out, "ablation_table.md"), "w", encoding="utf-8") as f:
        f.write(header + table + "\n")
    bar_chart_png(rows, os.path.join(out, "ablation_chart.png"))
    print("\n" + header + table)
    print(f"\nwritten: {os.path.join(out, 'ablation_table.md')}, {os.path.join(out, 'ablation_chart.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
