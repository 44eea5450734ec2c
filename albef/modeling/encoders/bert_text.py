"""Text encoder: the first ``num_layers`` layers of a transformers BERT."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertModel



def sincos_1d(length: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Transformer sine-cosine position table [length, dim] (sin on the first half, cos on the second)."""
    half = dim // 2
    freq = temperature ** (-torch.arange(half, dtype=torch.float32) / max(half, 1))
    ang = torch.arange(length, dtype=torch.float32)[:, None] * freq[None]
    out = torch.zeros(length, dim)
    out[:, :half], out[:, half : 2 * half] = torch.sin(ang), torch.cos(ang)
    return out


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
        vocab_size, pad_token_id: supplied by the builder from the tokenizer.

    Public weights (``model.text_encoder.pretrained``: a BERT name or directory) are loaded
    by the model-level initialisation pass, :mod:`albef.modeling.pretrained`: embeddings and
    layers ``[0, num_layers)`` here, the remaining layers into the fusion blocks.
    """

    def __init__(self, num_layers: int = 6, config: dict[str, Any] | None = None, vocab_size: int | None = None, pad_token_id: int = 0, position_init: str = "random"):
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
        bert_cfg._attn_implementation = "sdpa"
        self.config = bert_cfg
        self.bert = BertModel(bert_cfg, add_pooling_layer=False)
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
        out = self.bert.encoder(hidden, attention_mask=attention_mask[:, None, None, :].to(torch.bool))
        return out[0] if isinstance(out, tuple) else out.last_hidden_state
