"""Box IoU as the official referring-expression evaluation computes it (REFER's
``computeIoU``): inclusive pixel bounds and a strict overlap test."""
from __future__ import annotations

from typing import Sequence

import torch


def box_iou_inclusive(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes a [..., 4] and b [..., 4] (x, y, w, h) as REFER's ``computeIoU`` (the official
    evaluation): inclusive pixel bounds (x2 = x + w - 1) and an intersection only where
    x1 < x2 and y1 < y2 strictly (boxes sharing a single pixel row or column do not overlap).
    Returns [...] (the broadcast batch shape)."""
    ix0, iy0 = torch.maximum(a[..., 0], b[..., 0]), torch.maximum(a[..., 1], b[..., 1])
    ix1 = torch.minimum(a[..., 0] + a[..., 2] - 1, b[..., 0] + b[..., 2] - 1)
    iy1 = torch.minimum(a[..., 1] + a[..., 3] - 1, b[..., 1] + b[..., 3] - 1)
    overlap = (ix0 < ix1) & (iy0 < iy1)
    inter = torch.where(overlap, (ix1 - ix0 + 1) * (iy1 - iy0 + 1), torch.zeros_like(ix0))
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return inter / union.clamp(min=1e-12)


def box_iou_official(a: Sequence[float], b: Sequence[float]) -> float:
    """:func:`box_iou_inclusive` of two ``[x, y, w, h]`` boxes given as plain lists (float64)."""
    return float(box_iou_inclusive(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)))
