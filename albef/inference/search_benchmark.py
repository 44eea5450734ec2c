"""Measurements of image search (tools/benchmark_search.py): index build throughput with a real
model, and query latency and IVF recall of the backends on synthetic normalised vectors.

Every figure is the median of ``runs`` repetitions, with its spread [min, max]. Latency is
wall time per query: a batch of 1 is ``n_queries`` single-query calls, a batch of 64 is
``n_queries / 64`` calls of 64 queries; one warm-up call first (not timed).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass

import torch

from albef.inference.index import ImageIndex, list_images
from albef.inference.vector_search import BACKENDS, ExactSearch, make_backend, recall_at_k


@dataclass
class Spread:
    """Median and [min, max] of repeated measurements."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, xs: list[float]) -> "Spread":
        return cls(statistics.median(xs), min(xs), max(xs))

    def fmt(self, digits: int = 2) -> str:
        return f"{self.median:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def synthetic_vectors(n: int, dim: int, seed: int) -> torch.Tensor:
    """[n, dim] float32 rows drawn uniformly on the unit sphere (normalised Gaussians)."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)


def time_index_build(model, preprocess, image_dir: str, batch_size: int = 64, runs: int = 3) -> tuple[dict, torch.Tensor]:
    """Images/s of :meth:`ImageIndex.build` over ``image_dir`` (from scratch, into a temporary
    folder, no progress bar; wall time of the whole build: listing, decoding, encoding, writing),
    and the image features [N, E] it made."""
    rates = []
    n = len(list_images(image_dir))
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            res = ImageIndex.build(model, preprocess, image_dir, out, batch_size, resume=False, progress=False)
            rates.append(res.encoded / (time.perf_counter() - t0))
            feats = res.index.image_feat
    return {"images": n, "batch_size": batch_size, "images_per_s": asdict(Spread.of(rates))}, feats


def _ms_per_query(backend, queries: torch.Tensor, batch: int, k: int, runs: int) -> Spread:
    backend.search(queries[:batch], k)  # warm-up
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for s in range(0, queries.shape[0], batch):
            backend.search(queries[s : s + batch], k)
        out.append((time.perf_counter() - t0) * 1000 / queries.shape[0])
    return Spread.of(out)


def time_queries(n: int, dim: int, backends=BACKENDS, batch_sizes=(1, 64), k: int = 10, runs: int = 3,
                 n_queries: int = 256, nprobe: int | None = None, seed: int = 0) -> list[dict]:
    """Per backend: build seconds, and ms per query (median [min, max] of ``runs``) at each batch size,
    over ``n`` synthetic normalised vectors of dimension ``dim``."""
    vectors, queries = synthetic_vectors(n, dim, seed), synthetic_vectors(n_queries, dim, seed + 1)
    rows = []
    for name in backends:
        t0 = time.perf_counter()
        backend = make_backend(vectors, name, nprobe=nprobe)
        build_s = time.perf_counter() - t0
        row = {"n": n, "dim": dim, "backend": name, "build_s": build_s, "nprobe": getattr(backend, "nprobe", None),
               "nlist": getattr(backend, "nlist", None)}
        for b in batch_sizes:
            row[f"ms_per_query_batch{b}"] = asdict(_ms_per_query(backend, queries, b, k, runs))
        rows.append(row)
    return rows


def ivf_recall(n: int, dim: int, nprobes=(1, 8, 32, None), k: int = 10, n_queries: int = 256, seed: int = 0) -> list[dict]:
    """faiss-ivf recall@k against exact search at each ``nprobe`` (None: all nlist lists), on
    ``n`` synthetic vectors (uniform on the sphere: no cluster structure, the hard case for IVF)."""
    rows = ivf_recall_of(synthetic_vectors(n, dim, seed), synthetic_vectors(n_queries, dim, seed + 1), nprobes, k)
    return [dict(r, vectors="synthetic") for r in rows]


def ivf_recall_of(vectors: torch.Tensor, queries: torch.Tensor, nprobes=(1, 8, 32, None), k: int = 10) -> list[dict]:
    """faiss-ivf recall@k against exact search of ``queries`` [Q, E] over ``vectors`` [N, E] at each ``nprobe``."""
    n, dim = vectors.shape
    _, exact = ExactSearch(vectors).search(queries, k)
    ivf = make_backend(vectors, "faiss-ivf")
    rows = []
    for p in nprobes:
        ivf.set_nprobe(ivf.nlist if p is None else p)
        _, ids = ivf.search(queries, k)
        rows.append({"n": n, "dim": dim, "nlist": ivf.nlist, "nprobe": ivf.nprobe, f"recall@{k}": recall_at_k(ids, exact)})
    return rows


def markdown(build: list[dict], latency: list[dict], recall: list[dict]) -> str:
    """The three result tables as markdown."""
    out = ["| images | batch | index build, images/s |", "|---:|---:|---|"]
    for r in build:
        out.append(f"| {r['name']} ({r['images']}) | {r['batch_size']} | {Spread(**r['images_per_s']).fmt(1)} |")
    out += ["", "| vectors | dim | backend | build s | ms/query, batch 1 | ms/query, batch 64 |", "|---:|---:|---|---:|---|---|"]
    for r in latency:
        name = r["backend"] + (f" (nlist {r['nlist']}, nprobe {r['nprobe']})" if r["nprobe"] else "")
        out.append(f"| {r['n']:,} | {r['dim']} | {name} | {r['build_s']:.2f} | {Spread(**r['ms_per_query_batch1']).fmt(3)} | "
                   f"{Spread(**r['ms_per_query_batch64']).fmt(3)} |")
    key = next((k for k in recall[0] if k.startswith("recall@")), "recall@10") if recall else "recall@10"
    out += ["", f"| vectors | dim | nlist | nprobe | faiss-ivf {key} vs exact |", "|---|---:|---:|---:|---:|"]
    for r in recall:
        out.append(f"| {r['n']:,} {r.get('vectors', '')} | {r['dim']} | {r['nlist']} | {r['nprobe']} | {r[key]:.3f} |")
    return "\n".join(out)
