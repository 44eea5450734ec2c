"""Text encoder: the first ``num_layers`` layers of a transformers BERT."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertModel

from albef.registry import TEXT_ENCODER_REGISTRY



def sincos_1d(length: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Transformer sine-cosine position table [length, dim] (sin on the first half, cos on the second)."""
    half = dim // 2
    freq = temperature ** (-torch.arange(half, dtype=torch.float32) / max(half, 1))
    ang = torch.arange(length, dtype=torch.float32)[:, None] * freq[None]
    out = torch.zeros(length, dim)
    out[:, :half], out[:, half : 2 * half] = torch.sin(ang), torch.cos(ang)
    return out


@TEXT_ENCODER_REGISTRY.register()
class BertTextEncoder(nn.Module):
    """BERT embeddings + layers ``[0, num_layers)`` (ALBEF's ``mode='text'``).

    ``forward(input_ids [B, L], attention_mask [B, L]) -> hidden [B, L, H]``.

    Args:
        num_layers: how many BERT layers encode text alone (6 in the paper; the
            remaining BERT layers become the fusion blocks).
        config: ``transformers.BertConfig`` fields. ``vocab_size: null`` takes the
            tokenizer's size.
        position_init: ``random`` (BERT's initialisation) or ``sincos`` (1-D sine-cosine
            values, still learnable), for models trained from scratch.
        attn_implementation: ``sdpa`` (default) or ``eager`` (transformers' written-out
            attention, same values; the faster one on a CPU under bf16 autocast).
        grad_checkpointing: recompute each layer's activations in the backward pass.
        vocab_size, pad_token_id: supplied by the builder from the tokenizer.

    Public weights (``model.text_encoder.pretrained``: a BERT name or directory) are loaded
    by the model-level initialisation pass, :mod:`albef.modeling.pretrained`: embeddings and
    layers ``[0, num_layers)`` here, the remaining layers into the fusion blocks.
    """

    def __init__(self, num_layers: int = 6, config: dict[str, Any] | None = None, vocab_size: int | None = None, pad_token_id: int = 0, position_init: str = "random",
                 attn_implementation: str = "sdpa", grad_checkpointing: bool = False):
        super().__init__()
        fields = dict(config or {})
        cfg_vocab = fields.pop("vocab_size", None)
        if cfg_vocab is None:
            if vocab_size is None:
                raise ValueError("model.text_encoder.config.vocab_size is null and no tokenizer size was given")
            cfg_vocab = vocab_size
        elif vocab_size is not None and cfg_vocab < vocab_size:
            raise ValueError(
                f"model.text_encoder.config.vocab_size={cfg_vocab} is smaller than the tokenizer's vocabulary ({vocab_size})"
            )
        fields.setdefault("pad_token_id", pad_token_id)
        try:
            bert_cfg = BertConfig(vocab_size=cfg_vocab, num_hidden_layers=num_layers, **fields)
        except TypeError as e:
            raise ValueError(f"model.text_encoder.config: {e}") from e
        if attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"model.text_encoder.attn_implementation must be 'sdpa' or 'eager', got {attn_implementation!r}")
        bert_cfg._attn_implementation = attn_implementation
        self.config = bert_cfg
        self.bert = BertModel(bert_cfg, add_pooling_layer=False)
        if grad_checkpointing:
            enable = getattr(self.bert, "activation_checkpointing_enable", None)  # transformers >= 5.x name
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.bert.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.hidden_size: int = bert_cfg.hidden_size
        if position_init == "sincos":
            with torch.no_grad():
                table = self.bert.embeddings.position_embeddings.weight
                sincos = sincos_1d(table.shape[0], table.shape[1])
                # at the scale of the word embeddings, so position does not drown the words
                table.copy_((sincos * (bert_cfg.initializer_range / sincos.std())).to(table.dtype))
        elif position_init != "random":
            raise ValueError(f"model.text_encoder.position_init must be 'random' or 'sincos', got {position_init!r}")

    def get_input_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Embeddings and layers are called directly with a boolean [B, 1, 1, L] mask:
        # BertModel.forward would first ask `attention_mask.all()` to decide whether it
        # can drop the mask, a device-to-host sync on every call. Same values.
        hidden = self.bert.embeddings(input_ids=input_ids)
        mask = attention_mask[:, None, None, :].to(torch.bool)
        if self.config._attn_implementation == "eager":  # eager adds the mask to the scores
            mask = torch.zeros(mask.shape, dtype=hidden.dtype, device=mask.device).masked_fill(~mask, torch.finfo(hidden.dtype).min)
        out = self.bert.encoder(hidden, attention_mask=mask)
        return out[0] if isinstance(out, tuple) else out.last_hidden_state
