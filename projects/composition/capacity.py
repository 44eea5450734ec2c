"""The capacity experiment of the composition project: can the fusion encoder learn to tell a
caption from its relation flip / object exchange when that is ALL it is trained on?

Each cell is one ``tools/train_net.py`` run of ``projects/composition/configs/capacity.yaml``
(EditedCaptionLoss on the ITM head, from the default job's checkpoint) with overrides: fusion
depth, frozen or trained encoders, learning rate, steps. The training accuracy is the logged
``edited_pair_acc`` (share of training pairs whose caption out-scores its edit), the test
accuracy the composition probe of the test split (relation flip, object exchange, binding).

    python projects/composition/capacity.py --weights output/synthetic/model_final.pth \\
        --root datasets/albef_synthetic --out output/capacity            # runs the grid, then reports
    python projects/composition/capacity.py --out output/capacity --report-only

Writes ``<out>/capacity.md`` (the table) and ``<out>/capacity.png`` (the curves).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "projects", "composition", "configs", "capacity.yaml")
FROZEN = "train.frozen=[vision_encoder,text_encoder]"
#: cell name -> overrides (the grid of the README's table)
GRID = {f"d{d}_{f}": [f"model.fusion.num_layers={d}", FROZEN if f == "frozen" else "train.frozen=[]"]
        for d in (2, 4, 6) for f in ("frozen", "unfrozen")}
GRID["d2_unfrozen_lr1e-3_3k"] = ["model.fusion.num_layers=2", "train.frozen=[]", "train.lr=1e-3", "train.max_iter=3000", "train.eval_period=500"]
# one caption per image, its canonical form ("A left of B" / "A above B": the subject is the left or
# upper object), no flips, object exchanges only: the label is then (which object is named first)
# XOR (which is on the left) -- one factor fewer than the full task
CANONICAL = "canonical.json"
GRID["d2_canonical_exchange"] = ["model.fusion.num_layers=2", "train.frozen=[]", "train.lr=1e-3", "train.max_iter=1500",
                                 "data.transforms.hflip_prob=0", "data.text_negatives.kinds=[object_exchange]", f"data.train.ann_files=[{{out}}/{CANONICAL}]"]


def write_canonical(root: str, out: str) -> str:
    """``<out>/canonical.json``: the world's pretraining file with each image's first (canonical) caption only."""
    with open(os.path.join(root, "pretrain.json")) as f:
        entries = json.load(f)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, CANONICAL)
    with open(path, "w") as f:
        json.dump([dict(e, caption=[e["caption"][0] if isinstance(e["caption"], list) else e["caption"]]) for e in entries], f)
    return path


def run_cell(name: str, overrides: list[str], weights: str, root: str, out: str) -> None:
    cell = os.path.join(out, name)
    if os.path.isfile(os.path.join(cell, "model_final.pth")):
        return  # done
    if any(CANONICAL in o for o in overrides):
        write_canonical(root, out)
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", CONFIG, f"model.weights={weights}",
           f"data.synthetic.root={root}", f"output_dir={cell}", *(o.replace("{out}", out) for o in overrides)]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))


def read_cell(path: str) -> dict:
    """{"train": [(iteration, edited_pair_acc)], "test": [(iteration, relation_flip, object_exchange, binding)], "loss": last}."""
    rows = [json.loads(line) for line in open(os.path.join(path, "metrics.json")) if line.strip()]
    train = [(r["iteration"], r["edited_pair_acc"]) for r in rows if "edited_pair_acc" in r]
    test = [(r["iteration"], r["composition/relation_flip_itm"], r["composition/object_exchange_itm"], r.get("composition/binding_itm"))
            for r in rows if "composition/relation_flip_itm" in r]
    loss = [r["loss_edited"] for r in rows if "loss_edited" in r]
    return {"train": train, "test": test, "loss": loss[-1] if loss else float("nan"), "loss_min": min(loss) if loss else float("nan")}


def report(out: str) -> str:
    cells = {n: read_cell(os.path.join(out, n)) for n in GRID if os.path.isfile(os.path.join(out, n, "metrics.json"))}
    lines = ["| run | train pair acc (mean of the last 200 steps' logs) | last loss (min) | test relation flip | test object exchange | test binding |",
             "|---|---|---|---|---|---|"]
    for n, c in cells.items():
        tail = [a for it, a in c["train"] if it >= c["train"][-1][0] - 200] if c["train"] else []
        last = c["test"][-1] if c["test"] else (None, float("nan"), float("nan"), float("nan"))
        lines.append(f"| {n} | {100 * sum(tail) / max(len(tail), 1):.1f}% | {c['loss']:.4f} ({c['loss_min']:.4f}) | {last[1]:.1f}% | "
                     f"{last[2]:.1f}% | {last[3] if last[3] is not None else float('nan'):.1f}% |")
    table = "\n".join(lines)
    with open(os.path.join(out, "capacity.md"), "w") as f:
        f.write(table + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[report]'): no plot", file=sys.stderr)
        return table
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for n, c in cells.items():
        if c["train"]:
            axes[0].plot([i for i, _ in c["train"]], [100 * a for _, a in c["train"]], label=n, lw=1)
        if c["test"]:
            axes[1].plot([t[0] for t in c["test"]], [t[1] for t in c["test"]], marker="o", label=n, lw=1)
    axes[0].set(title="training pairs: caption above its edit", xlabel="iteration", ylabel="%", ylim=(30, 100))
    axes[1].set(title="test split: relation flip (ITM)", xlabel="iteration", ylabel="%", ylim=(30, 100))
    for ax in axes:
        ax.axhline(50, color="grey", ls=":", lw=1)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "capacity.png"), dpi=110)
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="output/synthetic/model_final.pth")
    p.add_argument("--root", default="datasets/albef_synthetic")
    p.add_argument("--out", default="output/capacity")
    p.add_argument("--cells", nargs="*", default=None, help=f"subset of {list(GRID)}")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if not args.report_only:
        for n in args.cells or GRID:
            run_cell(n, GRID[n], args.weights, args.root, args.out)
    print(report(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
