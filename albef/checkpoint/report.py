"""The report of a checkpoint conversion: what happened to every key.

Both directions (:mod:`albef.checkpoint.official`) and the fitting of a state dict to a
model (:func:`albef.checkpoint.adapt.adapt_state_dict`) fill one :class:`LoadReport`;
:func:`format_report` prints it for people, :meth:`LoadReport.to_dict` stores it in a
converted file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadReport:
    """What a conversion did with every key.

    mapped: (source key, target key); dropped: (source key, reason); filled: (target key,
    how it was filled without a source key of its own); missing: target keys nothing
    filled (keep the model's current values; shape conflicts are listed under mismatched only); unexpected: source keys with no
    counterpart; mismatched: (source key, target key, source shape, target shape), not
    converted; interpolated: (source key, source shape, target shape); warnings: free text.
    """

    source: str = ""
    direction: str = "official->ours"
    task: str = "pretrain"
    mapped: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    filled: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    interpolated: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every target key filled, every source key mapped or deliberately dropped, no shape conflict."""
        return not (self.missing or self.unexpected or self.mismatched)

    def to_dict(self) -> dict[str, Any]:
        """Plain containers (lists, str, int): JSON-able and readable by ``torch.load(weights_only=True)``."""
        return {
            "source": self.source, "direction": self.direction, "task": self.task, "complete": self.complete,
            "mapped": [list(x) for x in self.mapped],
            "dropped": [list(x) for x in self.dropped],
            "filled": [list(x) for x in self.filled],
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "mismatched": [[a, b, list(sa), list(sb)] for a, b, sa, sb in self.mismatched],
            "interpolated": [[a, list(sa), list(sb)] for a, sa, sb in self.interpolated],
            "warnings": list(self.warnings),
        }


def _key_list(keys: list[str], max_items: int) -> str:
    shown = ", ".join(keys[:max_items])
    return shown + (f", ... (+{len(keys) - max_items} more)" if len(keys) > max_items else "")


def format_report(report: LoadReport, max_items: int = 12) -> str:
    """A readable multi-line summary of ``report`` (long key lists are shortened)."""
    src, dst = report.direction.split("->") if "->" in report.direction else ("source", "target")
    lines = [
        f"Checkpoint conversion {src} -> {dst} ({report.task} layout){': ' + report.source if report.source else ''}",
        f"  mapped {len(report.mapped)}, dropped {len(report.dropped)}, filled {len(report.filled)}, "
        f"missing {len(report.missing)}, unexpected {len(report.unexpected)}, shape mismatches {len(report.mismatched)}, "
        f"interpolated {len(report.interpolated)} -> {'complete' if report.complete else 'INCOMPLETE'}",
    ]

    def grouped(title: str, pairs: list[tuple[str, str]]) -> None:
        if not pairs:
            return
        lines.append(f"  {title}:")
        by_reason: dict[str, list[str]] = {}
        for key, reason in pairs:
            by_reason.setdefault(reason, []).append(key)
        for reason, keys in by_reason.items():
            lines.append(f"    - {reason} ({len(keys)}): {_key_list(keys, max_items)}")

    grouped("dropped on purpose", report.dropped)
    grouped("filled (no key of their own in the source)", report.filled)
    for sk, shape_a, shape_b in report.interpolated:
        lines.append(f"  interpolated {sk}: {list(shape_a)} -> {list(shape_b)} (bicubic on the patch grid, [CLS] kept)")
    if report.missing:
        lines.append(f"  missing ({dst} keys nothing filled; they keep their current values) ({len(report.missing)}): "
                     + _key_list(report.missing, max_items))
    if report.unexpected:
        lines.append(f"  unexpected ({src} keys with no counterpart) ({len(report.unexpected)}): "
                     + _key_list(report.unexpected, max_items))
    if report.mismatched:
        lines.append(f"  shape mismatch, not converted ({len(report.mismatched)}):")
        for sk, tk, sa, sb in report.mismatched[:max_items]:
            lines.append(f"    - {sk} -> {tk}: {src} {list(sa)} vs {dst} {list(sb)}")
        if len(report.mismatched) > max_items:
            lines.append(f"    ... (+{len(report.mismatched) - max_items} more)")
    for w in report.warnings:
        lines.append(f"  warning: {w}")
    return "\n".join(lines)

