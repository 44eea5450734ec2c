#!/usr/bin/env python
"""Generate the built-in synthetic shapes data set (JPEGs + official-format JSON + vocab.txt).

    python tools/make_synthetic_data.py --root datasets/albef_synthetic [--seed 0] [--num-train-images 6000]

The default job does this itself on first use (``data.synthetic`` in configs/pretrain/synthetic.yaml).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from albef.data.synthetic.shapes import generate_synthetic, synthetic_paths  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="datasets/albef_synthetic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-train-images", type=int, default=6000)
    p.add_argument("--num-test-groups", type=int, default=25)
    p.add_argument("--no-holdout", action="store_true", help="let test scenes also appear in training")
    args = p.parse_args(argv)
    t = time.time()
    try:
        manifest = generate_synthetic(
            args.root, seed=args.seed, image_size=args.image_size, num_train_images=args.num_train_images,
            num_test_groups=args.num_test_groups, holdout_test_scenes=not args.no_holdout,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"paths": synthetic_paths(args.root), "counts": manifest.get("counts")}, indent=1))
    print(f"done in {time.time() - t:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
