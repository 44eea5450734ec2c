"""Summaries of repeated runs: mean and spread per variant, a Markdown table, a PNG bar chart.

Used by ``tools/run_ablation.py``. A *run* is a dict with ``variant``, ``seed``,
``wall_s`` and ``metrics`` (flat ``prefix/metric`` -> value, as in ``metrics.json``).
The chart is drawn with Pillow (already a dependency) rather than matplotlib.
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


def bar_chart_png(rows: Sequence[dict], path: str, keys: Sequence[tuple[str, str]] = (("TR@1", "retrieval/txt_r1"), ("IR@1", "retrieval/img_r1")), title: str = "Retrieval R@1 (mean ± sd over seeds)") -> None:
    """Grouped bars (one group per variant, one bar per key) with sd whiskers, written as PNG."""
    from PIL import Image, ImageDraw, ImageFont

    colors = [(66, 114, 196), (237, 125, 49), (112, 173, 71), (165, 165, 165)]
    n, k = len(rows), len(keys)
    group_w, bar_w, left, top, bottom, right = 40 + 34 * k, 30, 60, 50, 70, 30
    width, height = left + right + max(n, 1) * group_w, 400
    plot_h = height - top - bottom
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((left, 15), title, fill="black", font=font)
    vmax = 100.0
    y = lambda v: top + plot_h * (1 - max(0.0, min(v, vmax)) / vmax)  # noqa: E731
    for t in range(0, 101, 20):  # y grid and labels
        d.line([(left, y(t)), (width - right, y(t))], fill=(225, 225, 225))
        d.text((left - 30, y(t) - 6), f"{t:>3}", fill="black", font=font)
    d.line([(left, top), (left, top + plot_h)], fill="black")
    d.line([(left, top + plot_h), (width - right, top + plot_h)], fill="black")
    for i, row in enumerate(rows):
        x0 = left + i * group_w + 20
        for j, (label, key) in enumerate(keys):
            ms = row.get(key)
            if ms is None:
                continue
            m, s = ms
            xa = x0 + j * 34
            d.rectangle([xa, y(m), xa + bar_w, top + plot_h], fill=colors[j % len(colors)])
            xc = xa + bar_w / 2
            d.line([(xc, y(m - s)), (xc, y(m + s))], fill="black", width=2)
            d.line([(xc - 5, y(m + s)), (xc + 5, y(m + s))], fill="black")
            d.line([(xc - 5, y(m - s)), (xc + 5, y(m - s))], fill="black")
        # variant name, wrapped on underscores so long names fit under the group
        words, lines, cur = row["variant"].split("_"), [], ""
        for w in words:
            cand = f"{cur}_{w}" if cur else w
            if len(cand) * 6 > group_w - 4 and cur:
                lines.append(cur)
                cur = w
            else:
                cur = cand
        lines.append(cur)
        for li, text in enumerate(lines):
            d.text((x0, top + plot_h + 8 + 12 * li), text, fill="black", font=font)
    for j, (label, _) in enumerate(keys):  # legend
        lx = width - right - 70 * (k - j)
        d.rectangle([lx, 18, lx + 12, 30], fill=colors[j % len(colors)])
        d.text((lx + 16, 18), label, fill="black", font=font)
    img.save(path)
