"""What the fusion encoder attends to: one or more sets of visual tokens, each with a mask."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class VisualInput:
    """``tokens[k]`` [B, N_k, Dv] with ``masks[k]`` [B, N_k] (1 = attend) or None (attend to all).

    One set for an image-text pair; NLVR2 gives two (the left and the right image), and
    the fusion encoder decides which layer attends to which set. Every set has the
    batch size of the text it is fused with.
    """

    tokens: tuple[torch.Tensor, ...]
    masks: tuple[torch.Tensor | None, ...]

    def __post_init__(self):
        if not self.tokens:
            raise ValueError("VisualInput needs at least one token set")
        if len(self.masks) != len(self.tokens):
            raise ValueError(f"VisualInput: {len(self.tokens)} token sets but {len(self.masks)} masks")

    @classmethod
    def of(cls, tokens: "torch.Tensor | Sequence[torch.Tensor] | VisualInput", masks: Sequence[torch.Tensor | None] | None = None) -> "VisualInput":
        """Wrap a tensor [B, N, Dv] (one set) or a sequence of tensors; a VisualInput is returned as is."""
        if isinstance(tokens, VisualInput):
            return tokens
        sets = (tokens,) if isinstance(tokens, torch.Tensor) else tuple(tokens)
        return cls(sets, tuple(masks) if masks is not None else (None,) * len(sets))

    @property
    def num_sets(self) -> int:
        return len(self.tokens)

    @property
    def batch_size(self) -> int:
        return self.tokens[0].shape[0]

    def index(self, idx: torch.Tensor) -> "VisualInput":
        """The rows ``idx`` [M] of every set (e.g. the negative images of ITM)."""
        return VisualInput(tuple(t[idx] for t in self.tokens), tuple(None if m is None else m[idx] for m in self.masks))

    @staticmethod
    def cat(parts: Sequence["VisualInput"]) -> "VisualInput":
        """Concatenate along the batch (all parts with the same number of sets)."""
        n = {p.num_sets for p in parts}
        if len(n) != 1:
            raise ValueError(f"cannot concatenate visual inputs with {sorted(n)} token sets")
        tokens = tuple(torch.cat([p.tokens[k] for p in parts]) for k in range(parts[0].num_sets))
        masks = []
        for k in range(parts[0].num_sets):
            ms = [p.masks[k] for p in parts]
            if all(m is None for m in ms):
                masks.append(None)
            else:
                masks.append(torch.cat([m if m is not None else torch.ones(p.tokens[k].shape[:2], dtype=torch.long, device=p.tokens[k].device)
                                        for m, p in zip(ms, parts)]))
        return VisualInput(tokens, tuple(masks))
