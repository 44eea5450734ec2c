#!/usr/bin/env python
"""Run ablation variants with several seeds on the same data and budget; tabulate them.

    python projects/ablations/run_ablation.py [--variants A.yaml B.yaml ...] [--seeds 0 1 2]
        [--output-dir output/ablations] [--max-iter N] [--base-config FILE] [--num-gpus N]
        [--conditions C1.yaml C2.yaml ...] [--baseline VARIANT] [--jobs N] [KEY=VALUE ...]

Each variant is a config file (default: every file in ``projects/ablations/configs``,
in the paper's order). Every (variant, seed) pair runs ``tools/train_net.py`` in its own
process with ``train.seed=<seed>``, the shared ``KEY=VALUE`` overrides and its own
``output_dir``; the wall time of that process is the run's time. Finished runs are
kept in ``<output-dir>/runs.jsonl`` and skipped when the command is repeated (so an
interrupted sweep continues), unless ``--rerun``.

``--base-config FILE`` swaps the variants' ``_base_`` (the synthetic default job) for
another config, e.g. a real-data recipe, so the same variant files run on real data.

``--conditions FILE ...`` sweeps every variant over data (or any other) conditions: each
file is a YAML fragment without ``_base_`` (e.g. ``data: {synthetic: {noise: {...}}}``)
applied as overrides after the shared ones; runs are named ``<variant>@<condition>``.
``--baseline VARIANT`` adds, per condition, each variant's difference of mean R@1 to that
variant in standard errors (and, over conditions, how the difference changes).
``--jobs N`` runs N trainings at once, each with ``OMP_NUM_THREADS = cores / N`` (a CPU
machine's cores are better used by N one-thread runs than by one N-thread run).

Writes ``<output-dir>/ablation_table.md`` (mean ± sample sd of retrieval R@1/R@5 in both
directions and the time per run) and ``<output-dir>/ablation_chart.png`` (with conditions:
R@1 against condition, one line per variant).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import yaml  # noqa: E402

from albef.config import load_config  # noqa: E402
from projects.ablations.ablation_report import (  # noqa: E402
    bar_chart_png,
    condition_chart_png,
    differences,
    differences_table,
    markdown_table,
    summarize,
)

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
        f.write(f"# {path} with _base_ replaced by {base_config} (projects/ablations/run_ablation.py --base-config)\n")
        yaml.safe_dump(body, f, sort_keys=False)
    return dst


def condition_overrides(path: str) -> list[str]:
    """The ``KEY=VALUE`` overrides of a condition file (a YAML fragment, flattened)."""
    with open(path, encoding="utf-8") as f:
        body = yaml.safe_load(f) or {}
    if not isinstance(body, dict) or "_base_" in body:
        raise ValueError(f"{path}: a condition is a YAML mapping of overrides without _base_")
    out: list[str] = []

    def walk(node, prefix):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out.append(f"{prefix}={json.dumps(node)}")  # JSON is YAML: null, numbers, lists, quoted strings

    walk(body, "")
    return out


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


def run_one(cfg_file: str, seed: int, run_dir: str, opts: list[str], log_path: str, num_gpus: int = 1, threads: int | None = None) -> tuple[float, int]:
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--num-gpus", str(num_gpus), "--config-file", cfg_file, f"train.seed={seed}", f"output_dir={run_dir}", *opts]
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    return time.time() - t0, rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", metavar="FILE", help="variant config files (default: projects/ablations/configs/*.yaml)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--output-dir", default=os.path.join(REPO, "output", "ablations"))
    p.add_argument("--max-iter", type=int, help="shorthand for train.max_iter=N (same budget for every variant)")
    p.add_argument("--base-config", metavar="FILE", help="run the variants on top of this config instead of their _base_")
    p.add_argument("--num-gpus", type=int, default=1, help="passed to train_net.py for every run")
    p.add_argument("--conditions", nargs="+", metavar="FILE", help="condition files (YAML override fragments): every variant runs under each")
    p.add_argument("--baseline", metavar="VARIANT", help="report each variant's R@1 difference to this variant, per condition, in standard errors")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (CPU: each gets cores / jobs threads)")
    p.add_argument("--rerun", action="store_true", help="run again even if a (variant, seed) already finished")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table and chart from runs.jsonl")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY=VALUE", help="overrides for every run")
    args = p.parse_args(argv)

    files = [os.path.abspath(f) for f in args.variants] if args.variants else glob.glob(os.path.join(REPO, "projects", "ablations", "configs", "*.yaml"))
    if not files:
        p.error("no variant config files found")
    missing = [f for f in files + list(args.conditions or []) if not os.path.isfile(f)]
    if missing:
        p.error(f"variant or condition file(s) not found: {', '.join(missing)}")
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    rank = {n: i for i, n in enumerate(PAPER_ORDER)}
    files = sorted(files, key=lambda f: (rank.get(variant_name(f), len(rank)), variant_name(f)))
    variants = [variant_name(f) for f in files]
    if len(set(variants)) != len(variants):
        p.error(f"two variant files share a name: {variants}")
    if args.baseline is not None and args.baseline not in variants:
        p.error(f"--baseline {args.baseline}: not one of the variants {variants}")
    conditions = [variant_name(c) for c in args.conditions or []]
    if len(set(conditions)) != len(conditions):
        p.error(f"two condition files share a name: {conditions}")
    if args.base_config:
        args.base_config = os.path.abspath(args.base_config)
    try:
        cond_opts = {c: condition_overrides(f) for c, f in zip(conditions, args.conditions or [])}
    except (ValueError, yaml.YAMLError) as e:
        p.error(str(e))
    # a run name: the variant, or variant@condition
    names = [f"{v}@{c}" for v in variants for c in conditions] if conditions else list(variants)
    file_of = {n: files[variants.index(n.split("@")[0])] for n in names}
    opts = list(args.opts)
    if args.max_iter is not None:
        opts.append(f"train.max_iter={args.max_iter}")
    run_opts = {n: opts + (cond_opts[n.split("@")[1]] if "@" in n else []) for n in names}
    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    # The runs start in the repository root: resolve the overrides' relative paths (e.g.
    # data.synthetic.root) there too, so the data prepared here is the data they use.
    os.chdir(REPO)
    runs_path = os.path.join(out, "runs.jsonl")
    runs = load_runs(runs_path)

    if not args.report_only:
        cfg_files = {v: materialize_variant(f, args.base_config, os.path.join(out, "configs")) for v, f in zip(variants, files)}
        # Validate every run's config first (a typo fails now, not after an hour), and generate
        # the synthetic data (and each condition's noisy copy) once, outside the timed runs.
        cfgs = {}
        for n in names:
            cf = cfg_files[n.split("@")[0]]
            try:
                cfgs[n] = load_config(cf, run_opts[n])
            except Exception as e:
                print(f"variant {n} ({cf}): {e}", file=sys.stderr)
                return 2
        from albef.config import config_to_dict
        from albef.data.build import prepare_synthetic

        prints = {n: fingerprint(c, args.num_gpus) for n, c in cfgs.items()}
        seen = set()
        for c in cfgs.values():
            syn = c.data.synthetic
            key = None if syn is None else json.dumps(config_to_dict(c)["data"]["synthetic"], sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                prepare_synthetic(c)
        done = {(r["variant"], r["seed"]): r.get("fingerprint") for r in runs}
        if not args.rerun:  # a finished run made with another config would mix into the table
            stale = sorted(f"{n} seed {s}" for (n, s), fp in done.items() if n in prints and s in args.seeds and fp is not None and fp != prints[n])
            if stale:
                print(f"{runs_path} holds runs made with another config, overrides or budget ({', '.join(stale)}); "
                      "use --rerun to replace them or another --output-dir", file=sys.stderr)
                return 2
        todo = []
        for seed in args.seeds:  # seed-major: a partial sweep still covers every variant
            for n in names:
                if (n, seed) in done and not args.rerun:
                    print(f"skip {n} seed {seed}: already in {runs_path}")
                    continue
                todo.append((n, seed))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // args.jobs) if args.jobs > 1 else None

        def launch(n: str, seed: int):
            run_dir = os.path.join(out, *n.split("@"), f"seed{seed}")
            os.makedirs(run_dir, exist_ok=True)
            metrics_json = os.path.join(run_dir, "metrics.json")
            if os.path.exists(metrics_json):
                os.remove(metrics_json)
            wall, rc = run_one(cfg_files[n.split("@")[0]], seed, run_dir, run_opts[n], os.path.join(run_dir, "stdout.log"), args.num_gpus, threads)
            metrics = final_metrics(metrics_json) if rc == 0 else None
            return n, seed, run_dir, wall, rc, metrics

        failed = 0
        from concurrent.futures import ThreadPoolExecutor, as_completed

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(launch, n, s) for n, s in todo]
            for fut in as_completed(futures):  # records are written by this thread only
                if fut.cancelled():  # not started after an earlier failure
                    continue
                try:
                    n, seed, run_dir, wall, rc, metrics = fut.result()
                except Exception as e:  # e.g. a run that exited 0 without metrics.json
                    print(f"a run failed: {e!r}", file=sys.stderr)
                    failed = failed or 1
                    for f in futures:
                        f.cancel()
                    continue
                if rc != 0:
                    print(f"{n} seed {seed} failed (exit {rc}); see {os.path.join(run_dir, 'stdout.log')}", file=sys.stderr)
                    failed = failed or rc
                    for f in futures:  # start nothing new; runs already going finish and are recorded
                        f.cancel()
                    continue
                cfg = cfgs[n]
                v, _, cond = n.partition("@")
                rec = {
                    "variant": n, "seed": seed, "wall_s": wall, "metrics": metrics,
                    "itc_off": cfg.model.objectives.get("itc") is None, "description": description(file_of[n]),
                    "max_iter": cfg.train.max_iter, "config": cfg_files[v], "opts": run_opts[n], "fingerprint": prints[n],
                    "condition": cond or None, "jobs": args.jobs,
                }
                runs = [r for r in runs if (r["variant"], r["seed"]) != (n, seed)] + [rec]
                write_runs(runs_path, runs)
                r1 = rec["metrics"]
                print(f"{n} seed {seed}: {wall / 60:.2f} min, TR@1 {r1.get('retrieval/txt_r1', float('nan')):.2f} IR@1 {r1.get('retrieval/img_r1', float('nan')):.2f}", flush=True)
        if failed:
            return failed

    wanted = set(names)
    mine = [r for r in runs if r["variant"] in wanted and r["seed"] in args.seeds]
    rows = summarize(mine, order=names)
    if not rows:
        print("no finished runs to report", file=sys.stderr)
        return 1
    table = markdown_table(rows)
    budget = sorted({r.get("max_iter") for r in runs if r["variant"] in wanted})
    jobs = sorted({r.get("jobs", 1) for r in mine})
    what = f"{len(variants)} variants x {len(conditions)} conditions" if conditions else f"{len(rows)} variants"
    header = (
        f"Ablation: {what}, seeds {sorted(args.seeds)}, {budget} iterations each. "
        "Cells: mean ± sample sd over seeds. TR = text retrieval (image->text), IR = image retrieval; "
        "TR/IR: ITM re-ranking of ITC's top k (ITM over every candidate for variants without ITC); "
        "ITC: cosine similarity alone (n/a without ITC). Time: wall clock of one train_net.py run"
        + (f" ({' or '.join(map(str, jobs))} runs at once)" if jobs != [1] else "") + ".\n\n"
    )
    text = header + table + "\n"
    if args.baseline is not None:
        diffs = differences(mine, args.baseline, conditions or [None], variants)
        if diffs:
            text += (
                f"\nDifference of mean R@1 ((TR@1 + IR@1) / 2) to `{args.baseline}`: Δ ± standard error of the "
                "difference of two means (sqrt(s1²/n1 + s2²/n2)), z = Δ / SE.\n\n"
                + differences_table(diffs, args.baseline, conditions or [None]) + "\n"
            )
    chart = os.path.join(out, "ablation_chart.png")
    with open(os.path.join(out, "ablation_table.md"), "w", encoding="utf-8") as f:
        f.write(text)
    try:
        if conditions:
            condition_chart_png(rows, chart, conditions)
        else:
            bar_chart_png(rows, chart)
    except ImportError as e:  # the table is written; the chart needs the report extra
        print(f"no chart: {e}", file=sys.stderr)
        chart = "(no chart)"
    print("\n" + text)
    print(f"written: {os.path.join(out, 'ablation_table.md')}, {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
