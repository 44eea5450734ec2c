#!/usr/bin/env python
"""Run the downstream tasks on the synthetic world as a user would, and tabulate them.

    python projects/synthetic_tasks/benchmark_tasks.py [--weights output/synthetic/model_final.pth] [--tasks retrieval ve nlvr vqa grounding]
                                    [--repeats N] [--no-random-init] [--output-dir output/benchmark_tasks]

Run the default job first (``python tools/train_net.py --config-file configs/pretrain/synthetic.yaml``):
every task starts from its final checkpoint (``--weights``). For each task the command of
the README is run as a subprocess, alone, and timed end to end (data generation,
training, evaluation):

* retrieval: zero-shot evaluation of the checkpoint (``--eval-only``), then fine-tuning
  (``configs/retrieval/synthetic.yaml``); metric: R@1 both ways on the test split (ITM re-ranked);
* ve: ``configs/ve/synthetic.yaml``; metric: test accuracy (chance 33.3%);
* nlvr: ``configs/nlvr/synthetic.yaml``; metric: test accuracy (chance 50%); with ``--nlvr-ta``
  the text-assignment step (``configs/nlvr/synthetic_ta.yaml``) runs first and the fine-tuning
  starts from it, both timed together;
* vqa: ``configs/vqa/synthetic.yaml``; metric: VQA accuracy on the test split (beside it: the
  majority-answer baseline, the most common training answer every time, from the data's manifest);
* grounding: ``configs/grounding/synthetic.yaml``; metric: accuracy at IoU >= 0.5 on the test
  split with the ITM Grad-CAM (beside it: the ITC Grad-CAM variant, and the chance of picking
  one of the candidate boxes at random);

and, unless ``--no-random-init``, the same fine-tuning from a randomly initialised model
(``model.weights=null``), so the pretraining's benefit is visible. Test metrics are the
final model's (the best-on-validation checkpoint is kept as ``model_best.pth``).

With ``--repeats N`` each fine-tuning runs N times (``seed=42, 43, ...``; CPU training is
not bit-reproducible either, so even equal seeds differ) and the table gives the median
with the range; targets are checked on the median and on the worst run, and the time is
the slowest run. Results of tasks not run now are kept from an earlier ``results.json``.
Writes ``results.json`` and ``results.md`` in ``--output-dir`` and prints the table with the
targets (SNLI-VE >= 80%, NLVR2 >= 75%, VQA >= 70%, grounding >= 60%, fine-tuned retrieval
R@1 above zero-shot R@1 both ways, each task <= 10 minutes). Exit status 0 when every target holds.
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
TRAIN = os.path.join(REPO, "tools", "train_net.py")
CONFIGS = {
    "retrieval": "configs/retrieval/synthetic.yaml",
    "ve": "configs/ve/synthetic.yaml",
    "nlvr_ta": "configs/nlvr/synthetic_ta.yaml",
    "nlvr": "configs/nlvr/synthetic.yaml",
    "vqa": "configs/vqa/synthetic.yaml",
    "grounding": "configs/grounding/synthetic.yaml",
}
TASKS = ("retrieval", "ve", "nlvr", "vqa", "grounding")


def _chance(task: str, out_dir: str) -> float | None:
    """VQA: the majority-answer baseline; grounding: a random candidate box; from the data's manifest."""
    if task in ("retrieval", "ve", "nlvr"):
        return {"retrieval": None, "ve": 100 / 3, "nlvr": 50.0}[task]
    import yaml

    with open(os.path.join(out_dir, "config.yaml")) as f:
        root = yaml.safe_load(f)["data"]["synthetic"]["root"]
    with open(os.path.join(REPO, root, task, "manifest.json")) as f:
        m = json.load(f)
    return 100 * (m["majority_baseline"]["test_acc"] if task == "vqa" else m["chance_acc"]["test"])


def run(args: list[str], log: str) -> float:
    """``train_net.py ARGS`` (which name ``output_dir=``, emptied first) with its output in ``log``;
    wall-clock seconds. Raises on failure."""
    out_dir = next(a.split("=", 1)[1] for a in args if a.startswith("output_dir="))
    shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run, not a resume of an older one
    cmd = [sys.executable, TRAIN, *args]
    print("$", " ".join(os.path.relpath(a, REPO) if a.startswith(REPO) else a for a in cmd[1:]), flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        r = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    dt = time.time() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed (exit {r.returncode}); see {log}")
    print(f"  {dt / 60:.2f} min", flush=True)
    return dt


def final_metrics(out_dir: str) -> dict[str, float]:
    """The last value of every evaluation metric in ``out_dir/metrics.json``."""
    last: dict[str, float] = {}
    with open(os.path.join(out_dir, "metrics.json")) as f:
        for line in f:
            row = json.loads(line)
            last.update({k: v for k, v in row.items() if "/" in k})
    return last


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="output/synthetic/model_final.pth", help="the default job's checkpoint")
    p.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS),
                   help="tasks to run; none (a bare --tasks) re-tabulates the existing results.json")
    p.add_argument("--repeats", type=int, default=1, help="fine-tuning runs per task (seeds 42, 43, ...)")
    p.add_argument("--no-random-init", action="store_true", help="skip the runs from a randomly initialised model")
    p.add_argument("--nlvr-ta", action="store_true", help="NLVR2: run the text-assignment step first and fine-tune from it")
    p.add_argument("--output-dir", default="output/benchmark_tasks")
    args = p.parse_args(argv)
    weights = os.path.join(REPO, args.weights) if not os.path.isabs(args.weights) else args.weights
    if not os.path.isfile(weights):
        print(f"error: {args.weights} does not exist: run the default job first "
              f"(python tools/train_net.py --config-file configs/pretrain/synthetic.yaml)", file=sys.stderr)
        return 2
    out = os.path.join(REPO, args.output_dir)
    os.makedirs(out, exist_ok=True)

    def cfg(name: str) -> str:
        return os.path.join(REPO, CONFIGS[name])

    results: dict[str, dict] = {}
    results_path = os.path.join(out, "results.json")
    if os.path.isfile(results_path):
        with open(results_path) as f:
            results = {t: _upgrade(r) for t, r in json.load(f).items()}
    seeds = [42 + i for i in range(args.repeats)]
    for task in args.tasks:
        res: dict = {"chance": None, "runs": []}
        d = lambda tag: os.path.join(out, f"{task}_{tag}")  # noqa: E731
        if task == "retrieval":
            run(["--eval-only", "--config-file", cfg("retrieval"), f"model.weights={weights}", f"output_dir={d('zeroshot')}"], d("zeroshot") + ".log")
            res["zeroshot"] = final_metrics(d("zeroshot"))
        for seed in seeds:
            tag = "finetuned" if seed == 42 else f"finetuned_seed{seed}"
            start, t = weights, 0.0
            if task == "nlvr" and args.nlvr_ta:
                ta = "ta" if seed == 42 else f"ta_seed{seed}"
                t = run(["--config-file", cfg("nlvr_ta"), f"model.weights={weights}", f"train.seed={seed}", f"output_dir={d(ta)}"], d(ta) + ".log")
                start = f"{d(ta)}/model_final.pth"
            t += run(["--config-file", cfg(task), f"model.weights={start}", f"train.seed={seed}", f"output_dir={d(tag)}"], d(tag) + ".log")
            res["runs"].append({"seed": seed, "minutes": t / 60, "metrics": final_metrics(d(tag))})
            res["chance"] = _chance(task, d(tag))
        if not args.no_random_init:
            run(["--config-file", cfg(task), "model.weights=null", f"output_dir={d('random')}"], d("random") + ".log")
            res["random"] = final_metrics(d("random"))
        elif "random" in results.get(task, {}):
            res["random"] = results[task]["random"]  # kept from the earlier results.json
        if task == "nlvr":
            res["ta"] = bool(args.nlvr_ta)
        results[task] = res
        with open(results_path, "w") as f:
            json.dump(results, f, indent=1)

    lines = ["| task | command | metric | measured | chance | random init | time |", "|---|---|---|---|---|---|---|"]
    checks: dict[str, bool] = {}

    def fmt(x):
        return "n/a" if x is None else f"{x:.2f}"

    for task in TASKS:
        if task not in results:
            continue
        res = results[task]
        runs, rnd = res["runs"], res.get("random", {})
        mins = f"{max(r['minutes'] for r in runs):.1f} min"
        n = f" ({len(runs)} runs: median [min, max])" if len(runs) > 1 else ""

        def measured(key: str) -> tuple[str, float, float]:
            vals = sorted(r["metrics"][key] for r in runs)
            med = statistics.median(vals)
            text = f"{med:.2f}" if len(vals) == 1 else f"{med:.2f} [{vals[0]:.2f}, {vals[-1]:.2f}]"
            return text, med, vals[0]

        if task == "retrieval":
            zs = res["zeroshot"]
            for key, name in (("retrieval/txt_r1", "TR@1"), ("retrieval/img_r1", "IR@1")):
                text, med, worst = measured(key)
                lines.append(f"| retrieval | `{CONFIGS['retrieval']}` | {name}{n} (zero-shot {zs[key]:.2f}) | {text} | "
                             f"{100 / 104:.2f} | {fmt(rnd.get(key))} | {mins} |")
                checks[f"retrieval {name}: fine-tuned > zero-shot (median)"] = med > zs[key]
                checks[f"retrieval {name}: fine-tuned > zero-shot (worst run)"] = worst > zs[key]
        elif task == "ve":
            text, med, worst = measured("ve/acc")
            lines.append(f"| SNLI-VE | `{CONFIGS['ve']}` | accuracy{n} | {text} | {res['chance']:.2f} | {fmt(rnd.get('ve/acc'))} | {mins} |")
            checks["SNLI-VE accuracy >= 80% (median)"] = med >= 80
            checks["SNLI-VE accuracy >= 80% (worst run)"] = worst >= 80
        elif task == "vqa":
            text, med, worst = measured("vqa/acc")
            lines.append(f"| VQA | `{CONFIGS['vqa']}` | VQA accuracy{n} (chance: majority answer) | {text} | {fmt(res['chance'])} | "
                         f"{fmt(rnd.get('vqa/acc'))} | {mins} |")
            checks["VQA accuracy >= 70% (median)"] = med >= 70
            checks["VQA accuracy >= 70% (worst run)"] = worst >= 70
        elif task == "grounding":
            text, med, worst = measured("grounding/test_acc")
            lines.append(f"| grounding | `{CONFIGS['grounding']}` | accuracy, ITM Grad-CAM{n} (chance: a random candidate box) | {text} | "
                         f"{fmt(res['chance'])} | {fmt(rnd.get('grounding/test_acc'))} | {mins} |")
            itc = measured("grounding_itc/test_acc")[0]
            lines.append(f"| grounding | (same runs) | accuracy, ITC Grad-CAM{n} | {itc} | {fmt(res['chance'])} | "
                         f"{fmt(rnd.get('grounding_itc/test_acc'))} | |")
            checks["grounding accuracy >= 60% (median)"] = med >= 60
            checks["grounding accuracy >= 60% (worst run)"] = worst >= 60
        else:
            cmd = f"`{CONFIGS['nlvr_ta']}` then `{CONFIGS['nlvr']}`" if res.get("ta") else f"`{CONFIGS['nlvr']}`"
            text, med, worst = measured("nlvr/acc")
            lines.append(f"| NLVR2 | {cmd} | accuracy{n} | {text} | {res['chance']:.2f} | {fmt(rnd.get('nlvr/acc'))} | {mins} |")
            checks["NLVR2 accuracy >= 75% (median)"] = med >= 75
            checks["NLVR2 accuracy >= 75% (worst run)"] = worst >= 75
        checks[f"{task} <= 10 min (slowest run)"] = max(r["minutes"] for r in runs) <= 10
    table = "\n".join(lines)
    print("\n" + table + "\n")
    for name, ok in checks.items():
        print(f"- [{'x' if ok else ' '}] {name}")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n\n" + "\n".join(f"- [{'x' if ok else ' '}] {n}" for n, ok in checks.items()) + "\n")
    return 0 if all(checks.values()) else 1


def _upgrade(res: dict) -> dict:
    """A task entry of an older results.json (one run: ``minutes``/``finetuned``) as ``runs``."""
    if "runs" not in res:
        res = dict(res)
        res["runs"] = [{"seed": 42, "minutes": res.pop("minutes"), "metrics": res.pop("finetuned")}]
    return res

if __name__ == "__main__":
    sys.exit(main())
