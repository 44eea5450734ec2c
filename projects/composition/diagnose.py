#!/usr/bin/env python
"""Where relation understanding fails: two measurements on a checkpoint of the synthetic world.

    python projects/composition/diagnose.py --run-dir output/synthetic [--weights model_final.pth]

1. Text side: the mean cosine between the ITC text feature of each test caption and that
   of the same caption with its relation flipped / its objects exchanged (1.0 = the text
   encoder cannot tell them apart; a bag-of-words encoder gives exactly 1).
2. Image side: how well the image encoder's output patch tokens encode where they are, as
   the R^2 of a least-squares linear read-out of each patch's column index (fit on half of
   the test images, scored on the other half; 1.0 = position fully available).

Uses the run's ``config.yaml`` and the synthetic test split it names.
"""
from __future__ import annotations

import argparse
import os
import random
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--weights", default="model_final.pth")
    args = p.parse_args(argv)

    import torch
    from omegaconf import OmegaConf

    from albef.checkpoint import ALBEFCheckpointer
    from albef.config import load_config
    from albef.data.caption_edits import load_edit_rules
    from albef.data.datasets.retrieval_eval import RetrievalEvalJSON
    from albef.data.tokenization import build_tokenizer, tokenize
    from albef.evaluation.composition import world_manifest
    from albef.modeling import build_model

    cfg = load_config(os.path.join(args.run_dir, "config.yaml"))
    tok = build_tokenizer(cfg.data.tokenizer)
    model = build_model(cfg, tok).eval()
    ALBEFCheckpointer(model).load_weights(os.path.join(args.run_dir, args.weights))
    test = cfg.data.test.ann_file
    edits = load_edit_rules("shapes_world", world_manifest(test))
    ds = RetrievalEvalJSON(ann_file=test, image_root=cfg.data.test.image_root, transforms=OmegaConf.to_container(cfg.data.transforms, resolve=True))

    def feats(texts):
        enc = tokenize(tok, texts, cfg.data.max_tokens, pad_to_max=True, mode=cfg.data.tokenization)
        with torch.no_grad():
            return model.encode_text(enc["input_ids"], enc["attention_mask"])[1]

    base = feats(ds.text)
    print(f"{args.run_dir}/{args.weights}: {len(ds.text)} test captions")
    for kind in ("relation_flip", "object_exchange", "attribute_change", "binding"):
        edited = [edits.edit(t, kind, random.Random(t)) for t in ds.text]
        cos = (base * feats(edited)).sum(1)
        print(f"  text feature cosine, caption vs {kind}: mean {cos.mean():.5f}, min {cos.min():.5f}")

    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    with torch.no_grad():
        tokens, _ = model.encode_image(images)
    n, grid = tokens.shape[0], int(round((tokens.shape[1] - 1) ** 0.5))
    patches = tokens[:, -grid * grid:].float()  # [n, grid*grid, D], row-major patches after the prefix token(s)
    x = torch.cat([patches.reshape(-1, patches.shape[-1]), torch.ones(n * grid * grid, 1)], 1)
    col = (torch.arange(grid * grid) % grid).float().repeat(n)
    half = (n // 2) * grid * grid
    sol = torch.linalg.lstsq(x[:half], col[:half, None]).solution
    pred = (x[half:] @ sol).squeeze(1)
    r2 = 1 - ((pred - col[half:]) ** 2).mean() / col[half:].var()
    print(f"  image tokens: linear read-out of the patch column, R^2 = {r2:.3f} (held-out half of {n} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
