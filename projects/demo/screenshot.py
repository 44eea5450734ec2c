"""The docs' screenshot of the demo: start tools/demo.py on a checkpoint, score an example in
headless Chromium, save the page as a PNG.

    python projects/demo/screenshot.py --model output/synthetic/model_final.pth --out docs/images/demo.png

The image is the first test image of the checkpoint's synthetic world (or --image), the texts
its true caption, the caption with colours it does not have and the relation-flipped one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from projects.demo.browser import chromium, free_port, score_in_page, start_demo, stop, wait_until_served  # noqa: E402


def first_example(model: str, world: str | None) -> tuple[str, str, str]:
    """(image, caption, world folder) of test image 0 of ``world`` or the checkpoint's world."""
    if world is None:
        import albef

        m, _ = albef.load(model, device="cpu")
        world = str(m.config.data.synthetic.root)
    with open(os.path.join(world, "test.json"), encoding="utf-8") as f:
        rec = json.load(f)[0]
    cap = rec["caption"] if isinstance(rec["caption"], str) else rec["caption"][0]
    return os.path.join(world, rec["image"]), cap, world


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--world", default=None, help="synthetic world folder (default: the checkpoint's data.synthetic.root)")
    p.add_argument("--out", default="docs/images/demo.png")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=1000)
    args = p.parse_args(argv)

    from PIL import Image

    from albef.demo.examples import example_colours, probe_texts

    image, caption, world = first_example(args.model, args.world)
    texts = probe_texts(caption, example_colours({}, world))
    port = free_port()
    log = os.path.join(tempfile.gettempdir(), f"albef_demo_{port}.log")
    proc = start_demo(args.model, port, ["--examples", world], log_path=log)
    driver = None
    try:
        wait_until_served(f"http://127.0.0.1:{port}/", proc)
        driver = chromium(args.width, args.height)
        table = score_in_page(driver, f"http://127.0.0.1:{port}/", image, texts)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        driver.save_screenshot(args.out)
    finally:
        if driver is not None:
            driver.quit()
        stop(proc)
    # a palette PNG: the page is flat colours, so 256 of them keep it sharp at a fraction of the size
    Image.open(args.out).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    for text, row in table.items():
        print(f"{row.get('ITM match probability', '?'):>8}  {text}")
    print(f"wrote {args.out} ({os.path.getsize(args.out) // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
