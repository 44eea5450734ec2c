"""Official ALBEF checkpoints (github.com/salesforce/ALBEF) <-> this model's state dict.

The official pretraining model (``models/model_pretrain.py``) keeps the whole BERT,
fusion layers and MLM head included, in one ``BertForMaskedLM`` and the momentum
copies as ``*_m`` siblings. Here the text layers, the fusion layers, the heads and the
teacher are separate modules. With ``n`` text-only layers (``fusion_layer`` of the
official BERT config):

===============================================  ==================================================
official key                                     this model
===============================================  ==================================================
``temp``                                         ``temp``
``image_queue``, ``text_queue`` [E, Q]           ``teacher.queue.image_queue``/``text_queue`` [Q, E]
``queue_ptr`` [1]                                ``teacher.queue.ptr`` [1]
``idx_queue`` [1, Q] (retrieval, grounding)      ``teacher.queue.idx_queue`` [Q]
``visual_encoder.X``                             ``vision_encoder.vit.X``
``text_encoder.bert.embeddings.X``               ``text_encoder.bert.embeddings.X``
``text_encoder.bert.encoder.layer.i.X`` (i < n)  ``text_encoder.bert.encoder.layer.i.X``
``text_encoder.bert.encoder.layer.i.X`` (i >= n) ``fusion.layer.{i-n}.X``
``text_encoder.cls.predictions.X``               ``objectives.<mlm>.mlm_head.X``
``vision_proj.X``, ``text_proj.X``               the same
``itm_head.X``                                   ``objectives.<itm>.itm_head.linear.X``
``visual_encoder_m``, ``text_encoder_m``, ...    ``teacher.model.{vision_encoder.vit, text_encoder,
                                                 fusion, mlm_head, vision_proj, text_proj}``
===============================================  ==================================================

Fine-tuned checkpoints (retrieval, grounding, VQA, SNLI-VE, NLVR2) keep the text
encoder as a ``BertModel`` (keys without ``bert.``); they are read the same way, and
the heads this model does not have (VQA answer decoder, classification heads) are
reported as dropped, with the reason.

Every official key ends up in exactly one list of the :class:`LoadReport`: mapped,
dropped (with a reason), unexpected (no counterpart) or shape-mismatched; keys of this
model that nothing filled are listed as missing.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

TASKS = ("pretrain", "retrieval", "vqa", "nlvr", "ve", "grounding")
TO_OFFICIAL_TASKS = ("pretrain", "retrieval", "grounding")

# Official top-level order: own parameter, own buffers, then children as registered.
_OFFICIAL_GROUPS = (
    "temp", "image_queue", "text_queue", "queue_ptr", "idx_queue",
    "visual_encoder.", "text_encoder.", "vision_proj.", "text_proj.", "itm_head.",
    "visual_encoder_m.", "vision_proj_m.", "text_encoder_m.", "text_proj_m.",
)
_MOMENTUM_PREFIXES = ("visual_encoder_m.", "vision_proj_m.", "text_encoder_m.", "text_proj_m.")
_QUEUE_KEYS = ("image_queue", "text_queue", "queue_ptr", "idx_queue")
_OURS_QUEUE = {
    "teacher.queue.image_queue": "image_queue",
    "teacher.queue.text_queue": "text_queue",
    "teacher.queue.ptr": "queue_ptr",
    "teacher.queue.idx_queue": "idx_queue",
}


# ----------------------------------------------------------------------------- report
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


# ----------------------------------------------------------------------------- helpers
def interpolate_pos_embed(pos_embed: torch.Tensor, num_patches_new: int, num_extra_tokens: int = 1) -> torch.Tensor:
    """Resize a ViT position table ``[1, extra + N, D]`` to ``[1, extra + N_new, D]``.

    As the official ``models/vit.py:interpolate_pos_embed``: the leading ``[CLS]``
    (``num_extra_tokens``) rows are kept as they are; the N patch rows, a sqrt(N) x
    sqrt(N) grid, are resized bicubically (``align_corners=False``) to
    sqrt(N_new) x sqrt(N_new). Equal sizes return the input unchanged.
    """
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must be [1, tokens, dim], got {list(pos_embed.shape)}")
    n_old = pos_embed.shape[1] - num_extra_tokens
    if n_old == num_patches_new:
        return pos_embed
    old, new = math.isqrt(n_old), math.isqrt(num_patches_new)
    if old * old != n_old or new * new != num_patches_new or n_old <= 0 or num_patches_new <= 0:
        raise ValueError(f"position embeddings need square patch grids: {n_old} -> {num_patches_new} patches")
    dim = pos_embed.shape[2]
    extra = pos_embed[:, :num_extra_tokens]
    grid = pos_embed[:, num_extra_tokens:].reshape(1, old, old, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(new, new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).flatten(1, 2).to(pos_embed.dtype)
    return torch.cat([extra, grid], dim=1)


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """A module, ``{'model': state_dict, ...}`` or a flat state dict -> a flat state dict (``module.`` stripped)."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a state dict, got {type(obj).__name__}")
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):  # saved from a DDP-wrapped model
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def is_official_state_dict(sd: Mapping[str, Any]) -> bool:
    """True for the official ALBEF layout (``visual_encoder.*``; this model uses ``vision_encoder.*``)."""
    return any(
        k.startswith(("visual_encoder.", "visual_encoder_m.", "text_encoder_m.", "text_decoder.")) for k in sd
    )


def detect_official_task(sd: Mapping[str, Any]) -> str:
    """Which official model wrote ``sd``: pretrain, retrieval (also grounding), vqa, nlvr or ve."""
    if any(k.startswith("text_decoder.") for k in sd):
        return "vqa"
    if any(k.startswith("ta_head.") for k in sd):
        return "nlvr"
    head = sd.get("cls_head.2.weight")
    if head is not None:
        return "ve" if head.shape[0] == 3 else "nlvr"
    if "idx_queue" in sd:
        return "retrieval"
    if any(".cls.predictions." in k for k in sd):
        return "pretrain"
    return "retrieval"


def _canonical(key: str) -> str:
    """Official key of any task -> the pretraining layout (``text_encoder.X`` -> ``text_encoder.bert.X``)."""
    m = re.match(r"^(text_encoder(?:_m)?)\.(embeddings|encoder)\.(.*)$", key)
    return f"{m.group(1)}.bert.{m.group(2)}.{m.group(3)}" if m else key


def _task_key(canon: str, task: str) -> str:
    """Pretraining-layout key -> the layout of ``task`` (fine-tuned models have no ``bert.``)."""
    if task == "pretrain":
        return canon
    m = re.match(r"^(text_encoder(?:_m)?)\.bert\.(.*)$", canon)
    return f"{m.group(1)}.{m.group(2)}" if m else canon


@dataclass
class _Layout:
    n_text: int
    itm_prefix: str | None
    mlm_prefix: str | None
    has_teacher: bool


def _layout(sd: Mapping[str, torch.Tensor]) -> _Layout:
    layers = [int(m.group(1)) for k in sd if (m := re.match(r"^text_encoder\.bert\.encoder\.layer\.(\d+)\.", k))]
    itm = next((m.group(1) for k in sd if (m := re.match(r"^(objectives\.[^.]+\.itm_head\.linear\.)", k))), None)
    mlm = next((m.group(1) for k in sd if (m := re.match(r"^(objectives\.[^.]+\.mlm_head\.)", k))), None)
    return _Layout(max(layers) + 1 if layers else 0, itm, mlm, any(k.startswith("teacher.model.") for k in sd))


def _official_key(k: str, lay: _Layout) -> str | None:
    """Our key -> the official key in the pretraining layout (None: no counterpart)."""
    if k == "temp":
        return "temp"
    if k in _OURS_QUEUE:
        return _OURS_QUEUE[k]
    teacher = k.startswith("teacher.model.")
    rest, sfx = (k[len("teacher.model."):], "_m") if teacher else (k, "")
    simple = (("vision_encoder.vit.", f"visual_encoder{sfx}."), ("vision_proj.", f"vision_proj{sfx}."),
              ("text_proj.", f"text_proj{sfx}."), ("text_encoder.bert.", f"text_encoder{sfx}.bert."))
    for ours, theirs in simple:
        if rest.startswith(ours):
            return theirs + rest[len(ours):]
    m = re.match(r"^fusion\.layer\.(\d+)\.(.*)$", rest)
    if m:
        return f"text_encoder{sfx}.bert.encoder.layer.{lay.n_text + int(m.group(1))}.{m.group(2)}"
    if teacher:
        if rest.startswith("mlm_head."):
            return "text_encoder_m.cls.predictions." + rest[len("mlm_head."):]
        return None
    if lay.mlm_prefix and k.startswith(lay.mlm_prefix):
        return "text_encoder.cls.predictions." + k[len(lay.mlm_prefix):]
    if lay.itm_prefix and k.startswith(lay.itm_prefix):
        return "itm_head." + k[len(lay.itm_prefix):]
    return None


def _online_key(teacher_key: str, lay: _Layout) -> str | None:
    """``teacher.model.X`` -> the online key it is the EMA copy of."""
    rest = teacher_key[len("teacher.model."):]
    if rest.startswith("mlm_head."):
        return (lay.mlm_prefix + rest[len("mlm_head."):]) if lay.mlm_prefix else None
    return rest


def _drop_reason(canon: str, task: str, lay: _Layout, inverse: Mapping[str, list[str]]) -> str | None:
    """Why an official key is deliberately not converted, or None."""
    m = re.match(r"^text_encoder(?:_m)?\.bert\.encoder\.layer\.(\d+)\.", canon)
    if task == "nlvr" and m and int(m.group(1)) >= lay.n_text:
        return ("NLVR2 fusion layer (two images, alternating cross-attention): "
                "this model's fusion attends to one image")
    if canon in inverse:
        return None
    if canon.endswith(".embeddings.position_ids"):
        return "position-id buffer (0..max_len-1), not a weight: transformers rebuilds it"
    if canon.endswith(".cls.predictions.decoder.bias"):
        return "tied: the same tensor as cls.predictions.bias"
    if canon.startswith(("text_decoder.", "text_decoder_m.")):
        return "VQA answer decoder: no VQA head in this model yet"
    if canon.startswith(("cls_head.", "cls_head_m.")):
        name = "NLVR2" if task == "nlvr" else "SNLI-VE" if task == "ve" else "classification"
        return f"{name} classification head: no such head in this model yet"
    if canon.startswith("ta_head."):
        return "NLVR2 text-assignment head: no such head in this model"
    if not lay.has_teacher and (canon.startswith(_MOMENTUM_PREFIXES) or canon in _QUEUE_KEYS):
        return "this model has no momentum teacher or queue (model.teacher=NoTeacher)"
    if canon.endswith(".embeddings.token_type_embeddings.weight"):
        return "this model has no token-type embeddings (the official model adds row 0 to every token)"
    if ".cls.predictions." in canon and lay.mlm_prefix is None:
        return "this model has no MLM objective (model.objectives.mlm=null)"
    if canon.startswith("itm_head.") and lay.itm_prefix is None:
        return "this model has no ITM objective (model.objectives.itm=null)"
    return None


# ----------------------------------------------------------------------------- official -> ours
def convert_official_to_ours(
    official: Any,
    model: nn.Module | Mapping[str, torch.Tensor],
    *,
    task: str | None = None,
    source: str = "",
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Convert an official checkpoint (``{'model': sd}`` or flat) to ``model``'s state-dict layout.

    ``model`` (a module or its state dict) gives the target keys, shapes and dtypes.
    ``task`` is the official model that wrote the checkpoint; None detects it from the
    keys. Position embeddings of another resolution are interpolated. Returns the new
    state dict (target order; only keys that were filled) and the :class:`LoadReport`.
    """
    src = unwrap_state_dict(official)
    task = task or detect_official_task(src)
    if task not in TASKS:
        raise ValueError(f"unknown official task {task!r}; one of {', '.join(TASKS)}")
    template = unwrap_state_dict(model)
    lay = _layout(template)
    inverse: dict[str, list[str]] = {}
    for k in template:
        ok = _official_key(k, lay)
        if ok is not None:
            inverse.setdefault(ok, []).append(k)
    report = LoadReport(source=source, direction="official->ours", task=task)
    out: dict[str, torch.Tensor] = {}
    layers = {int(m.group(1)) for k in src if (m := re.match(r"^text_encoder\.(?:bert\.)?encoder\.layer\.(\d+)\.", k))}
    cross = {int(m.group(1)) for k in src if (m := re.match(r"^text_encoder\.(?:bert\.)?encoder\.layer\.(\d+)\.crossattention\.", k))}
    n_fusion = len({m.group(1) for k in template if (m := re.match(r"^fusion\.layer\.(\d+)\.", k))})
    if layers and cross and task != "nlvr" and (min(cross) != lay.n_text or len(layers) != lay.n_text + n_fusion):
        report.warnings.append(
            f"the checkpoint's BERT has {len(layers)} layers with cross-attention from layer {min(cross)}; this model has "
            f"{lay.n_text} text + {n_fusion} fusion layers (model.text_encoder.num_layers, model.fusion.num_layers)"
        )

    for key, value in src.items():
        canon = _canonical(key)
        reason = _drop_reason(canon, task, lay, inverse)
        if reason is not None:
            report.dropped.append((key, reason))
            continue
        targets = inverse.get(canon)
        if not targets:
            report.unexpected.append(key)
            continue
        for t in targets:
            want = template[t]
            v = value
            if canon in ("image_queue", "text_queue") and v.dim() == 2:
                v = v.t().contiguous()  # official [E, Q] -> ours [Q, E]
            elif canon == "idx_queue":
                v = v.reshape(-1)  # official [1, Q] -> ours [Q]
            elif canon.endswith(".pos_embed") and v.dim() == 3 and v.shape[1] != want.shape[1] and v.shape[2] == want.shape[2]:
                v = interpolate_pos_embed(v, want.shape[1] - 1)
                report.interpolated.append((key, tuple(value.shape), tuple(v.shape)))
            if tuple(v.shape) != tuple(want.shape):
                report.mismatched.append((key, t, tuple(value.shape), tuple(want.shape)))
                continue
            out[t] = v.to(want.dtype)
            report.mapped.append((key, t))

    # tied pairs must agree (loading writes the same Parameter twice)
    for a, b in (("text_encoder.bert.embeddings.word_embeddings.weight", "text_encoder.cls.predictions.decoder.weight"),
                 ("text_encoder.cls.predictions.bias", "text_encoder.cls.predictions.decoder.bias")):
        for sfx in ("", "_m"):
            ka, kb = a.replace("text_encoder.", f"text_encoder{sfx}.", 1), b.replace("text_encoder.", f"text_encoder{sfx}.", 1)
            if ka in src and kb in src and not src[ka].is_meta and not torch.equal(src[ka], src[kb]):
                report.warnings.append(f"{ka} and {kb} differ although the official model ties them; {ka} wins")
    for p in ("", "teacher.model."):
        # the MLM decoder *is* the word-embedding matrix: give both keys the word embeddings
        w = f"{p}text_encoder.bert.embeddings.word_embeddings.weight"
        if w not in out:
            continue
        for k in template:
            if k.endswith("mlm_head.decoder.weight") and k.startswith("teacher.model.") == bool(p):
                if k not in out:
                    report.filled.append((k, "tied to the word embeddings"))
                out[k] = out[w]

    if "teacher.queue.ptr" in out and not ("teacher.queue.image_queue" in out and "teacher.queue.text_queue" in out):
        # a pointer (and ids) into queues that were not converted would point into our own, unrelated queue
        for k in ("teacher.queue.ptr", "teacher.queue.idx_queue"):
            if k in out:
                del out[k]
                for i, (sk, tk) in enumerate(report.mapped):
                    if tk == k:
                        report.mapped.pop(i)
                        report.dropped.append((sk, "its feature queues were not converted (see the shape mismatches)"))
                        break
    has_m = any(k.startswith(_MOMENTUM_PREFIXES) for k in src)
    for k, want in template.items():
        if k in out:
            continue
        if k == "teacher.queue.idx_queue" and "teacher.queue.image_queue" in out:
            out[k] = torch.full_like(want, -100)
            report.filled.append((k, "-100 (no image id): the official pretraining queue keeps no ids"))
        elif k.startswith("teacher.model.") and not has_m:
            online = _online_key(k, lay)
            if online in out and tuple(out[online].shape) == tuple(want.shape):
                out[k] = out[online].clone()
                report.filled.append((k, "no momentum copy in the checkpoint: copied from the online weights "
                                         "(as the official copy_params() at initialisation)"))
    conflicting = {t for _, t, _, _ in report.mismatched}
    report.missing = [k for k in template if k not in out and k not in conflicting]
    return {k: out[k] for k in template if k in out}, report


# ----------------------------------------------------------------------------- ours -> official
def _official_sort_key(key: str, index: int) -> tuple:
    group = next((i for i, g in enumerate(_OFFICIAL_GROUPS) if key == g or (g.endswith(".") and key.startswith(g))), len(_OFFICIAL_GROUPS))
    section, layer, sub = 0, -1, index
    m = re.match(r"^text_encoder(?:_m)?\.(?:bert\.)?(embeddings|encoder\.layer\.(\d+)|cls)\.", key)
    if m:
        if m.group(1) == "embeddings":
            section, sub = 0, (-1 if key.endswith("position_ids") else index)
        elif m.group(1) == "cls":
            section = 2
        else:
            section, layer = 1, int(m.group(2))
    return group, section, layer, sub


def convert_ours_to_official(
    ours: Any, *, task: str = "pretrain", source: str = ""
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """This model's state dict (or module / ``{'model': sd}``) -> the official layout of ``task``.

    ``pretrain`` writes the ``model_pretrain.ALBEF`` layout (loadable by the official
    ``Pretrain.py``); ``retrieval``/``grounding`` the ``model_retrieval.ALBEF`` layout (no
    MLM head, ``idx_queue``). The official buffers this model does not keep are
    rebuilt: ``position_ids`` and the tied ``cls.predictions.decoder.bias``.
    """
    if task not in TO_OFFICIAL_TASKS:
        head = {"vqa": "a VQA answer decoder", "nlvr": "the NLVR2 18-layer two-image encoder and head",
                "ve": "an SNLI-VE classification head"}.get(task, "its task head")
        raise ValueError(f"cannot write an official {task!r} checkpoint: it needs {head}, which this model does not have "
                         f"(supported: {', '.join(TO_OFFICIAL_TASKS)})")
    sd = unwrap_state_dict(ours)
    lay = _layout(sd)
    report = LoadReport(source=source, direction="ours->official", task=task)
    out: dict[str, torch.Tensor] = {}
    order: dict[str, int] = {}

    def put(key: str, value: torch.Tensor) -> None:
        order.setdefault(key, len(order))
        out[key] = value

    for k, v in sd.items():
        canon = _official_key(k, lay)
        if canon is None:
            report.unexpected.append(k)
            continue
        if task != "pretrain" and ".cls.predictions." in canon:
            report.dropped.append((k, "the official retrieval/grounding model has no MLM head"))
            continue
        if canon == "idx_queue" and task == "pretrain":
            report.dropped.append((k, "the official pretraining model keeps no image-id queue"))
            continue
        if canon in ("image_queue", "text_queue"):
            v = v.t().contiguous()  # ours [Q, E] -> official [E, Q]
        elif canon == "idx_queue":
            v = v.reshape(1, -1)
        put(_task_key(canon, task), v)
        report.mapped.append((k, _task_key(canon, task)))

    if not lay.has_teacher:  # the official model always has momentum copies: start them as copy_params() does
        for key in list(out):
            for online, momentum in (("visual_encoder.", "visual_encoder_m."), ("vision_proj.", "vision_proj_m."),
                                     ("text_encoder.", "text_encoder_m."), ("text_proj.", "text_proj_m.")):
                if key.startswith(online):
                    mk = momentum + key[len(online):]
                    put(mk, out[key].clone())
                    report.filled.append((mk, "this model has no momentum teacher: copied from the online weights "
                                              "(as the official copy_params())"))
        report.missing.extend(k for k in ("image_queue", "text_queue", "queue_ptr") if k not in out)
    for sfx in ("", "_m"):
        base = _task_key(f"text_encoder{sfx}.bert.embeddings.", task)
        pos = out.get(base + "position_embeddings.weight")
        if pos is not None:
            put(base + "position_ids", torch.arange(pos.shape[0], dtype=torch.long).unsqueeze(0))
            report.filled.append((base + "position_ids", "rebuilt buffer 0..max_len-1 (persistent in the official BERT)"))
        bias = out.get(f"text_encoder{sfx}.cls.predictions.bias")
        if bias is not None:
            put(f"text_encoder{sfx}.cls.predictions.decoder.bias", bias)
            report.filled.append((f"text_encoder{sfx}.cls.predictions.decoder.bias", "tied: the same tensor as cls.predictions.bias"))
    keys = sorted(out, key=lambda k: _official_sort_key(k, order[k]))
    return {k: out[k] for k in keys}, report
