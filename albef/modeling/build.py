"""``build_model(cfg, tokenizer)``: the meta-architecture named by ``cfg.model.name``."""
from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from albef.registry import META_ARCH_REGISTRY, build_component

logger = logging.getLogger("albef.modeling")


def tokenizer_kwargs(tokenizer: Any) -> dict[str, Any]:
    """Vocabulary size and special ids the text components need."""
    specials = [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id]
    return dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        mask_token_id=tokenizer.mask_token_id,
        special_token_ids=tuple(i for i in specials if i is not None),
    )


def build_model(cfg: DictConfig, tokenizer: Any = None, public_init: bool | None = None):
    """``public_init``: initialise the encoders from their ``pretrained`` public weights
    (DeiT / BERT). Default: yes, unless ``model.weights`` is set and loads strictly: its
    checkpoint then replaces every weight anyway (so evaluating a checkpoint needs neither
    the network nor the init files)."""
    node = OmegaConf.to_container(cfg.model, resolve=True)
    weights = node.pop("weights", None)  # loading is the checkpointer's job
    strict = node.pop("weights_strict", True)
    if public_init is None:  # a partial (non-strict) load keeps what the public weights gave the rest
        public_init = not weights or not strict
    if not public_init:
        for key in ("vision_encoder", "text_encoder"):
            sub = node.get(key)
            if isinstance(sub, dict) and sub.get("pretrained"):
                logger.info("model.%s.pretrained=%s skipped: model.weights=%s replaces every weight", key, sub["pretrained"], weights)
                sub["pretrained"] = None
    extra = tokenizer_kwargs(tokenizer) if tokenizer is not None else {}
    return build_component(META_ARCH_REGISTRY, node, where="model", **extra)
