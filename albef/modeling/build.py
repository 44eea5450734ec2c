"""``build_model(cfg, tokenizer)``: the meta-architecture named by ``cfg.model.name``,
then the public-weight initialisation pass."""
from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

# The families a model is built from: importing their packages registers the built-ins, and
# albef.plugins discovers the installed plugins on the first lookup.
from albef import plugins  # noqa: F401
from albef.modeling import encoders, fusion, heads, meta_arch, miners, objectives, teachers  # noqa: F401
from albef.registry import META_ARCH_REGISTRY, build_component

logger = logging.getLogger("albef.modeling")


def tokenizer_kwargs(tokenizer: Any) -> dict[str, Any]:
    """Vocabulary size, special ids and the token -> id map the text components need."""
    specials = [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id]
    get_vocab = getattr(tokenizer, "get_vocab", None)
    return dict(
        vocab=get_vocab() if callable(get_vocab) else None,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        mask_token_id=tokenizer.mask_token_id,
        special_token_ids=tuple(i for i in specials if i is not None),
    )


def build_model(cfg: DictConfig, tokenizer: Any = None, public_init: bool | None = None):
    """The model of ``cfg.model``.

    ``public_init``: initialise the encoders from their ``pretrained`` public weights
    (``model.vision_encoder.pretrained`` / ``model.text_encoder.pretrained``: DeiT / BERT),
    one pass over the built model (:func:`albef.modeling.pretrained.initialize_public_weights`).
    Default: yes, unless ``model.weights`` is set and loads strictly: its checkpoint then
    replaces every weight anyway (so evaluating a checkpoint needs neither the network nor
    the init files).
    """
    node = OmegaConf.to_container(cfg.model, resolve=True)
    weights = node.pop("weights", None)  # loading is the checkpointer's job
    strict = node.pop("weights_strict", True)
    if public_init is None:  # a partial (non-strict) load keeps what the public weights gave the rest
        public_init = not weights or not strict
    sources = {}
    for key in ("vision_encoder", "text_encoder"):
        sub = node.get(key)
        if isinstance(sub, dict) and "pretrained" in sub:
            src = sub.pop("pretrained")
            if src and not public_init:
                logger.info("model.%s.pretrained=%s skipped: model.weights=%s replaces every weight", key, src, weights)
            elif src:
                sources[key] = src
    extra = tokenizer_kwargs(tokenizer) if tokenizer is not None else {}
    model = build_component(META_ARCH_REGISTRY, node, where="model", **extra)
    if sources:
        from albef.modeling.pretrained import initialize_public_weights

        initialize_public_weights(model, vision=sources.get("vision_encoder"), text=sources.get("text_encoder"))
    return model


def build_model_from_weights(cfg: DictConfig, weights: str, strict: bool | None = None, check=None):
    """For tools that analyse a trained checkpoint: ``(model, tokenizer, device, amp)``.

    The config's tokenizer and model, ``weights`` loaded (ours or an official file; strict
    unless ``model.weights_strict=false`` or ``strict`` says otherwise), moved to CUDA when
    there is one and put in eval mode; ``amp``: bf16 as training has it (auto = on a CUDA
    device that supports it, never on the CPU). ``check(model)``, if given, runs on the built
    model before the weights are read: a tool refuses a model it cannot use (e.g. one without
    the head it explains) with its own message, not with the load's mismatch report."""
    import torch

    from albef.checkpoint import ALBEFCheckpointer
    from albef.data.tokenization import build_tokenizer

    tok = build_tokenizer(cfg.data.tokenizer)
    model = build_model(cfg, tok)
    if check is not None:
        check(model)
    ALBEFCheckpointer(model).load_weights(weights, strict=bool(cfg.model.weights_strict) if strict is None else strict)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    amp = device.type == "cuda" and cfg.train.amp != "off" and torch.cuda.is_bf16_supported()
    return model, tok, device, amp
