"""Official ALBEF checkpoints (github.com/salesforce/ALBEF) <-> this model's state dict.

The official models keep the whole BERT (text layers, fusion layers and, when
pretraining, the MLM head) in one module and the momentum copies as ``*_m`` siblings.
Here the text layers, the fusion layers, the heads and the teacher are separate
modules. With ``n`` text-only layers (``fusion_layer`` of the official BERT config, 6):

=================================================  ==================================================
official key                                       this model
=================================================  ==================================================
``temp``                                           ``temp``
``image_queue``, ``text_queue`` [E, Q]             ``teacher.queue.image_queue``/``text_queue`` [Q, E]
``queue_ptr`` [1]                                  ``teacher.queue.ptr`` [1]
``idx_queue`` [1, Q] (retrieval, grounding)        ``teacher.queue.idx_queue`` [Q]
``visual_encoder.X``                               ``vision_encoder.vit.X``
``text_encoder[.bert].embeddings.X``               ``text_encoder.bert.embeddings.X``
``text_encoder[.bert].encoder.layer.i.X`` (i < n)  ``text_encoder.bert.encoder.layer.i.X``
``text_encoder[.bert].encoder.layer.i.X`` (i >= n) ``fusion.layer.{i-n}.X``
``text_encoder.cls.predictions.X`` (pretraining)   ``heads.mlm.X``
``itm_head.X`` (pretraining, retrieval)            ``heads.itm.linear.X``
``cls_head.X`` (SNLI-VE 3-way, NLVR2 2-way MLP)    ``heads.cls.X``
``ta_head.X`` (NLVR2 text-assignment pretraining)  ``heads.ta.X``
``vision_proj.X``, ``text_proj.X``                 the same
``<part>_m.X`` (momentum copies)                   ``teacher.model.<our path of part.X>``
=================================================  ==================================================

The official layouts (``TASKS``): ``pretrain`` (``model_pretrain.ALBEF``: ALBEF.pth,
ALBEF_4M.pth), ``retrieval``/``grounding`` (``model_retrieval.ALBEF``: mscoco.pth,
flickr30k.pth, refcoco.pth; ``BertModel`` keys without ``bert.``, no MLM head,
``idx_queue``), ``ve`` (``model_ve.ALBEF``: snli_ve.pth), ``nlvr`` (``model_nlvr.ALBEF``:
nlvr.pth; an 18-layer BERT whose fusion layers alternate between the two images and
share the cross-attention key/value of layers 2k, 2k+1), ``nlvr_ta``
(``model_pretrain_nlvr.ALBEF``: pretrain_model_nlvr.pth, the text-assignment step; no
momentum copies) and ``vqa`` (``model_vqa.ALBEF``: vqa.pth; its answer decoder
``text_decoder(_m).{bert.*, cls.predictions.*}`` becomes ``heads.answer.*`` /
``teacher.model.heads.answer.*``, an :class:`~albef.modeling.heads.answer_decoder.AnswerDecoder`).

Official -> ours is one path for every layout: :func:`official_to_ours_keys` renames the
keys (keeping the file's own structure), then
:func:`albef.checkpoint.adapt.adapt_state_dict` fits them to the model (position
embeddings interpolated, pretrained fusion layers duplicated for a two-image fusion,
heads the file lacks initialised fresh, missing EMA copies copied from the loaded
weights, parts the model lacks dropped with the reason). Every official key ends up in
exactly one list of the :class:`LoadReport` -- mapped, dropped (with a reason),
unexpected or shape-mismatched -- and keys of the model nothing filled are missing.
:func:`convert_ours_to_official` writes any of the layouts but ``vqa`` back.

Around it: :mod:`~albef.checkpoint.detect` (the state dict inside a file, which layout it
is), :mod:`~albef.checkpoint.report` (:class:`LoadReport`, :func:`format_report`) and
:mod:`~albef.checkpoint.pos_embed` (resampling a position table to another resolution).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from albef.checkpoint.adapt import adapt_state_dict, is_legacy_state_dict, upgrade_legacy_keys
from albef.checkpoint.detect import detect_official_task, detect_our_task, unwrap_state_dict
from albef.checkpoint.report import LoadReport

TASKS = ("pretrain", "retrieval", "grounding", "ve", "nlvr", "nlvr_ta", "vqa")
TO_OFFICIAL_TASKS = ("pretrain", "retrieval", "grounding", "ve", "nlvr", "nlvr_ta")


# ----------------------------------------------------------------------------- key layouts
def _canonical(key: str) -> str:
    """Official key of any task -> the pretraining layout (``text_encoder.X`` -> ``text_encoder.bert.X``)."""
    m = re.match(r"^(text_encoder(?:_m)?)\.(embeddings|encoder)\.(.*)$", key)
    return f"{m.group(1)}.bert.{m.group(2)}.{m.group(3)}" if m else key


def _task_key(canon: str, task: str) -> str:
    """Pretraining-layout key -> the layout of ``task`` (only pretraining keeps ``bert.``)."""
    if task == "pretrain":
        return canon
    m = re.match(r"^(text_encoder(?:_m)?)\.bert\.(.*)$", canon)
    return f"{m.group(1)}.{m.group(2)}" if m else canon


# ----------------------------------------------------------------------------- official keys -> ours
_HEAD_PREFIXES = (  # official head prefix -> ours (the conventional head keys of model.heads)
    ("text_encoder.cls.predictions.", "heads.mlm."),
    ("itm_head.", "heads.itm.linear."),
    ("cls_head.", "heads.cls."),
    ("ta_head.", "heads.ta."),
    ("text_decoder.bert.", "heads.answer."),  # the VQA answer decoder: embeddings, encoder.layer.i
    ("text_decoder.cls.predictions.", "heads.answer.lm."),
)
_MOMENTUM_PARTS = ("visual_encoder", "vision_proj", "text_proj", "text_encoder", "cls_head", "itm_head", "ta_head", "text_decoder")


def _drop_reason(canon: str) -> str | None:
    """Why an official key (pretraining layout) is deliberately not converted, or None."""
    if canon.endswith(".embeddings.position_ids"):
        return "position-id buffer (0..max_len-1), not a weight: transformers rebuilds it"
    if canon.endswith(".cls.predictions.decoder.weight"):
        return "tied: the same tensor as the word embeddings"
    if canon.endswith(".cls.predictions.decoder.bias"):
        return "tied: the same tensor as cls.predictions.bias"
    return None


def _official_to_ours_key(canon: str, n_text: int) -> str | None:
    """Official key (pretraining layout, no drop reason) -> our key; None: unknown."""
    teacher = False
    m = re.match(rf"^({'|'.join(_MOMENTUM_PARTS)})_m\.(.*)$", canon)
    if m:
        teacher, canon = True, f"{m.group(1)}.{m.group(2)}"
    new = None
    if canon in ("temp", "image_queue", "text_queue", "idx_queue"):
        new = canon if canon == "temp" else f"teacher.queue.{canon}"
    elif canon == "queue_ptr":
        new = "teacher.queue.ptr"
    elif canon.startswith("visual_encoder."):
        new = "vision_encoder.vit." + canon[len("visual_encoder."):]
    elif canon.startswith(("vision_proj.", "text_proj.", "text_encoder.bert.embeddings.")):
        new = canon
    elif (lm := re.match(r"^text_encoder\.bert\.encoder\.layer\.(\d+)\.(.*)$", canon)):
        i = int(lm.group(1))
        new = f"text_encoder.bert.encoder.layer.{i}.{lm.group(2)}" if i < n_text else f"fusion.layer.{i - n_text}.{lm.group(2)}"
    else:
        for theirs, ours in _HEAD_PREFIXES:
            if canon.startswith(theirs):
                new = ours + canon[len(theirs):]
                break
    if new is None or (teacher and new.startswith("teacher.")):
        return None
    return ("teacher.model." + new) if teacher else new


def _first_cross_layer(sd: Mapping[str, Any]) -> int | None:
    cross = [int(m.group(2)) for k in sd if (m := re.match(r"^text_encoder(_m)?\.(?:bert\.)?encoder\.layer\.(\d+)\.crossattention\.", k))]
    return min(cross) if cross else None


def _rename_official(sd: Mapping[str, torch.Tensor], n_text: int | None):
    """(ours, dropped, unexpected, origin {our key: official key})."""
    if n_text is None:
        n_text = _first_cross_layer(sd)
        n_text = 6 if n_text is None else n_text
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    dropped: list[tuple[str, str]] = []
    unexpected: list[str] = []
    for key, v in sd.items():
        canon = _canonical(key)
        reason = _drop_reason(canon)
        if reason is not None:
            dropped.append((key, reason))
            continue
        new = _official_to_ours_key(canon, n_text)
        if new is None:
            unexpected.append(key)
            continue
        if new in ("teacher.queue.image_queue", "teacher.queue.text_queue") and v.dim() == 2:
            v = v.t().contiguous()  # official [E, Q] -> ours [Q, E]
        elif new == "teacher.queue.idx_queue":
            v = v.reshape(-1)  # official [1, Q] -> ours [Q]
        out[new] = v
        origin[new] = key
    return out, dropped, unexpected, origin


def official_to_ours_keys(
    official: Mapping[str, torch.Tensor], n_text: int | None = None
) -> tuple[dict[str, torch.Tensor], list[tuple[str, str]], list[str]]:
    """Rename an official state dict (any task layout) into this codebase's key layout,
    keeping the checkpoint's own structure (its number of fusion layers, its heads).

    ``n_text``: how many BERT layers are text-only; default: the first layer with
    cross-attention (6 in every official model). Layers from ``n_text`` on become
    ``fusion.layer.{i - n_text}``. Heads go to their conventional keys (``heads.mlm``,
    ``heads.itm``, ``heads.cls``, ``heads.ta``), ``*_m`` copies under ``teacher.model.``,
    queues to ``teacher.queue.*`` (transposed to [Q, E]).

    Returns (state dict, dropped keys with the reason, unexpected keys): dropped are the
    keys that are deliberately not converted (buffers, tied duplicates),
    unexpected the keys of no known official layout.
    """
    out, dropped, unexpected, _ = _rename_official(unwrap_state_dict(official), n_text)
    return out, dropped, unexpected


def _model_ties(model: nn.Module) -> list[list[str]]:
    """Keys of ``model`` that name one tensor (in state-dict order); works on the meta device."""
    groups: dict[int, list[str]] = {}
    for name, t in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(t), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


_OFFICIAL_HEADS = {
    "cls_head": {"ve": "SNLI-VE classification head", "nlvr": "NLVR2 classification head"},
    "ta_head": {"": "NLVR2 text-assignment head"},
    "itm_head": {"": "ITM head"},
    "text_encoder.cls.predictions": {"": "MLM head"},
    "text_decoder": {"": "VQA answer decoder"},
}


def _official_head_name(key: str, task: str) -> str | None:
    """``'SNLI-VE classification head (cls_head_m)'`` for an official head key, else None."""
    m = re.match(r"^(cls_head|ta_head|itm_head|text_encoder|text_decoder)(_m)?\.", key)
    if m is None:
        return None
    canon = re.sub(r"^(\w+)_m\.", r"\1.", _canonical(key)) if m.group(2) else _canonical(key)
    for prefix, names in _OFFICIAL_HEADS.items():
        if canon.startswith(prefix + "."):
            name = names.get(task, names.get("", "classification head"))
            return f"{name} ({m.group(1)}{m.group(2) or ''}{prefix[len(m.group(1)):]})"
    return None


def convert_official_to_ours(
    official: Any,
    model: nn.Module,
    *,
    task: str | None = None,
    source: str = "",
    reset_queue_ids: bool = False,
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Convert an official checkpoint (``{'model': sd}`` or flat, any layout) to ``model``.

    ``model`` gives the target keys, shapes and how its parts are filled (it may live on
    the meta device). ``task`` is the official layout; None detects it from the keys.
    :func:`official_to_ours_keys`, then :func:`~albef.checkpoint.adapt.adapt_state_dict`;
    the report names official keys on the source side. Also reported (warnings): tied
    official pairs that disagree (the word embeddings win over the MLM decoder copy; for
    the cross-attention key/value the model shares, layer 2k+1 wins, as the official
    ``share_cross_attention``) and a BERT whose layer count does not fit the model.
    Returns (state dict in the model's key order, only keys that were filled; report).
    """
    src = unwrap_state_dict(official)
    task = task or detect_official_task(src)
    if task not in TASKS:
        raise ValueError(f"unknown official task {task!r}; one of {', '.join(TASKS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_official_to_ours needs the target nn.Module, got {type(model).__name__}")
    report = LoadReport(source=source, direction="official->ours", task=task)
    ours, dropped, unexpected, origin = _rename_official(src, None)
    report.dropped.extend(dropped)
    report.unexpected.extend(unexpected)

    # the official model ties the MLM decoder to the word embeddings and its bias: both copies must agree
    for top, sfx in (("text_encoder", ""), ("text_encoder", "_m"), ("text_decoder", ""), ("text_decoder", "_m")):
        canon = {_canonical(k): k for k in src if k.startswith(f"{top}{sfx}.")}
        for a, b in ((f"{top}{sfx}.bert.embeddings.word_embeddings.weight", f"{top}{sfx}.cls.predictions.decoder.weight"),
                     (f"{top}{sfx}.cls.predictions.bias", f"{top}{sfx}.cls.predictions.decoder.bias")):
            ka, kb = canon.get(a), canon.get(b)
            if ka and kb and not src[ka].is_meta and not torch.equal(src[ka], src[kb]):
                report.warnings.append(f"{ka} and {kb} differ although the official model ties them; {ka} wins")
    # tensors this model shares (the NLVR2 cross-attention key/value of layers 2k, 2k+1): the
    # last key wins, as when the official model (module_0.weight = module_1.weight) loads the file
    for group in _model_ties(model):
        present = [k for k in group if k in ours]
        if len(present) < 2:
            continue
        last = ours[present[-1]]
        differ = [k for k in present[:-1] if not last.is_meta and not ours[k].is_meta and not torch.equal(ours[k], last)]
        for k in differ:
            report.warnings.append(
                f"{origin[k]} and {origin[present[-1]]} differ although this model shares them (official "
                f"share_cross_attention: one tensor); {origin[present[-1]]} wins, as in the official model")
        for k in present[:-1]:
            ours[k] = last

    # does the checkpoint's BERT fit the model's text + fusion layers?
    layers = {int(m.group(1)) for k in src if (m := re.match(r"^text_encoder\.(?:bert\.)?encoder\.layer\.(\d+)\.", k))}
    first_cross = _first_cross_layer(src)
    if layers and first_cross is not None:
        template = model.state_dict(keep_vars=True)
        n_text = len({m.group(1) for k in template if (m := re.match(r"^text_encoder\.bert\.encoder\.layer\.(\d+)\.", k))})
        n_fusion = len({m.group(1) for k in template if (m := re.match(r"^fusion\.layer\.(\d+)\.", k))})
        k_vis = int(getattr(getattr(model, "fusion", None), "num_visual_inputs", 1) or 1)
        n_src_fusion = len(layers) - first_cross
        fits = n_src_fusion == n_fusion or (k_vis > 1 and n_src_fusion * k_vis == n_fusion)
        if first_cross != n_text or not fits:
            report.warnings.append(
                f"the checkpoint's BERT has {len(layers)} layers with cross-attention from layer {first_cross}; this model has "
                f"{n_text} text + {n_fusion} fusion layers (model.text_encoder.num_layers, model.fusion.num_layers)"
            )

    out, report = adapt_state_dict(ours, model, report=report, reset_queue_ids=reset_queue_ids)
    # name the official keys on the source side of the report
    n_own = len(dropped)
    report.mapped = [(origin.get(s, s), t) for s, t in report.mapped]
    new_dropped = []
    for i, (s, reason) in enumerate(report.dropped):
        if i >= n_own:
            s = origin.get(s, s)
            head = _official_head_name(s, task)
            if head is not None:
                reason = f"{head}: {reason}"
        new_dropped.append((s, reason))
    report.dropped = new_dropped
    report.unexpected = [origin.get(s, s) for s in report.unexpected]
    report.mismatched = [(origin.get(s, s), t, a, b) for s, t, a, b in report.mismatched]
    report.interpolated = [(origin.get(s, s), a, b) for s, a, b in report.interpolated]
    return out, report


# ----------------------------------------------------------------------------- ours -> official
@dataclass(frozen=True)
class _Layout:
    """An official model's state-dict layout: its top-level parts in state-dict order
    (exact names for parameters/buffers of the model itself, ``name.`` for submodules)."""

    label: str
    official_class: str
    parts: tuple[str, ...]
    mlm: bool = False
    head: tuple[str, int] | None = None  # required head of ours: (key, number of classes)


_RETRIEVAL_PARTS = ("temp", "image_queue", "text_queue", "idx_queue", "queue_ptr", "visual_encoder.", "text_encoder.",
                    "vision_proj.", "text_proj.", "itm_head.", "visual_encoder_m.", "vision_proj_m.", "text_encoder_m.", "text_proj_m.")
_CLS_PARTS = ("visual_encoder.", "text_encoder.", "cls_head.", "visual_encoder_m.", "text_encoder_m.", "cls_head_m.")
_LAYOUTS = {
    "pretrain": _Layout("pretraining", "model_pretrain.ALBEF", tuple(p for p in _RETRIEVAL_PARTS if p != "idx_queue"), mlm=True),
    "retrieval": _Layout("retrieval", "model_retrieval.ALBEF", _RETRIEVAL_PARTS),
    "grounding": _Layout("grounding", "model_retrieval.ALBEF", _RETRIEVAL_PARTS),
    "ve": _Layout("SNLI-VE", "model_ve.ALBEF", _CLS_PARTS, head=("cls", 3)),
    "nlvr": _Layout("NLVR2", "model_nlvr.ALBEF", _CLS_PARTS, head=("cls", 2)),
    "nlvr_ta": _Layout("NLVR2 text-assignment", "model_pretrain_nlvr.ALBEF",
                       ("temp", "visual_encoder.", "text_encoder.", "vision_proj.", "text_proj.", "ta_head."), head=("ta", 3)),
}
_PART_NAMES = {
    "temp": "temperature", "image_queue": "feature queue", "text_queue": "feature queue", "queue_ptr": "feature queue",
    "idx_queue": "image-id queue", "vision_proj": "projections", "text_proj": "projections", "itm_head": "ITM head",
    "cls_head": "classification head", "ta_head": "text-assignment head", "mlm": "MLM head",
}
_OURS_QUEUE = {
    "teacher.queue.image_queue": "image_queue",
    "teacher.queue.text_queue": "text_queue",
    "teacher.queue.ptr": "queue_ptr",
    "teacher.queue.idx_queue": "idx_queue",
}
_OURS_HEADS = {"heads.mlm.": "text_encoder.cls.predictions.", "heads.itm.linear.": "itm_head.", "heads.cls.": "cls_head.", "heads.ta.": "ta_head."}


def ours_to_official_key(key: str, n_text: int, task: str = "pretrain") -> str | None:
    """Our key -> its official key in the layout of ``task`` (None: no official counterpart).

    ``n_text``: our text-only layers (fusion layer j is BERT layer ``n_text + j``)."""
    if key == "temp":
        return "temp"
    if key in _OURS_QUEUE:
        return _OURS_QUEUE[key]
    teacher = key.startswith("teacher.model.")
    rest, sfx = (key[len("teacher.model."):], "_m") if teacher else (key, "")
    canon = None
    for ours, theirs in (("vision_encoder.vit.", "visual_encoder."), ("vision_proj.", "vision_proj."),
                         ("text_proj.", "text_proj."), ("text_encoder.bert.", "text_encoder.bert.")):
        if rest.startswith(ours):
            canon = theirs + rest[len(ours):]
            break
    if canon is None and (m := re.match(r"^fusion\.layer\.(\d+)\.(.*)$", rest)):
        canon = f"text_encoder.bert.encoder.layer.{n_text + int(m.group(1))}.{m.group(2)}"
    if canon is None:
        for ours, theirs in _OURS_HEADS.items():
            if rest.startswith(ours):
                canon = theirs + rest[len(ours):]
                break
    if canon is None:
        return None
    top, dot, tail = canon.partition(".")
    return _task_key(f"{top}{sfx}{dot}{tail}", task)


def _part(official_key: str) -> str:
    """The top-level part of an official key (``text_encoder.``, ``temp``, ...)."""
    top, dot, _ = official_key.partition(".")
    return top + dot


def _official_sort_key(key: str, index: int, parts: tuple[str, ...]) -> tuple:
    group = parts.index(_part(key)) if _part(key) in parts else len(parts)
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
    ours: Any, *, task: str | None = None, source: str = ""
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """This model's state dict (or module / ``{'model': sd}``) -> the official layout of ``task``.

    ``task`` (default: from our heads, :func:`detect_our_task`): ``pretrain``
    (``model_pretrain.ALBEF``, loadable by the official ``Pretrain.py``),
    ``retrieval``/``grounding`` (``model_retrieval.ALBEF``: no MLM head, ``idx_queue``),
    ``ve`` (``model_ve.ALBEF``: ``cls_head`` 3-way), ``nlvr`` (``model_nlvr.ALBEF``: the
    18-layer BERT, ``cls_head`` 2-way) or ``nlvr_ta`` (``model_pretrain_nlvr.ALBEF``:
    ``ta_head``, no momentum copies). Keys in the official order. Parts of ours the layout
    does not hold are dropped with the reason; momentum copies the layout has and this model
    does not are copied from the online weights (as the official ``copy_params()``); the
    official buffers this model does not keep are rebuilt (``position_ids``, the tied
    ``cls.predictions.decoder.bias``).
    """
    sd = unwrap_state_dict(ours)
    if is_legacy_state_dict(sd):
        sd = upgrade_legacy_keys(sd)
    task = task or detect_our_task(sd)
    if task not in TO_OFFICIAL_TASKS:
        raise ValueError(f"cannot write an official {task!r} checkpoint: writing that layout is not supported "
                         f"(supported: {', '.join(TO_OFFICIAL_TASKS)}); official {task} checkpoints can be read")
    lay = _LAYOUTS[task]
    if lay.head is not None:
        key, n_cls = lay.head
        weights = [v for k, v in sd.items() if k.startswith(f"heads.{key}.") and k.endswith("weight")]
        if not weights or weights[-1].shape[0] != n_cls:
            have = f"heads.{key} with {weights[-1].shape[0]} classes" if weights else f"no heads.{key}"
            raise ValueError(f"cannot write an official {task!r} checkpoint: it needs the {lay.label} head "
                             f"(heads.{key}, {n_cls} classes), which this model does not have ({have})")
    n_text = len({m.group(1) for k in sd if (m := re.match(r"^text_encoder\.bert\.encoder\.layer\.(\d+)\.", k))})
    report = LoadReport(source=source, direction="ours->official", task=task)
    out: dict[str, torch.Tensor] = {}
    order: dict[str, int] = {}

    def put(key: str, value: torch.Tensor) -> None:
        order.setdefault(key, len(order))
        out[key] = value

    for k, v in sd.items():
        official = ours_to_official_key(k, n_text, task)
        if official is None:
            report.unexpected.append(k)
            continue
        part = _part(official)
        is_mlm = ".cls.predictions." in official
        if part not in lay.parts or (is_mlm and not lay.mlm):
            name = _PART_NAMES.get("mlm" if is_mlm else part.rstrip("."))
            if part.endswith("_m.") and not is_mlm:
                what = f"momentum copy of {part[:-3]}"
            else:
                what = name or part.rstrip(".")
                what += " (momentum copy)" if part.endswith("_m.") else ""
            report.dropped.append((k, f"the official {lay.label} model ({lay.official_class}) has no {what}"))
            continue
        if official in ("image_queue", "text_queue"):
            v = v.t().contiguous()  # ours [Q, E] -> official [E, Q]
        elif official == "idx_queue":
            v = v.reshape(1, -1)
        put(official, v)
        report.mapped.append((k, official))

    has_teacher = any(k.startswith("teacher.model.") for k in sd)
    why = ("this model has no momentum teacher" if not has_teacher else "this model keeps no momentum copy of it")
    for part in lay.parts:
        if not part.endswith("_m."):
            continue
        online = part[:-3] + "."
        for key in [k for k in out if k.startswith(online)]:
            mk = part + key[len(online):]
            if mk not in out:
                put(mk, out[key].clone())
                report.filled.append((mk, f"{why}: copied from the online weights (as the official copy_params())"))
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
    if "idx_queue" in lay.parts and "idx_queue" not in out and "image_queue" in out:
        put("idx_queue", torch.full((1, out["image_queue"].shape[1]), -100, dtype=torch.long))
        report.filled.append(("idx_queue", "-100 (no image id), as the official retrieval model initialises it"))
    for part in lay.parts:  # what the layout needs and nothing filled
        if not part.endswith("."):
            if part not in out:
                report.missing.append(part)
        elif not any(k.startswith(part) for k in out):
            report.missing.append(part + "*")
    if lay.mlm:
        for sfx in ("", "_m"):
            if f"text_encoder{sfx}." in lay.parts and not any(k.startswith(f"text_encoder{sfx}.cls.predictions.") for k in out):
                report.missing.append(f"text_encoder{sfx}.cls.predictions.*")
    if task in ("nlvr", "nlvr_ta"):  # the official model shares the cross-attention key/value of layers 2k, 2k+1
        n_layers = len({m.group(1) for k in out if (m := re.match(r"^text_encoder\.encoder\.layer\.(\d+)\.", k))})
        for sfx in ("", "_m"):
            for i in range(n_text, n_layers - 1, 2):
                for w in ("key.weight", "key.bias", "value.weight", "value.bias"):
                    a = f"text_encoder{sfx}.encoder.layer.{i}.crossattention.self.{w}"
                    b = f"text_encoder{sfx}.encoder.layer.{i + 1}.crossattention.self.{w}"
                    if a in out and b in out and not out[a].is_meta and not torch.equal(out[a], out[b]):
                        report.warnings.append(f"{a} and {b} differ, but the official model shares them "
                                               f"(share_cross_attention): loading this file there keeps {b}")
    keys = sorted(out, key=lambda k: _official_sort_key(k, order[k], lay.parts))
    return {k: out[k] for k in keys}, report
