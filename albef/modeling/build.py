"""``build_model(cfg, tokenizer)``: the meta-architecture named by ``cfg.model.name``."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from albef.registry import META_ARCH_REGISTRY, build_component


def tokenizer_kwargs(tokenizer: Any) -> dict[str, Any]:
    """Vocabulary size and special ids the text components need."""
    specials = [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id]
    return dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        mask_token_id=tokenizer.mask_token_id,
        special_token_ids=tuple(i for i in specials if i is not None),
    )


def build_model(cfg: DictConfig, tokenizer: Any = None):
    node = OmegaConf.to_container(cfg.model, resolve=True)
    node.pop("weights", None)  # loading is the checkpointer's job
    extra = tokenizer_kwargs(tokenizer) if tokenizer is not None else {}
    return build_component(META_ARCH_REGISTRY, node, where="model", **extra)
