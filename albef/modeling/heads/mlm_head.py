"""Masked-language-model head whose decoder is tied to the word embeddings (BERT's ``cls.predictions``)."""
import torch
import torch.nn.functional as F
from torch import nn

from albef.registry import HEAD_REGISTRY


class _Transform(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


@HEAD_REGISTRY.register()
class MLMHead(nn.Module):
    """``forward(hidden [B, L, H]) -> logits [B, L, V]``.

    ``decoder.weight`` *is* ``word_embeddings.weight`` (the same Parameter); ``bias`` [V] is its own.

    Args:
        momentum: keep an EMA copy in the momentum teacher (official: yes, it is part of
            the momentum BERT), which gives MLM its distillation targets.
        word_embeddings, layer_norm_eps: supplied by the model builder (the text encoder's).
    """


    def __init__(self, word_embeddings: nn.Parameter | None = None, layer_norm_eps: float = 1e-12, initializer_range: float = 0.02, momentum: bool = True):
        super().__init__()
        if word_embeddings is None:
            raise ValueError("MLMHead needs the text encoder's word embeddings to tie its decoder")
        self.momentum = bool(momentum)
        vocab, hidden = word_embeddings.shape
        self.transform = _Transform(hidden, layer_norm_eps)
        self.decoder = nn.Linear(hidden, vocab, bias=False)
        self.decoder.weight = word_embeddings  # tied
        self.bias = nn.Parameter(torch.zeros(vocab))
        nn.init.normal_(self.transform.dense.weight, std=initializer_range)
        nn.init.zeros_(self.transform.dense.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden)) + self.bias
