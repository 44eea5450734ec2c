"""Fit a state dict in this codebase's key layout to a model of another task or resolution.

Starting a task from a pretraining checkpoint is one pass over the model's keys
(:func:`adapt_state_dict`); every key ends up in the :class:`LoadReport`:

* same key, same shape: mapped;
* ``pos_embed`` of another resolution: interpolated (bicubic on the patch grid, [CLS]
  kept, the official ``interpolate_pos_embed``);
* a component that declares how it is filled from another layout (``weight_map``, e.g.
  the two-image fusion of NLVR2 duplicating each pretrained fusion layer): mapped from the
  declared source key;
* a head the checkpoint does not have (a task head on a pretraining checkpoint): kept
  as freshly initialised, as the official fine-tuning scripts;
* an EMA copy the checkpoint does not have: copied from the loaded online weights (the
  official ``copy_params()``, here after loading, which also fixes the official NLVR2
  order bug);
* a feature queue of another size (or none): a fresh queue; image ids of the queue
  (``idx_queue``) are reset when ``reset_queue_ids`` (they name the checkpoint's data);
* checkpoint keys of parts this model does not have (the MLM head of a pretraining
  checkpoint in a retrieval model, projections in a classifier): dropped, with the
  reason; anything else: unexpected.

Older checkpoints of this codebase (heads inside their objectives) are read through
:func:`upgrade_legacy_keys`.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import nn

from albef.checkpoint.pos_embed import interpolate_pos_embed
from albef.checkpoint.report import LoadReport

_QUEUE = ("teacher.queue.image_queue", "teacher.queue.text_queue", "teacher.queue.idx_queue", "teacher.queue.ptr")


def upgrade_legacy_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints written before the head layer (``objectives.<k>.itm_head.linear.*``,
    ``objectives.<k>.mlm_head.*``, ``teacher.model.mlm_head.*``) -> ``heads.itm.*``,
    ``heads.mlm.*``, ``teacher.model.heads.mlm.*``. Other keys are unchanged."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        k2 = re.sub(r"^objectives\.[^.]+\.itm_head\.", "heads.itm.", k)
        k2 = re.sub(r"^objectives\.[^.]+\.mlm_head\.", "heads.mlm.", k2)
        k2 = re.sub(r"^teacher\.model\.mlm_head\.", "teacher.model.heads.mlm.", k2)
        out[k2] = v
    return out


def is_legacy_state_dict(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(re.match(r"^objectives\.[^.]+\.(itm|mlm)_head\.", k) or k.startswith("teacher.model.mlm_head.") for k in sd)


def _declared_maps(model: nn.Module, source: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """{target key: source key} from every submodule that declares ``weight_map``."""
    out: dict[str, str] = {}
    for name, mod in model.named_modules():
        fn = getattr(mod, "weight_map", None)
        if not callable(fn):
            continue
        prefix = f"{name}." if name else ""
        available = [k[len(prefix):] for k in source if k.startswith(prefix)]
        for own, src in fn(available).items():
            out[prefix + own] = prefix + src
    return out


def _tie_groups(model: nn.Module) -> list[list[str]]:
    """Keys that name the same tensor (tied weights, shared cross-attention keys/values), in
    state-dict order; by identity, so also on the meta device."""
    groups: dict[int, list[str]] = {}
    for k, v in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        groups.setdefault(id(v), []).append(k)
    return [g for g in groups.values() if len(g) > 1]


def _head_key(key: str) -> str | None:
    m = re.match(r"^(?:teacher\.model\.)?heads\.([^.]+)\.", key)
    return m.group(1) if m else None


def adapt_state_dict(
    source: Mapping[str, torch.Tensor],
    model: nn.Module,
    *,
    report: LoadReport | None = None,
    reset_queue_ids: bool = False,
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Fill ``model``'s state-dict keys from ``source`` (our layout); see the module docstring.

    Returns (state dict to load, every key filled; report). Keys the report lists as
    missing are absent from the returned dict (they keep the model's current values when
    loaded with ``strict=False``).
    """
    report = report or LoadReport(direction="checkpoint->model", task="model")
    source = upgrade_legacy_keys(source) if is_legacy_state_dict(source) else dict(source)
    template = model.state_dict()
    declared = _declared_maps(model, source)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    src_heads = {h for k in source if (h := _head_key(k)) is not None}

    for t, want in template.items():
        s = declared.get(t, t)
        if s not in source:
            continue
        v = source[s]
        if t in _QUEUE:
            if tuple(v.shape) != tuple(want.shape):
                used.add(s)
                report.dropped.append((s, f"feature queue of another size {list(v.shape)} (this model: {list(want.shape)}): "
                                          "this run starts from a fresh queue"))
                continue
        elif tuple(v.shape) != tuple(want.shape) and t.endswith("pos_embed") and v.dim() == 3 and v.shape[2] == want.shape[2]:
            v = interpolate_pos_embed(v, want.shape[1] - 1)
            report.interpolated.append((s, tuple(source[s].shape), tuple(v.shape)))
        if tuple(v.shape) != tuple(want.shape):
            report.mismatched.append((s, t, tuple(v.shape), tuple(want.shape)))
            used.add(s)
            continue
        out[t] = v.to(want.dtype)
        used.add(s)
        report.mapped.append((s, t))

    # queues: all of them from the checkpoint, or a fresh set (a pointer or ids into queues
    # that were not loaded would mean nothing)
    queue = [k for k in _QUEUE if k in template]
    if queue:
        feats_loaded = all(k in out for k in _QUEUE[:2])
        for k in queue:
            if not feats_loaded:
                if out.pop(k, None) is not None:  # a pointer (ids) into queues that were not loaded
                    i = next(i for i, (_, t) in enumerate(report.mapped) if t == k)
                    report.dropped.append((report.mapped.pop(i)[0], "its feature queues were not loaded: it would point into a fresh queue"))
                report.filled.append((k, "fresh feature queue (random unit vectors, ids -100), as at initialisation"))
                out[k] = template[k]
            elif k not in out:
                out[k] = torch.full_like(template[k], -100) if k.endswith("idx_queue") else template[k]
                report.filled.append((k, "-100 (no image id): the checkpoint's queue keeps no ids" if k.endswith("idx_queue")
                                      else "fresh (not in the checkpoint)"))
        if reset_queue_ids and feats_loaded and "teacher.queue.idx_queue" in source and "teacher.queue.idx_queue" in out:
            out["teacher.queue.idx_queue"] = torch.full_like(template["teacher.queue.idx_queue"], -100)
            report.filled.append(("teacher.queue.idx_queue", "image ids reset to -100: the checkpoint's ids name its own data set"))

    # task heads the checkpoint lacks: their fresh initialisation stays
    for t, want in template.items():
        h = _head_key(t)
        if t not in out and h is not None and h not in src_heads and not t.startswith("teacher."):
            out[t] = want
            report.filled.append((t, f"head '{h}' is not in the checkpoint: initialised fresh (task layer, as the official fine-tuning)"))
    # EMA copies the checkpoint lacks: the loaded online weights
    for t in template:
        if t not in out and t.startswith("teacher.model."):
            online = t[len("teacher.model."):]
            if online in out:
                out[t] = out[online].clone()
                report.filled.append((t, "no momentum copy in the checkpoint: copied from the loaded online weights (copy_params after loading)"))

    # tied keys must agree: the value of a mapped member wins
    for group in _tie_groups(model):
        mapped = [k for k in group if k in out and k not in {f for f, _ in report.filled}]
        src = mapped[0] if mapped else next((k for k in group if k in out), None)
        if src is None:
            continue
        for k in group:
            if k != src:
                if k not in out:
                    report.filled.append((k, f"tied to {src}"))
                out[k] = out[src]

    has_proj = any(k.startswith("vision_proj.") for k in template)
    has_teacher = any(k.startswith("teacher.model.") for k in template)
    has_queue = "teacher.queue.image_queue" in template
    for s in source:
        if s in used:
            continue
        h = _head_key(s)
        if h is not None and not any(_head_key(t) == h for t in template):
            report.dropped.append((s, f"head '{h}' is not part of this model (no objective of this task uses it)"))
        elif s.startswith(("vision_proj.", "text_proj.")) or s == "temp":
            if not has_proj:
                report.dropped.append((s, "this model has no projections or temperature (model.embed_dim: null)"))
            else:
                report.unexpected.append(s)
        elif s.startswith("teacher.model.") and not has_teacher:
            report.dropped.append((s, "this model has no momentum teacher (model.teacher: NoTeacher)"))
        elif s.startswith("teacher.model.") and s[len("teacher.model."):].startswith(("vision_proj.", "text_proj.")) and not has_proj:
            report.dropped.append((s, "this model has no projections (model.embed_dim: null)"))
        elif s.startswith("teacher.queue.") and not has_queue:
            report.dropped.append((s, "this model has no momentum teacher or queue (model.teacher: NoTeacher)" if not has_teacher
                                   else "this model keeps no feature queue (model.teacher.queue_size: 0)"))
        elif s.endswith("position_ids"):
            report.dropped.append((s, "position-id buffer, not a weight"))
        else:
            report.unexpected.append(s)
    conflicting = {t for _, t, _, _ in report.mismatched}
    report.missing = [k for k in template if k not in out and k not in conflicting]
    return {k: out[k] for k in template if k in out}, report
