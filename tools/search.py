"""Search an image index (tools/index_images.py): text -> image, image -> text (the indexed
captions) and image -> image, by ITC cosine similarity, optionally re-ranked by ITM.

    python tools/search.py --index output/test.index "a red circle left of a blue square" [--k 10] [--rerank itm]
    python tools/search.py --index output/test.index --image QUERY.jpg [--target texts|images|both]

The model defaults to the one recorded in the index (``--model`` overrides it; its features
must have the index's dimension). ``--rerank itm`` takes ``--pool`` (default 4k) candidates by
ITC and re-sorts them by the ITM match probability. ``--backend``: ``exact`` (torch matmul),
``faiss-flat`` or ``faiss-ivf`` (``pip install 'albef[search]'``). Prints rank, score and path
(or caption), and the ITM probability when re-ranked. Library: :class:`albef.inference.index.ImageIndex`.
Exit status: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _print(title: str, hits) -> None:
    print(title)
    reranked = bool(hits) and hits[0].itm_probability is not None
    print("rank  score   " + ("itm     " if reranked else "") + "hit")
    for h in hits:
        itm = f"{h.itm_probability:.4f}  " if reranked else ""
        print(f"{h.rank:>4}  {h.score:.4f}  {itm}{h.path if h.path is not None else h.text}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("query", nargs="?", default=None, help="a text query (text -> image)")
    p.add_argument("--index", required=True, help="index folder written by tools/index_images.py")
    p.add_argument("--image", default=None, help="an image query (image -> text and image -> image)")
    p.add_argument("--target", choices=("images", "texts", "both"), default=None,
                   help="what an image query retrieves (default: both when the index has texts, else images)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--rerank", choices=("itm",), default=None)
    p.add_argument("--pool", type=int, default=None, help="ITC candidates re-ranked by ITM (default 4k)")
    p.add_argument("--backend", choices=("exact", "faiss-flat", "faiss-ivf"), default="exact")
    p.add_argument("--nprobe", type=int, default=None, help="faiss-ivf: inverted lists visited per query")
    p.add_argument("--model", default=None, help="default: the model recorded in the index")
    p.add_argument("--device", default=None, help="default: cuda if available")
    args = p.parse_args(argv)
    if args.query is None and args.image is None:
        print("error: give a text query, --image QUERY, or both", file=sys.stderr)
        return 2
    if args.k < 1:
        print(f"error: --k must be >= 1, got {args.k}", file=sys.stderr)
        return 2

    import albef
    from albef.checkpoint.checkpointer import CheckpointMismatchError
    from albef.inference.index import ImageIndex

    try:
        index = ImageIndex.load(args.index, args.backend, nprobe=args.nprobe)
        name = args.model or index.model_name
        if not name:
            raise ValueError(f"{os.path.join(args.index, 'index.json')} records no model: pass --model")
        model, preprocess = albef.load(name, device=args.device)
        index.check_model(model)
        if args.query is not None:
            hits = index.search_text(model, preprocess, [args.query], args.k, rerank=args.rerank, pool=args.pool)[0]
            _print(f"text -> images: {args.query!r} ({len(index)} images, {args.backend})", hits)
        if args.image is not None:
            target = args.target or ("both" if index.texts else "images")
            for t in (("texts", "images") if target == "both" else (target,)):
                rr = args.rerank if t == "texts" else None  # ITM scores (image, text) pairs only
                hits = index.search_image(model, preprocess, [args.image], args.k, t, rerank=rr, pool=args.pool)[0]
                n = len(index.texts) if t == "texts" else len(index)
                _print(f"image -> {t}: {args.image} ({n} {t}, {args.backend})", hits)
    except (ValueError, OSError, ImportError, CheckpointMismatchError) as e:
        print(f"error: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
