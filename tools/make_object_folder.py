#!/usr/bin/env python
"""Make the synthetic world's zero-shot benchmark: its test split as one-object images in
the ImageFolder layout (one class per colour-shape pair; see albef/data/synthetic/object_folder.py).

    python tools/make_object_folder.py --world datasets/albef_synthetic --out datasets/albef_synthetic_objects
    python tools/zero_shot.py --model output/synthetic/model_final.pth --images datasets/albef_synthetic_objects
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from albef.data.synthetic.object_folder import make_object_folder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", required=True, help="a generated synthetic world (tools/make_synthetic_data.py --root)")
    p.add_argument("--out", required=True, help="the ImageFolder to write (must not exist or be empty)")
    args = p.parse_args(argv)
    try:
        info = make_object_folder(args.world, args.out)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {info['images']} images in {len(info['classes'])} classes "
          f"(from {info['source']['test_images']} test images of {args.world})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
