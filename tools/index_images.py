"""Index a folder of images for search: the model's normalised ITC image features, written
as ``embeddings.safetensors`` + ``index.json`` in the folder ``--out``.

    python tools/index_images.py --model output/synthetic/model_final.pth \
        --images datasets/albef_synthetic/images/test --out output/test.index [--texts captions.txt]

Walks ``--images`` recursively, encodes the images in batches (a progress bar with rate and
ETA), skips unreadable files (printed, and listed in index.json). Resumable: progress is
written every ``--chunk-batches`` batches; the same command run again after an interruption
continues where it stopped (``--no-resume`` starts over). ``--texts``: a caption file (one per
line, or a JSON list of strings) indexed as well, for image->text search with tools/search.py.
Library: :meth:`albef.inference.index.ImageIndex.build`. Exit status: 0 done (or stopped by
``--stop-after-chunks``), 2 bad input.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a checkpoint, model folder, zoo name or hf-hub:org/repo (albef.load)")
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="index folder to write")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--texts", default=None, help="captions to index too: a .txt file (one per line) or a JSON list")
    p.add_argument("--chunk-batches", type=int, default=8, help="batches per progress chunk written to disk")
    p.add_argument("--workers", type=int, default=0, help="image-decoding worker processes")
    p.add_argument("--device", default=None, help="default: cuda if available")
    p.add_argument("--no-resume", action="store_true", help="start over even if an unfinished build is there")
    p.add_argument("--stop-after-chunks", type=int, default=None, help="stop after writing N chunks (resume later)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    import albef
    from albef.checkpoint.checkpointer import CheckpointMismatchError
    from albef.inference.index import ImageIndex, read_texts

    if not os.path.isdir(args.images):
        print(f"error: --images {args.images}: not a directory", file=sys.stderr)
        return 2
    try:
        texts = read_texts(args.texts) if args.texts else None
        model, preprocess = albef.load(args.model, device=args.device)
        name = os.path.abspath(args.model) if os.path.exists(args.model) else args.model
        res = ImageIndex.build(model, preprocess, args.images, args.out, args.batch_size, resume=not args.no_resume,
                               texts=texts, model_name=name, chunk_batches=args.chunk_batches, num_workers=args.workers,
                               stop_after_chunks=args.stop_after_chunks, progress=not args.quiet)
    except (ValueError, OSError, ImportError, CheckpointMismatchError) as e:
        print(f"error: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    for f, reason in res.skipped:
        print(f"skipped {f}: {reason}")
    done = f"{res.total - len(res.skipped)} images" if res.complete else "partial"
    rate = f", {res.images_per_second:.1f} images/s" if res.encoded else ""
    if not res.complete:
        print(f"stopped after {args.stop_after_chunks} chunk(s): {res.encoded} images encoded in this run{rate}; "
              f"run the same command again to continue")
        return 0
    extra = f" + {len(res.index.texts)} texts" if res.index.texts else ""
    print(f"index {args.out}: {done}{extra} ({len(res.skipped)} skipped), {res.encoded} encoded in this run{rate}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
