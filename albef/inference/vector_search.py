"""Nearest neighbours by inner product over L2-normalised vectors (cosine similarity): the
backends an :class:`~albef.inference.index.ImageIndex` searches with.

- ``exact``: a torch matmul + ``topk``, query rows in batches (the default; exact by construction).
- ``faiss-flat``: ``faiss.IndexFlatIP``, also exhaustive (the same ids and scores as exact, to
  float tolerance), faster per query on large collections.
- ``faiss-ivf``: ``faiss.IndexIVFFlat`` with ``nlist ~ sqrt(N)`` inverted lists trained on the
  vectors; a query visits ``nprobe`` lists, so it is approximate (recall < 1 below ``nprobe = nlist``).

faiss is optional: ``pip install 'albef[search]'``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

BACKENDS = ("exact", "faiss-flat", "faiss-ivf")


def require_faiss():
    """The ``faiss`` module, or an ImportError naming the extra that installs it."""
    try:
        import faiss
    except ImportError as e:
        raise ImportError("faiss is not installed (needed by the faiss-flat / faiss-ivf backends): "
                          "pip install 'albef[search]'") from e
    return faiss


def _as_matrix(x: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ValueError(f"{what} must be a matrix [N, E], got shape {tuple(x.shape)}")
    return x.float().contiguous()


class ExactSearch:
    """Exhaustive search: ``scores = queries @ vectors.T`` and ``topk``, ``query_batch`` query
    rows at a time (the score matrix of one batch is [query_batch, N])."""

    name = "exact"

    def __init__(self, vectors: torch.Tensor, query_batch: int = 256):
        self.vectors = _as_matrix(vectors, "vectors")  # [N, E]
        self.query_batch = int(query_batch)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries [Q, E] -> (scores [Q, k'], ids [Q, k']) best first, k' = min(k, N)."""
        q = _check_queries(queries, self.dim)
        k = min(int(k), len(self))
        scores, ids = [], []
        for s in range(0, q.shape[0], self.query_batch):
            top = torch.topk(q[s : s + self.query_batch] @ self.vectors.t(), k, dim=1)
            scores.append(top.values)
            ids.append(top.indices)
        if not scores:
            return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
        return torch.cat(scores), torch.cat(ids)


class FaissSearch:
    """A faiss index over the vectors: ``kind`` ``flat`` (IndexFlatIP, exhaustive) or ``ivf``
    (IndexIVFFlat with ``nlist`` lists, default ``round(sqrt(N))``, trained by k-means on the
    vectors themselves; ``nprobe`` lists visited per query, default ``min(nlist, 8)``).

    An IVF query whose visited lists hold fewer than k vectors gets id -1 (score -inf) in the
    missing places."""

    def __init__(self, vectors: torch.Tensor, kind: str = "flat", nlist: int | None = None, nprobe: int | None = None):
        faiss = require_faiss()
        x = _as_matrix(vectors, "vectors").numpy()
        n, d = x.shape
        if n == 0:
            raise ValueError("cannot build a faiss index over 0 vectors")
        self.kind = kind
        self.name = f"faiss-{kind}"
        self._n, self._d = n, d
        if kind == "flat":
            self.index = faiss.IndexFlatIP(d)
            self.nlist = self.nprobe = None
        elif kind == "ivf":
            self.nlist = max(1, min(n, int(nlist) if nlist else round(math.sqrt(n))))
            quantizer = faiss.IndexFlatIP(d)
            self.index = faiss.IndexIVFFlat(quantizer, d, self.nlist, faiss.METRIC_INNER_PRODUCT)
            self.index.train(x)
            self._quantizer = quantizer  # the IVF index points at it: keep it alive as long as the index
            self.set_nprobe(nprobe if nprobe is not None else min(self.nlist, 8))
        else:
            raise ValueError(f"faiss index kind must be 'flat' or 'ivf', got {kind!r}")
        self.index.add(x)

    def set_nprobe(self, nprobe: int) -> None:
        """Lists visited per IVF query (clamped to [1, nlist]; nlist makes the search exhaustive)."""
        if self.kind != "ivf":
            raise ValueError("nprobe applies to the faiss-ivf backend only")
        self.nprobe = max(1, min(int(nprobe), self.nlist))
        self.index.nprobe = self.nprobe

    def __len__(self) -> int:
        return self._n

    @property
    def dim(self) -> int:
        return self._d

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries [Q, E] -> (scores [Q, k'], ids [Q, k']) best first, k' = min(k, N)."""
        q = _check_queries(queries, self.dim).numpy()
        k = min(int(k), self._n)
        scores, ids = self.index.search(q, k)
        scores, ids = torch.from_numpy(scores), torch.from_numpy(ids).long()
        return scores.masked_fill(ids < 0, float("-inf")), ids


def _check_queries(queries, dim: int) -> torch.Tensor:
    q = _as_matrix(queries, "queries")
    if q.shape[1] != dim:
        raise ValueError(f"queries have dimension {q.shape[1]}, the indexed vectors {dim}")
    return q


def make_backend(vectors: torch.Tensor, backend: str = "exact", *, nlist: int | None = None, nprobe: int | None = None):
    """The search structure ``backend`` (one of :data:`BACKENDS`) over ``vectors`` [N, E]."""
    if backend == "exact":
        return ExactSearch(vectors)
    if backend == "faiss-flat":
        return FaissSearch(vectors, "flat")
    if backend == "faiss-ivf":
        return FaissSearch(vectors, "ivf", nlist=nlist, nprobe=nprobe)
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def recall_at_k(approx_ids: torch.Tensor, exact_ids: torch.Tensor) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k (ids [Q, k] each)."""
    if approx_ids.shape != exact_ids.shape:
        raise ValueError(f"id matrices differ in shape: {tuple(approx_ids.shape)} vs {tuple(exact_ids.shape)}")
    hit = (approx_ids[:, :, None] == exact_ids[:, None, :]).any(dim=2)  # [Q, k]
    return float(hit.float().mean())
