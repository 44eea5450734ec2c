"""What the fusion encoder attends to: one or more sets of visual tokens, each with a mask."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class CrossKV:
    """The cross-attention keys and values of every fusion layer for a batch of visual
    inputs, computed once (``CrossAttentionFusion.project_visual``) and reused by every
    pair an image takes part in: ITM's positives and mined negatives, MLM, re-ranking.

    ``keys[i]``, ``values[i]``: [B, heads, N, d] for fusion layer i. ``owner``: the fusion
    module whose weights made them; another module (the teacher's copy) ignores them and
    projects the tokens itself.
    """

    owner: object
    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    def index(self, idx: torch.Tensor) -> "CrossKV":
        return CrossKV(self.owner, tuple(k[idx] for k in self.keys), tuple(v[idx] for v in self.values))


@dataclass(frozen=True)
class VisualInput:
    """``tokens[k]`` [B, N_k, Dv] with ``masks[k]`` [B, N_k] (1 = attend) or None (attend to all).

    One set for an image-text pair; NLVR2 gives two (the left and the right image), and
    the fusion encoder decides which layer attends to which set. Every set has the
    batch size of the text it is fused with.

    ``kv``: optionally, the fusion layers' cross-attention keys and values of these
    tokens (:class:`CrossKV`), so that rows indexed or concatenated from the same
    images reuse them instead of projecting the same image again.
    """

    tokens: tuple[torch.Tensor, ...]
    masks: tuple[torch.Tensor | None, ...]
    kv: CrossKV | None = None

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
        return VisualInput(
            tuple(t[idx] for t in self.tokens), tuple(None if m is None else m[idx] for m in self.masks),
            None if self.kv is None else self.kv.index(idx),
        )

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
        kvs = [p.kv for p in parts]
        kv = None
        if all(x is not None and x.owner is kvs[0].owner for x in kvs):  # otherwise projected again
            kv = CrossKV(kvs[0].owner, tuple(torch.cat(ks) for ks in zip(*(x.keys for x in kvs))),
                         tuple(torch.cat(vs) for vs in zip(*(x.values for x in kvs))))
        return VisualInput(tokens, tuple(masks), kv)
