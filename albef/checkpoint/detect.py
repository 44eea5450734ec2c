"""What a checkpoint object holds: the flat state dict inside it, and which layout that is
(the official ALBEF one or ours, and which task's model wrote it), read from its keys."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn


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
    """Which official model wrote ``sd``: pretrain, retrieval (also grounding), vqa, ve, nlvr
    or nlvr_ta (the NLVR2 text-assignment pretraining, ``ta_head``)."""
    if any(k.startswith("text_decoder.") for k in sd):
        return "vqa"
    if any(k.startswith("ta_head.") for k in sd):
        return "nlvr_ta"
    head = sd.get("cls_head.2.weight")
    if head is not None:
        return "ve" if head.shape[0] == 3 else "nlvr"
    if "idx_queue" in sd:
        return "retrieval"
    if any(".cls.predictions." in k for k in sd):
        return "pretrain"
    return "retrieval"


def detect_our_task(sd: Mapping[str, Any]) -> str:
    """The official layout a state dict of ours naturally converts to (by its heads):
    ``heads.ta`` -> nlvr_ta, ``heads.cls`` -> ve (3 classes) or nlvr, ``heads.mlm`` ->
    pretrain, otherwise retrieval."""
    if any(k.startswith("heads.ta.") for k in sd):
        return "nlvr_ta"
    if any(k.startswith("heads.answer.") for k in sd):
        return "vqa"
    head = sd.get("heads.cls.2.weight")
    if head is not None:
        return "ve" if head.shape[0] == 3 else "nlvr"
    if any(k.startswith("heads.mlm.") for k in sd) or not any(k.startswith("heads.") for k in sd):
        return "pretrain"
    return "retrieval"
