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

    ``keys[i]``, ``values[i]``: [B0, heads, N, d] for fusion layer i, one row per distinct
    image; ``rows`` [B] (or None: row b is image b): which of them each pair uses. Indexing
    and concatenating only move ``rows``; a fusion layer gathers its own keys/values when it
    runs (one layer at a time, inside activation checkpointing when that is on).
    ``owner``: the attention modules (one per layer) whose weights made them; other
    modules (the teacher's copies) ignore them and project the tokens themselves.
    """

    owner: tuple
    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    rows: torch.Tensor | None = None

    @property
    def num_rows(self) -> int:
        return self.keys[0].shape[0] if self.rows is None else self.rows.shape[0]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values) [B, heads, N, d] of layer i, one row per pair."""
        k, v = self.keys[i], self.values[i]
        if self.rows is None:
            return k, v
        return k.index_select(0, self.rows), v.index_select(0, self.rows)

    def index(self, idx: torch.Tensor) -> "CrossKV":
        rows = idx if self.rows is None else self.rows[idx]
        return CrossKV(self.owner, self.keys, self.values, rows)

    @staticmethod
    def cat(parts: Sequence["CrossKV | None"]) -> "CrossKV | None":
        """Concatenated rows when every part indexes the same projections, else None."""
        first = parts[0]
        if any(p is None or p.keys is not first.keys or p.values is not first.values for p in parts):
            return None
        rows = [p.rows if p.rows is not None else torch.arange(p.keys[0].shape[0], device=p.keys[0].device) for p in parts]
        return CrossKV(first.owner, first.keys, first.values, torch.cat(rows))


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
        return VisualInput(tokens, tuple(masks), CrossKV.cat([p.kv for p in parts]))  # None: projected again
