"""Where a grounding model's Grad-CAM puts the heat on the synthetic world, per expression kind and per word.

    python projects/grounding/analyze_synthetic_grounding.py --output-dir output/grounding_synthetic [--weights FILE]
        [--split test] [--layer N]

``--output-dir``: a synthetic grounding run (its config builds the model and the data);
``--weights``: the checkpoint to analyse (default: the run's ``model_final.pth``; any
checkpoint with an ITM head fits, e.g. the default job's pretraining checkpoint, adapted
as ``model.weights`` would be). Prints two Markdown tables:

1. accuracy at IoU >= 0.5 per expression kind (the data's manifest records it), with the
   ITM Grad-CAM (fusion layer ``--layer``, default the config's) and the ITC variant;
2. for each test image's scene caption ("a red circle left of a blue square"), the share of
   each colour word's and shape word's map (unique in the image) that lies inside its
   object's ground-truth box, on the patch grid (:func:`albef.modeling.gradcam.box_mass`),
   beside the share of a uniform map (the box's area fraction).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # run from a checkout without installing

from albef.data.synthetic.scenes import canonical_caption  # noqa: E402
from albef.data.tokenization import tokenize  # noqa: E402
from albef.modeling.gradcam import box_mass, itc_gradcam, itm_gradcam, word_maps  # noqa: E402
from projects.synthetic_tasks.run import build_evaluators, load_config_of_run, load_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--weights", default=None, help="checkpoint to analyse (default: OUTPUT_DIR/model_final.pth)")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--layer", type=int, default=None)
    args = p.parse_args(argv)
    cfg = load_config_of_run(args.output_dir)
    if cfg.data.get("synthetic_task") is None or cfg.data.synthetic_task.task != "grounding":
        print(f"error: {args.output_dir} is not a synthetic grounding run", file=sys.stderr)
        return 2
    run = load_run(cfg, args.weights or os.path.join(args.output_dir, "model_final.pth"), strict=False)
    model, evaluators = run.model, build_evaluators(run)
    ev_key = next(k for k, v in evaluators.items() if getattr(v, "gradcam", None) == "itm")
    ev = evaluators[ev_key]
    layer = ev.layer if args.layer is None else args.layer
    ds = ev.dataset
    root = os.path.join(cfg.data.synthetic.root, "grounding")
    with open(os.path.join(root, "manifest.json")) as f:
        manifest = json.load(f)
    kinds = {}
    offset = 0
    for split in ("val", "test"):  # the evaluator's files are val.json then test.json
        for k in manifest["kinds"][split]:
            kinds[offset] = (split, k)
            offset += 1
    acc = defaultdict(lambda: [0, 0, 0])  # kind -> [itm correct, itc correct, n]
    for batch in ev.loader_fn(ds, 64):
        batch.pop("skipped", None)
        batch = {k: v.to(run.device) if hasattr(v, "to") else v for k, v in batch.items()}
        cam = itm_gradcam(model, batch["image"], batch["input_ids"], batch["attention_mask"], layer=layer)
        itc = itc_gradcam(model, batch["image"], batch["input_ids"], batch["attention_mask"], block=evaluators.get("grounding_itc", ev).block)
        for j, i in enumerate(batch["index"].tolist()):
            split, kind = kinds[i]
            if split != args.split:
                continue
            row = acc[kind]
            row[0] += int(ev.hit(cam.sentence[j], i))
            row[1] += int(ev.hit(itc.sentence[j], i))
            row[2] += 1
    # per word, on each image's scene caption
    mass: dict[str, list[float]] = defaultdict(list)
    uniform: list[float] = []
    first = next(i for i, (sp, _) in kinds.items() if sp == args.split)
    for n_img, objs in enumerate(manifest["objects"][args.split]):
        i = first + 2 * n_img  # one expression per object: image n's first expression
        image = ds[i]["image"][None].to(run.device)
        w, h = ds.image_size(i)
        enc = tokenize(run.tokenizer, [canonical_caption(tuple(manifest["scenes"][args.split][2 * n_img]))], cfg.data.max_tokens)
        enc = {k: v.to(run.device) for k, v in enc.items()}
        cam = itm_gradcam(model, image, enc["input_ids"], enc["attention_mask"], layer=layer)
        words = {w: m.cpu() for w, m in word_maps(cam.tokens[0], enc["input_ids"][0].tolist(), run.tokenizer)}
        for k, o in enumerate(objs):
            for role, key in (("colour word", "color"), ("shape word", "shape")):
                if objs[1 - k][key] != o[key]:
                    share = box_mass(words[o[key]], o["bbox"], (w, h))
                    if share == share:  # nan: an all-zero map
                        mass[role].append(share)
            uniform.append(o["bbox"][2] * o["bbox"][3] / (w * h))
    print(f"| expression kind ({args.split}) | expressions | ITM Grad-CAM (layer {layer}) | ITC Grad-CAM |\n|---|---|---|---|")
    tot = [0, 0, 0]
    for kind, (a, b, n) in sorted(acc.items()):
        print(f"| {kind} | {n} | {100 * a / n:.1f} | {100 * b / n:.1f} |")
        tot = [tot[0] + a, tot[1] + b, tot[2] + n]
    print(f"| all | {tot[2]} | {100 * tot[0] / tot[2]:.1f} | {100 * tot[1] / tot[2]:.1f} |\n")
    print(f"| scene captions ({args.split}), ITM Grad-CAM layer {layer} | maps | share of the map inside its object's box |\n|---|---|---|")
    for role, vals in mass.items():
        print(f"| {role} | {len(vals)} | {100 * sum(vals) / len(vals):.1f}% |")
    print(f"| a uniform map (box area / image area) | {len(uniform)} | {100 * sum(uniform) / len(uniform):.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
