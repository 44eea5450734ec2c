#!/usr/bin/env python
"""Write WebDataset tar shards of pretraining pairs in the official JSON format.

    python tools/make_shards.py --ann-files A.json [B.json ...] --image-root DIR --out OUTDIR
        [--shard-size 1000] [--resize S] [--workers N] [--caption-key caption] [--prefix shard] [--overwrite]

Images that are missing, unreadable or truncated, and entries with an empty caption, are
left out and named in OUTDIR/skipped.txt (never a crash). OUTDIR/index.json, written last,
lists the shards and their sample counts; a training config points at OUTDIR
(``data.train: {name: WebDatasetPretrain, shards: OUTDIR}``). The format is described in
``albef/data/shards.py``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ann-files", nargs="+", required=True, metavar="JSON")
    p.add_argument("--image-root", default="", help="prefix of relative image paths")
    p.add_argument("--out", required=True, metavar="OUTDIR")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--resize", type=int, help="shorter image side in pixels (larger images are downscaled and re-encoded)")
    p.add_argument("--workers", type=int, default=1, help="processes that read, check and resize the images (output is the same for any N)")
    p.add_argument("--caption-key", default="caption", help="the entries' text key (caption; text in grounding files)")
    p.add_argument("--prefix", default="shard", help="shard file names: PREFIX-000000.tar, ...")
    p.add_argument("--overwrite", action="store_true", help="replace a shard set already in OUTDIR")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from albef.data.shards import make_shards
    from albef.utils.errors import USER_ERRORS, report_user_error

    try:
        idx = make_shards(args.ann_files, args.image_root, args.out, shard_size=args.shard_size, resize=args.resize,
                          workers=args.workers, caption_key=args.caption_key, prefix=args.prefix, overwrite=args.overwrite)
    except (ValueError, *USER_ERRORS) as e:  # a bad flag or annotation file: one line naming it, exit 2
        report_user_error(e)
        return 2
    print(f"wrote {idx['num_samples']} samples ({idx['num_image_ids']} image ids) in {len(idx['shards'])} shard(s) to {args.out}; "
          f"skipped {idx['num_skipped']} (see {os.path.join(args.out, 'skipped.txt')}); index: {os.path.join(args.out, 'index.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
