"""Initialisation from public weights, one model-level pass after the model is built:
a timm ViT (local file or timm name) and a transformers BERT (name or local directory),
split the way the paper does.

The BERT state dict is read as the text part of an official ALBEF checkpoint
(``text_encoder.bert.*``, ``text_encoder.cls.predictions.*``) and goes through the same
key maps as every checkpoint (:func:`albef.checkpoint.official.official_to_ours_keys`,
then :func:`albef.checkpoint.adapt.adapt_state_dict`): BERT layers ``[0, n_text)`` (and
the embeddings) initialise the text encoder, layers ``[n_text, n_text + n_fusion)`` the
fusion blocks' self-attention and feed-forward (their cross-attention has no BERT
counterpart and keeps its fresh initialisation), ``cls.predictions`` the MLM head, and a
component that declares a ``weight_map`` (NLVR2's two-image fusion) receives its
layers the way it declares. The momentum teacher then copies the result. A source that
cannot be found or read is an error naming the config key, never a silent random
initialisation.
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


def init_bert_weights(model: nn.Module, source: str, where: str = "model.text_encoder.pretrained") -> None:
    """BERT ``source`` -> the text encoder, the fusion blocks (self-attention + FFN) and the MLM head."""
    from albef.checkpoint.adapt import adapt_state_dict
    from albef.checkpoint.official import official_to_ours_keys

    sd, config = load_bert_state(source, where)
    encoder = model.text_encoder
    _check_config(config, encoder.config, where, source)
    n_text = encoder.config.num_hidden_layers
    ours, _, _ = official_to_ours_keys({f"text_encoder.{k}": v for k, v in sd.items()}, n_text=n_text)
    adapted, report = adapt_state_dict(ours, model)
    loaded = {t for _, t in report.mapped}
    loaded |= {t for t, why in report.filled if why.startswith("tied to") and any(t.startswith(p) for p in ("heads.",))}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("teacher.")}
    bad = [f"{s}: checkpoint {list(a)} vs model {list(b)}" for s, _, a, b in report.mismatched]
    if bad:
        raise ComponentError(f"{where}: BERT '{source}' does not fit the model: " + "; ".join(bad[:10]))
    lacking = [k for k in own if k.startswith("text_encoder.") and k not in loaded and not k.endswith("position_ids")]
    if lacking:
        raise ComponentError(f"{where}: BERT '{source}' lacks text-encoder weights {lacking[:10]} (it has {config.num_hidden_layers} layers)")
    fusion_keys = [k for k in own if k.startswith("fusion.") and ".crossattention." not in k]
    if fusion_keys:
        n_fusion = len(getattr(model.fusion, "layer", []))
        if not all(k in loaded for k in fusion_keys):
            raise ComponentError(
                f"{where}: BERT '{source}' has {config.num_hidden_layers} layers; the text encoder takes {n_text} and "
                f"model.fusion.num_layers={n_fusion} needs {n_fusion} more"
            )
    take = {k: v for k, v in adapted.items() if k in loaded and not k.startswith("teacher.")}
    model.load_state_dict(take, strict=False)
    has_mlm = any(k.startswith("heads.mlm.") for k in take)
    logger.info(
        "Initialised from BERT '%s': embeddings + layers 0-%d -> text encoder; the next layers -> fusion self-attention + FFN "
        "(cross-attention fresh)%s",
        source, n_text - 1, "; cls.predictions -> MLM head" if has_mlm else "",
    )


def init_vit_weights(model: nn.Module, source: str, where: str = "model.vision_encoder.pretrained") -> None:
    """A local DeiT/timm file, or ``timm`` (timm's weights for the encoder's ``model_name``) -> the ViT."""
    enc = model.vision_encoder
    vit = getattr(enc, "vit", None)
    if vit is None:
        raise ComponentError(f"{where}: the vision encoder {type(enc).__name__} has no public-weight mapping (a timm ViT is expected)")
    if source == "timm":
        import timm

        name = getattr(enc, "model_name", None)
        try:  # timm's weights at their own resolution, then the same loading (and resampling) as a local file
            src = timm.create_model(name, pretrained=True, num_classes=0, global_pool="", **getattr(enc, "model_kwargs", {}))
        except Exception as e:  # download failures (offline, no weights for this name)
            raise ComponentError(
                f"{where}=timm: could not get timm's weights for '{name}' (offline? give a local file instead): {type(e).__name__}: {e}"
            ) from e
        load_vit_weights(vit, src.state_dict(), where=where, label=f"timm:{name}")
    else:
        load_vit_weights(vit, source, where=where)


def initialize_public_weights(model: nn.Module, vision: str | None = None, text: str | None = None) -> None:
    """The paper's initialisation (DeiT ViT, BERT split text/fusion/MLM head), then the teacher copies it."""
    if vision:
        init_vit_weights(model, vision)
    if text:
        init_bert_weights(model, text)
    teacher = getattr(model, "teacher", None)
    if (vision or text) and teacher is not None:
        teacher.reset(model)
