#!/usr/bin/env python
"""Train an uncased WordPiece vocabulary from caption JSON files, so runs need no download.

    python tools/build_vocab.py --ann-files my_pairs.json [more.json ...] --out-dir my_vocab [--vocab-size 30522]

Then train with ``data.tokenizer=my_vocab/vocab.txt``.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from albef.data.files import DataError  # noqa: E402
from albef.data.vocab import build_wordpiece_vocab  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ann-files", nargs="+", required=True, help="JSON files with 'caption' (str or list) entries")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--vocab-size", type=int, default=30522)
    p.add_argument("--min-frequency", type=int, default=1)
    p.add_argument("--max-words", type=int, default=30)
    args = p.parse_args(argv)
    for f in args.ann_files:
        if not os.path.exists(f):
            print(f"error: annotation file not found: {f}", file=sys.stderr)
            return 2
    try:
        path = build_wordpiece_vocab(args.ann_files, args.out_dir, args.vocab_size, args.min_frequency, args.max_words)
    except (DataError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with open(path, encoding="utf-8") as f:
        n = sum(1 for _ in f)
    print(f"wrote {path} ({n} tokens); train with data.tokenizer={path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
