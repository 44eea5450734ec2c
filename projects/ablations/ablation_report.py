"""Summaries of repeated runs: mean and spread per variant, a Markdown table, a PNG bar chart.

Used by ``projects/ablations/run_ablation.py``. A *run* is a dict with ``variant``, ``seed``,
``wall_s`` and ``metrics`` (flat ``prefix/metric`` -> value, as in ``metrics.json``).
Charts are drawn with matplotlib (the ``report`` extra). A sweep over data conditions
names its rows ``variant@condition``.
"""
from __future__ import annotations

import math
import statistics
from typing import Iterable, Sequence

# (column title, metrics.json key): the final retrieval (ITM re-ranked, or ITM over every
# candidate when the variant has no ITC) in both directions, then ITC alone.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("TR@1", "retrieval/txt_r1"),
    ("TR@5", "retrieval/txt_r5"),
    ("IR@1", "retrieval/img_r1"),
    ("IR@5", "retrieval/img_r5"),
    ("r_mean", "retrieval/r_mean"),
    ("ITC TR@1", "retrieval_itc/txt_r1"),
    ("ITC IR@1", "retrieval_itc/img_r1"),
)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaN for no values."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summarize(runs: Iterable[dict], order: Sequence[str] | None = None) -> list[dict]:
    """Group runs by variant -> ``[{variant, n, seeds, <key>: (mean, sd), wall_s: (mean, sd)}]``.

    A metric a variant does not produce (e.g. ITC for a variant without ITC) is left out
    of its row, and ``itc_off`` variants get no ITC columns even if an (untrained) ITC
    projection was evaluated.
    """
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["variant"], []).append(r)
    names = [v for v in (order or []) if v in groups] + sorted(v for v in groups if v not in (order or []))
    rows = []
    for name in names:
        rs = sorted(groups[name], key=lambda r: r["seed"])
        row: dict = {"variant": name, "n": len(rs), "seeds": [r["seed"] for r in rs], "wall_s": mean_sd([r["wall_s"] for r in rs])}
        row["description"] = rs[0].get("description", "")
        itc_off = any(r.get("itc_off") for r in rs)
        for _, key in COLUMNS:
            if itc_off and key.startswith("retrieval_itc/"):
                continue
            vals = [r["metrics"][key] for r in rs if key in r["metrics"]]
            if vals:
                row[key] = mean_sd(vals)
        rows.append(row)
    return rows


def _fmt(ms: tuple[float, float] | None, n: int, digits: int = 1) -> str:
    if ms is None:
        return "n/a"
    m, s = ms
    return f"{m:.{digits}f}" if n < 2 else f"{m:.{digits}f} ± {s:.{digits}f}"  # one seed: no spread to show


def markdown_table(rows: Sequence[dict]) -> str:
    """One line per variant: mean ± sample sd over seeds of each column, and training time."""
    head = ["variant", "seeds"] + [c for c, _ in COLUMNS] + ["time / run (min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        cells = [f"`{row['variant']}`", str(row["n"])]
        cells += [_fmt(row.get(key), row["n"]) for _, key in COLUMNS]
        m, s = row["wall_s"]
        cells.append(_fmt((m / 60, s / 60), row["n"], digits=2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


COLORS = ("#4272c4", "#ed7d31", "#70ad47", "#a5a5a5", "#7030a0", "#c00000")  # (66, 114, 196), (237, 125, 49), ...


def _pyplot():
    from albef.utils.visualization import _pyplot as pyplot

    return pyplot()


def _wrap(name: str, width: int = 16) -> str:
    """A long variant name broken after underscores into lines of about ``width`` characters."""
    lines, cur = [], ""
    for part in name.split("_"):
        cand = f"{cur}_{part}" if cur else part
        if cur and len(cand) > width:
            lines.append(cur + "_")
            cur = part
        else:
            cur = cand
    return "\n".join(lines + [cur])


def bar_chart_png(rows: Sequence[dict], path: str, keys: Sequence[tuple[str, str]] = (("TR@1", "retrieval/txt_r1"), ("IR@1", "retrieval/img_r1")), title: str = "Retrieval R@1 (mean ± sd over seeds)") -> None:
    """Grouped bars (one group per variant, one bar per key) with sd whiskers, written as PNG
    (matplotlib, the ``report`` extra)."""
    plt = _pyplot()
    n, k = len(rows), len(keys)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + 0.45 * k * max(n, 1) + 0.3 * n), 4.0))
    width = 0.8 / max(k, 1)
    for j, (label, key) in enumerate(keys):
        xs, ms, sds = [], [], []
        for i, row in enumerate(rows):
            if row.get(key) is None:
                continue
            xs.append(i + (j - (k - 1) / 2) * width)
            ms.append(row[key][0])
            sds.append(row[key][1])
        ax.bar(xs, ms, width=width * 0.95, yerr=sds, capsize=3, color=COLORS[j % len(COLORS)], label=label, antialiased=False)
    ax.set_xticks(range(n))
    ax.set_xticklabels([_wrap(r["variant"]) for r in rows], fontsize=7)
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.grid(axis="y", color="#e1e1e1")
    ax.set_axisbelow(True)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def split_name(name: str) -> tuple[str, str | None]:
    """``"variant@condition"`` -> (variant, condition); a plain name -> (name, None)."""
    v, _, c = name.partition("@")
    return v, (c or None)


def condition_chart_png(rows: Sequence[dict], path: str, conditions: Sequence[str], keys: Sequence[tuple[str, str]] = (
        ("TR@1 (ITM)", "retrieval/txt_r1"), ("IR@1 (ITM)", "retrieval/img_r1"),
        ("TR@1 (ITC)", "retrieval_itc/txt_r1"), ("IR@1 (ITC)", "retrieval_itc/img_r1")),
        labels: Sequence[str] | None = None, title: str = "R@1 against condition (mean ± sd over seeds)") -> None:
    """One panel per metric key: x = the conditions in order (``labels`` names them), one
    line per variant with sd error bars. ``rows`` are :func:`summarize` rows of
    ``variant@condition`` names. Written as PNG (matplotlib)."""
    plt = _pyplot()
    variants = []
    for r in rows:
        v, _ = split_name(r["variant"])
        if v not in variants:
            variants.append(v)
    by = {split_name(r["variant"]): r for r in rows}
    keys = [kk for kk in keys if any(kk[1] in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.4), squeeze=False)
    xs = list(range(len(conditions)))
    for ax, (label, key) in zip(axes[0], keys):
        for j, v in enumerate(variants):
            pts = [(x, by[(v, c)][key]) for x, c in zip(xs, conditions) if (v, c) in by and key in by[(v, c)]]
            if not pts:
                continue
            off = (j - (len(variants) - 1) / 2) * 0.04  # keep overlapping error bars apart
            ax.errorbar([x + off for x, _ in pts], [m for _, (m, _) in pts], yerr=[s for _, (_, s) in pts],
                        marker="o", ms=4, capsize=3, color=COLORS[j % len(COLORS)], label=v)
        ax.set_xticks(xs)
        ax.set_xticklabels(list(labels or conditions), fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(color="#e1e1e1")
    axes[0][0].set_ylabel("R@1 (%)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def r1_mean(metrics: dict, prefix: str) -> float | None:
    """(TR@1 + IR@1) / 2 of one run under ``prefix`` (``retrieval`` or ``retrieval_itc``)."""
    t, i = metrics.get(f"{prefix}/txt_r1"), metrics.get(f"{prefix}/img_r1")
    return None if t is None or i is None else (t + i) / 2


def differences(runs: Iterable[dict], baseline: str, conditions: Sequence[str | None], variants: Sequence[str],
                prefixes: Sequence[str] = ("retrieval", "retrieval_itc")) -> list[dict]:
    """Per condition and variant, the difference of mean R@1 ((TR@1 + IR@1) / 2) to the
    ``baseline`` variant's: ``{variant, condition, prefix, delta, se, z, n, n_base}`` with
    the standard error of a difference of two independent means, sqrt(s1²/n1 + s2²/n2)
    (NaN when either side has a single run: no spread to estimate). Variants without ITC
    (``itc_off``) get no ITC difference."""
    groups: dict[tuple, list[float]] = {}
    for r in runs:
        v, c = split_name(r["variant"])
        for p in prefixes:
            if p == "retrieval_itc" and r.get("itc_off"):  # an untrained projection, as in summarize
                continue
            val = r1_mean(r["metrics"], p)
            if val is not None:
                groups.setdefault((v, c, p), []).append(val)
    out = []
    for c in conditions:
        for v in variants:
            if v == baseline:
                continue
            for p in prefixes:
                a, b = groups.get((v, c, p)), groups.get((baseline, c, p))
                if not a or not b:
                    continue
                (ma, sa), (mb, sb) = mean_sd(a), mean_sd(b)
                # one run on either side has no spread to estimate: no standard error
                se = math.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b)) if min(len(a), len(b)) > 1 else math.nan
                d = ma - mb
                out.append({"variant": v, "condition": c, "prefix": p, "delta": d, "se": se,
                            "z": d / se if se > 0 else math.nan, "n": len(a), "n_base": len(b)})
    return out


def _fmt_diff(delta: float, se: float) -> str:
    """``+2.0 ± 1.0 (z +2.0)``; without a standard error (one run a side) ``+2.0 (SE n/a)``."""
    if not math.isfinite(se):
        return f"{delta:+.1f} (SE n/a)"
    return f"{delta:+.1f} ± {se:.1f} (z {delta / se if se > 0 else math.nan:+.1f})"


def differences_table(diffs: Sequence[dict], baseline: str, conditions: Sequence[str | None]) -> str:
    """Markdown: one line per (variant, R@1 kind), one column per condition (Δ ± SE, z),
    and, with two or more conditions, the change of Δ from the first to the last condition
    (its SE from both, as independent)."""
    head = ["variant", "R@1"] + [f"Δ vs `{baseline}`" + ("" if c is None else f" at {c}") for c in conditions]
    if len(conditions) > 1:
        head.append(f"Δ at {conditions[-1]} − Δ at {conditions[0]}")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    keyed = {(d["variant"], d["prefix"], d["condition"]): d for d in diffs}
    for v, p in dict.fromkeys((d["variant"], d["prefix"]) for d in diffs):
        kind = "ITM" if p == "retrieval" else "ITC"
        cells = [f"`{v}`", kind]
        for c in conditions:
            d = keyed.get((v, p, c))
            cells.append("n/a" if d is None else _fmt_diff(d["delta"], d["se"]))
        if len(conditions) > 1:
            a, b = keyed.get((v, p, conditions[0])), keyed.get((v, p, conditions[-1]))
            if a is None or b is None:
                cells.append("n/a")
            else:
                cells.append(_fmt_diff(b["delta"] - a["delta"], math.sqrt(a["se"] ** 2 + b["se"] ** 2)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
