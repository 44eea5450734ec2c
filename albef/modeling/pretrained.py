"""Initialisation from public weights: a timm ViT (local file or timm name) and a
transformers BERT (name or local directory), split the way the paper does.

BERT layers ``[0, n_text)`` (and the embeddings) initialise the text encoder, layers
``[n_text, n_text + n_fusion)`` the fusion blocks' self-attention and feed-forward
(their cross-attention has no BERT counterpart and keeps its fresh initialisation),
and ``cls.predictions`` the MLM head. A source that cannot be found or read is an
error naming the config key, never a silent random initialisation.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import torch
from torch import nn

from albef.registry import ComponentError

logger = logging.getLogger("albef.modeling")


def load_state_file(path: str, where: str) -> dict[str, torch.Tensor]:
    """The state dict of a weights file, read like every checkpoint here (safetensors or
    ``torch.load(weights_only=True)``, see :func:`albef.checkpoint.read_checkpoint_file`).
    Missing or unreadable: ComponentError naming ``where``."""
    from albef.checkpoint.checkpointer import CheckpointFormatError, read_checkpoint_file
    from albef.utils.file_io import PathManager

    local = PathManager.get_local_path(path) if "://" in path else path
    if not os.path.isfile(local):
        raise ComponentError(f"{where}: weights file '{path}' does not exist (refusing to fall back to a random initialisation)")
    try:
        return dict(read_checkpoint_file(local)["model"])
    except CheckpointFormatError as e:  # corrupt file, not a state dict, or one that needs arbitrary unpickling
        raise ComponentError(f"{where}: cannot read weights file '{path}': {e}") from e


# ---------------------------------------------------------------------------- ViT
def load_vit_weights(vit: nn.Module, source: str | Mapping[str, torch.Tensor], where: str = "model.vision_encoder.pretrained", label: str | None = None) -> None:
    """Load a timm/DeiT ViT state dict (a file path, or the dict itself) into ``vit`` (a timm
    VisionTransformer without head).

    timm's own ``checkpoint_filter_fn`` adapts the layout and resamples the positional
    embedding to the model's grid (bicubic, [CLS] position kept); classifier weights are
    dropped. Every model tensor must be filled, else an error lists what is missing.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    label = label or (source if isinstance(source, str) else "the given state dict")
    raw = load_state_file(source, where) if isinstance(source, str) else dict(source)
    # Bicubic without antialiasing, as the official interpolate_pos_embed (timm's default
    # antialias=True uses a different cubic kernel, even when upsampling).
    sd = checkpoint_filter_fn(raw, vit, interpolation="bicubic", antialias=False)
    own = vit.state_dict()
    dropped = sorted(k for k in sd if k not in own and (k.startswith("head") or k.startswith("fc_norm") or k == "dist_token"))
    sd = {k: v for k, v in sd.items() if k not in dropped}
    bad_shape = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items() if k in own and v.shape != own[k].shape)
    if bad_shape:
        raise ComponentError(f"{where}: '{label}' does not fit model.vision_encoder (shape mismatch): " + "; ".join(bad_shape[:10]))
    missing, unexpected = vit.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ComponentError(
            f"{where}: '{label}' is not a checkpoint of this ViT: missing {sorted(missing)[:10]}{'...' if len(missing) > 10 else ''}, "
            f"unexpected {sorted(unexpected)[:10]}{'...' if len(unexpected) > 10 else ''}"
        )
    logger.info("ViT initialised from %s: %d tensors loaded%s", label, len(sd), f", dropped {dropped} (classifier)" if dropped else "")


# ---------------------------------------------------------------------------- BERT
def load_bert_state(source: str, where: str = "model.text_encoder.pretrained") -> tuple[dict[str, torch.Tensor], Any]:
    """(state dict with ``bert.`` / ``cls.`` keys, transformers config) of a BERT name or directory."""
    from transformers import AutoConfig, BertForMaskedLM

    if os.path.sep in source or source.startswith("."):
        if not os.path.isdir(source):
            raise ComponentError(f"{where}: BERT directory '{source}' does not exist (refusing to fall back to a random initialisation)")
    try:
        config = AutoConfig.from_pretrained(source)
        model, info = BertForMaskedLM.from_pretrained(source, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise ComponentError(
            f"{where}: cannot load BERT weights from '{source}' (a transformers model name needs the Hugging Face "
            f"cache or network; a local directory needs config.json and the weights): {e}"
        ) from e
    sd = model.state_dict()
    missing = set(info.get("missing_keys", []))
    # Keys the file did not have are freshly initialised by transformers: leave them out.
    return {k: v for k, v in sd.items() if k not in missing}, config


def _check_config(config: Any, text_config: Any, where: str, source: str) -> None:
    pairs = [("hidden_size", "hidden_size"), ("num_attention_heads", "num_attention_heads"), ("intermediate_size", "intermediate_size")]
    bad = [f"{a}: checkpoint {getattr(config, a, None)} vs model {getattr(text_config, b, None)}" for a, b in pairs if getattr(config, a, None) != getattr(text_config, b, None)]
    if bad:
        raise ComponentError(f"{where}: BERT '{source}' does not match model.text_encoder.config: " + "; ".join(bad))


def split_bert_state(sd: Mapping[str, torch.Tensor], n_text: int) -> tuple[dict, list[dict], dict, list[str]]:
    """-> (text-encoder state for ``BertModel`` with ``n_text`` layers, per-layer states of the
    remaining layers in order, MLM-head state, dropped keys)."""
    text, rest, head, dropped = {}, {}, {}, []
    for k, v in sd.items():
        if k.startswith("bert.embeddings."):
            text[k[len("bert."):]] = v
        elif k.startswith("bert.encoder.layer."):
            idx, tail = k[len("bert.encoder.layer."):].split(".", 1)
            if int(idx) < n_text:
                text[k[len("bert."):]] = v
            else:
                rest.setdefault(int(idx) - n_text, {})[tail] = v
        elif k.startswith("cls.predictions."):
            tail = k[len("cls.predictions."):]
            if tail == "decoder.weight":
                dropped.append(k)  # tied to the word embeddings, loaded there
            elif tail == "decoder.bias":
                dropped.append(k)  # the same tensor as cls.predictions.bias
            else:
                head[tail] = v
        else:
            dropped.append(k)  # pooler, NSP head, position_ids buffers
    layers = [rest[i] for i in sorted(rest)]
    return text, layers, head, dropped


def init_text_encoder_from_bert(encoder: nn.Module, source: str, where: str = "model.text_encoder.pretrained") -> dict[str, Any]:
    """Load embeddings + the first layers into ``encoder.bert``; return what is left for the
    fusion blocks and the MLM head (``{'layers': [...], 'mlm_head': {...}, 'source': ...}``)."""
    sd, config = load_bert_state(source, where)
    _check_config(config, encoder.config, where, source)
    n_text = encoder.config.num_hidden_layers
    text, layers, head, dropped = split_bert_state(sd, n_text)
    own = encoder.bert.state_dict()
    bad = sorted(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in text.items() if k in own and v.shape != own[k].shape)
    if bad:
        raise ComponentError(f"{where}: BERT '{source}' does not fit model.text_encoder: " + "; ".join(bad[:10]))
    text = {k: v for k, v in text.items() if k in own}
    missing, _ = encoder.bert.load_state_dict(text, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise ComponentError(f"{where}: BERT '{source}' lacks text-encoder weights {missing[:10]} (it has {config.num_hidden_layers} layers)")
    logger.info("Text encoder initialised from BERT '%s': embeddings + layers 0-%d", source, n_text - 1)
    return {"layers": layers, "mlm_head": head, "source": source, "n_text": n_text, "dropped": dropped}


def init_fusion_from_bert(fusion: nn.Module, leftover: Mapping[str, Any], where: str = "model.text_encoder.pretrained") -> None:
    """BERT layers ``n_text + i`` -> ``fusion.layer[i]`` self-attention and FFN; cross-attention untouched."""
    layers, n_text, source = leftover["layers"], leftover["n_text"], leftover["source"]
    blocks = getattr(fusion, "layer", None)
    if blocks is None:
        raise ComponentError(f"{where}: the fusion component {type(fusion).__name__} has no BERT-style 'layer' list to initialise")
    if len(layers) < len(blocks):
        raise ComponentError(
            f"{where}: BERT '{source}' has {n_text + len(layers)} layers; the text encoder takes {n_text} and "
            f"model.fusion.num_layers={len(blocks)} needs {len(blocks)} more"
        )
    for i, block in enumerate(blocks):
        own = block.state_dict()
        state = {k: v for k, v in layers[i].items() if not k.startswith("crossattention.")}
        bad = [f"layer {n_text + i}.{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and v.shape != own[k].shape]
        if bad:
            raise ComponentError(f"{where}: BERT '{source}' does not fit the fusion blocks: " + "; ".join(bad[:10]))
        missing, unexpected = block.load_state_dict(state, strict=False)
        not_cross = [k for k in missing if not k.startswith("crossattention.")]
        if not_cross or unexpected:
            raise ComponentError(f"{where}: BERT layer {n_text + i} does not map onto fusion layer {i}: missing {not_cross}, unexpected {unexpected}")
    extra = len(layers) - len(blocks)
    logger.info(
        "Fusion initialised from BERT '%s': layers %d-%d -> self-attention + FFN of fusion layers 0-%d; cross-attention fresh%s",
        source, n_text, n_text + len(blocks) - 1, len(blocks) - 1, f"; {extra} BERT layer(s) beyond them unused" if extra else "",
    )


def init_mlm_head_from_bert(head: nn.Module, leftover: Mapping[str, Any], where: str = "model.text_encoder.pretrained") -> None:
    """``cls.predictions.{transform.*, bias}`` -> the MLM head (its decoder is the tied word embeddings)."""
    state = dict(leftover["mlm_head"])
    if not state:
        logger.info("BERT '%s' has no MLM head (cls.predictions): the MLM head keeps its fresh initialisation", leftover["source"])
        return
    missing, unexpected = head.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "decoder.weight"]
    if missing or unexpected:
        raise ComponentError(f"{where}: BERT '{leftover['source']}' MLM head does not fit: missing {missing}, unexpected {unexpected}")
    logger.info("MLM head initialised from BERT '%s' (cls.predictions)", leftover["source"])
