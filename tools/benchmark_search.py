"""Benchmark image search: index build images/s with a model on image folders, and query
latency (ms per query, batches of 1 and 64) of exact / faiss-flat / faiss-ivf search on
synthetic normalised vectors, with faiss-ivf recall@10 against exact (on the synthetic vectors,
and, given two or more folders, on the model's features of the last one queried by the first one's).

    OMP_NUM_THREADS=1 python tools/benchmark_search.py --model output/synthetic/model_final.pth \
        --images datasets/albef_synthetic/images/test [--images DIR2 ...] [--sizes 10000 100000] [--json out.json]

Dimensions: 256 (the paper's embed_dim) and the model's. Median [min, max] of ``--runs`` runs.
Prints markdown tables (docs/search.md). Library: :mod:`albef.inference.search_benchmark`.
Needs faiss (``pip install 'albef[search]'``). Exit status: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--images", action="append", required=True, help="image folder to index (repeatable)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000], help="numbers of synthetic vectors")
    p.add_argument("--dims", type=int, nargs="+", default=None, help="default: 256 and the model's embed_dim")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the raw results here")
    args = p.parse_args(argv)
    for d in args.images:
        if not os.path.isdir(d):
            print(f"error: --images {d}: not a directory", file=sys.stderr)
            return 2

    import torch

    import albef
    from albef.inference import search_benchmark as sb
    from albef.inference.vector_search import require_faiss
    from albef.utils.errors import USER_ERRORS

    try:
        require_faiss()
        model, preprocess = albef.load(args.model, device=args.device)
    except (ValueError, OSError, ImportError, *USER_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}", file=sys.stderr)
    build, feats = [], []
    for d in args.images:
        r, f = sb.time_index_build(model, preprocess, d, args.batch_size, args.runs)
        build.append(dict(r, name=d))
        feats.append(f)
        print(f"build {d}: {sb.Spread(**r['images_per_s']).fmt(1)} images/s", file=sys.stderr)
    dims = args.dims or sorted({256, int(model.embed_dim)}, reverse=True)
    latency, recall = [], []
    for n in args.sizes:
        for dim in dims:
            latency += sb.time_queries(n, dim, runs=args.runs)
            recall += sb.ivf_recall(n, dim)
            print(f"queries n={n} dim={dim} done", file=sys.stderr)
    if len(feats) > 1:  # the model's own image features: the last folder indexed, the first one's images as queries
        recall += [dict(r, vectors=f"images of {args.images[-1]}, queries {args.images[0]}") for r in sb.ivf_recall_of(feats[-1], feats[0])]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"build": build, "latency": latency, "recall": recall}, f, indent=1)
    print(sb.markdown(build, latency, recall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
