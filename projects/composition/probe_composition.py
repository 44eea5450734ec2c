#!/usr/bin/env python
"""Composition probes: does the model prefer each true caption to the same caption minimally edited?

    python projects/composition/probe_composition.py --config-file configs/pretrain/synthetic.yaml \\
        --weights output/synthetic/model_final.pth --test datasets/albef_synthetic/test.json [--out DIR]
    python projects/composition/probe_composition.py --config-file C --weights W --test my_test.json \\
        --image-root IMAGES --rules my_rules.yaml

For every caption of ``--test`` (a retrieval-format JSON: ``[{image, caption: [str, ...]}]``)
and every edit kind of the rules (relation flipped, the two objects exchanged, one
attribute changed; see ``albef/data/caption_edits.py`` and ``projects/composition/README.md``
for the rules format), the edited caption is scored against the image beside the true
one, with ITM (fused matched-class logit) and ITC (cosine). Printed: the share of
questions whose true caption scores higher, per kind (chance 50%), how many questions each
kind asks and how many captions it does not apply to (or only yields another true caption
of the same image). Each question is asked of the caption and of
its paraphrases (the rules' ``paraphrases`` chains; for the synthetic world "A left of B"
is also asked as "B right of A"), so that preferring one relation word ("left") over its
partner cannot pass for understanding: on the synthetic test split every caption says
"left" or "above", and such a model would score 0% or 100% unbalanced, 50% balanced
(``--no-paraphrases``: the captions as written only). For word-swap kinds (relation flip) of a model
with an MLM head, one more column: masking the caption's relation word, how often the
image-conditioned MLM head ranks the true word above its swap partner ("left" vs
"right"; chance 50%). ``--out DIR`` also writes
``DIR/composition_probe.json`` (the table plus every item's scores).

Rules: ``--rules FILE`` (YAML), or, by default, the built-in rules of the synthetic shapes
world with the colours and shapes of the ``manifest.json`` beside ``--test`` (an error
for other data). ``--weights`` is a checkpoint of ours or an official one (converted on
the fly); the config builds the model. Exit status: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # run from a checkout without installing


def format_table(kinds: dict) -> str:
    mlm = any("mlm" in r for r in kinds.values())
    lines = ["| edit kind | ITM prefers true | ITC prefers true | questions | captions not applicable |" + (" MLM fills in the true word |" if mlm else ""),
             "|---|---|---|---|---|" + ("---|" if mlm else "")]

    def pct(v):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}%"

    for kind, r in kinds.items():
        lines.append(f"| {kind} | {pct(r.get('itm'))} | {pct(r.get('itc'))} | {r['n']} | {r['unmatched']} |"
                     + (f" {pct(r.get('mlm'))} |" if mlm else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True, help="checkpoint to probe (ours or official)")
    p.add_argument("--test", required=True, help="retrieval-format JSON: [{image, caption: [str, ...]}, ...]")
    p.add_argument("--image-root", default=None, help="prefix of relative image paths (default: the --test file's folder)")
    p.add_argument("--rules", default=None, help="YAML edit rules (default: the synthetic world's built-in rules)")
    p.add_argument("--kinds", nargs="+", default=None, help="edit kinds to probe (default: all of the rules')")
    p.add_argument("--out", default=None, help="folder for composition_probe.json")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--no-paraphrases", action="store_true",
                   help="ask only about the captions as written, not also about their paraphrases (the rules' paraphrases chains)")
    p.add_argument("opts", nargs="*", help="config overrides KEY=VALUE")
    args = p.parse_args(argv)

    import torch
    from omegaconf import OmegaConf

    from albef.config import load_config
    from albef.data.caption_edits import EditRulesError, load_edit_rules
    from albef.data.files import DataError
    from albef.data.datasets.retrieval_eval import RetrievalEvalJSON
    from albef.evaluation.composition import evaluate_composition, world_manifest
    from albef.modeling.build import build_model_from_weights
    from torch.utils.data import DataLoader

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    if not os.path.isfile(args.weights):
        return fail(f"--weights {args.weights} does not exist")
    try:
        cfg = load_config(args.config_file, [f"model.weights={args.weights}", *args.opts])
    except (OSError, ValueError) as e:
        return fail(str(e))
    try:
        if args.rules is None:
            manifest = world_manifest(args.test)
            if manifest is None:
                return fail(f"--test {args.test} is not the synthetic world's split (no manifest.json beside it): give --rules FILE")
            edits = load_edit_rules("shapes_world", manifest)
        else:
            edits = load_edit_rules(args.rules)
        kinds = args.kinds or edits.kinds
        edits.subset(kinds)
    except EditRulesError as e:
        return fail(str(e))
    image_root = args.image_root if args.image_root is not None else os.path.dirname(os.path.abspath(args.test))
    try:
        ds = RetrievalEvalJSON(ann_file=args.test, image_root=image_root, transforms=OmegaConf.to_container(cfg.data.transforms, resolve=True),
                               max_words=cfg.data.max_words, strict=True)
    except (DataError, OSError, ValueError) as e:
        return fail(f"--test {args.test}: {e}")
    model, tok, device, amp = build_model_from_weights(cfg, args.weights)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=0, collate_fn=lambda b: {
        "image": torch.stack([s["image"] for s in b]), "index": torch.tensor([s["index"] for s in b])})
    try:
        res = evaluate_composition(model, ds, loader, tok, edits, kinds=kinds, max_tokens=cfg.data.max_tokens, device=device,
                                   amp=amp, tokenization=cfg.data.tokenization, mlm_head="mlm",
                                   balanced=not args.no_paraphrases)
    except DataError as e:
        return fail(str(e))
    print(f"Composition probe: {args.weights} on {args.test} ({len(ds)} images, {len(ds.text)} captions; rules: {edits.source}"
          f"{'' if args.no_paraphrases else ', with paraphrases'})")
    print(format_table(res["kinds"]))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "composition_probe.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"config": args.config_file, "weights": args.weights, "test": args.test, "rules": edits.source, "paraphrases": not args.no_paraphrases,
                       "kinds": res["kinds"], "items": res["items"]}, f, indent=1)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
