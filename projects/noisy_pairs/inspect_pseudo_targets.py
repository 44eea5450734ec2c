#!/usr/bin/env python
"""What the momentum teacher teaches: its pseudo-positive texts for training images.

    python projects/noisy_pairs/inspect_pseudo_targets.py --config-file configs/pretrain/synthetic.yaml \\
        --weights output/synthetic/model_final.pth [--images 8] [--top-k 5] --out DIR [KEY=VALUE ...]

With momentum distillation, ITC's target for an image is not its own caption alone but
``alpha * softmax(s(I_m, T_m) / temp) + (1 - alpha) * y`` (paper eq. 6): the teacher spreads
weight over the texts it finds similar. On a noisy pair (a caption that does not describe
its image) that is the point: if the teacher's top text is a correct description, MoD
pulls the student towards it instead of towards the noise.

For the training set of the config (with ``data.synthetic.noise`` applied, its noisy
copy), the teacher's image features (EMA weights from ``--weights``, test-time image
transform, no augmentation) are matched against a *caption bank*: every distinct caption
of that training set, encoded by the teacher's text encoder. This stands in for the
queue, whose features a checkpoint does not map back to captions; the weights are
the softmax over the bank at the model's temperature (the teacher's distribution, before
mixing with the ground truth).

Written to ``--out``:
  ``pseudo_targets.json``  summary and, per grid image, its caption(s), the clean
                           captions, and the top-k texts with their weights
  ``pseudo_targets.png``   the grid: image | its training caption (and, when corrupted,
                           the clean one) | the teacher's top-k texts with weights,
                           green when the text correctly describes the image

For the synthetic world's noisy training file (a ``corruptions.json`` beside it, see
``albef/data/synthetic/noise.py``) the summary reports, per noise kind and for the clean
pairs, how often the teacher's top-1 text is a correct (complete, true) description of
the image, how often it is the pair's own noisy caption, the mean teacher weight on
correct descriptions, and chance: the share of the bank that correctly describes the
image (a uniformly random bank text's hit rate). A looser measure beside it: whether the
top-1 text names the image's two objects (colour and shape), whatever it says of their
relation or clutter words around it, and its chance. Elsewhere there is no record of what
is correct, and only the top texts are reported. Exit status: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # run from a checkout without installing


def pick_grid(kinds: list[str], n: int, seed: int) -> list[int]:
    """``n`` image indices, taking the kinds (``clean`` and each noise kind) in turn so
    every kind present is shown; deterministic in ``seed``."""
    by: dict[str, list[int]] = {}
    for i, k in enumerate(kinds):
        by.setdefault(k, []).append(i)
    rng = random.Random(seed)
    for v in by.values():
        rng.shuffle(v)
    order = sorted(by, key=lambda k: (k != "clean", k))
    out: list[int] = []
    while len(out) < n and any(by.values()):
        for k in order:
            if by[k] and len(out) < n:
                out.append(by[k].pop())
    return out


def grid_png(items: list[dict], image_paths: list[str], path: str, top_k: int) -> None:
    from PIL import Image

    from albef.utils.visualization import _pyplot

    plt = _pyplot()
    rows = len(items)
    fig, axes = plt.subplots(rows, 2, figsize=(9.5, 1.25 + 0.17 * (top_k + 3) * rows), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 6]})
    for r, (it, ip) in enumerate(zip(items, image_paths)):
        ax_img, ax_txt = axes[r]
        ax_img.imshow(Image.open(ip).convert("RGB"))
        ax_img.axis("off")
        ax_txt.axis("off")
        lines = [(f"[{it['kind']}] caption: {it['caption']}", "black" if it["kind"] == "clean" else "#c00000")]
        if it["kind"] != "clean" and it.get("clean"):
            lines.append((f"clean caption: {it['clean'][0]}", "#555555"))
        for t in it["top"]:
            mark = {True: "#2e7d32", False: "#c00000", None: "black"}[t["correct"]]
            if t["correct"] is False and t.get("names_both_objects"):
                mark = "#e07000"  # the right two objects, a wrong relation or clutter
            lines.append((f"  {t['weight']:.3f}  {t['text']}", mark))
        for j, (text, color) in enumerate(lines):
            ax_txt.text(0.0, 1.0 - j / max(len(lines), 1), text, fontsize=7, family="monospace", color=color,
                        va="top", ha="left", transform=ax_txt.transAxes)
    fig.suptitle("Momentum teacher's top texts for training images (weight: teacher softmax over the caption bank)\n"
                 "green: a correct description; orange: names the image's two objects (wrong relation or clutter); red: neither",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True, help="a checkpoint with the momentum teacher's weights (ours)")
    p.add_argument("--images", type=int, default=8, help="images in the PNG grid")
    p.add_argument("--top-k", type=int, default=5, help="teacher texts per image")
    p.add_argument("--max-pairs", type=int, default=None, help="training pairs in the statistics (default: all)")
    p.add_argument("--seed", type=int, default=0, help="which images the grid shows")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", required=True, help="folder for pseudo_targets.json and pseudo_targets.png")
    p.add_argument("opts", nargs="*", help="config overrides KEY=VALUE")
    args = p.parse_args(argv)

    import torch
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader

    from albef.config import load_config
    from albef.data.build import prepare_synthetic
    from albef.data.files import DataError
    from albef.data.datasets.retrieval_eval import RetrievalEvalJSON
    from albef.data.text import pre_caption
    from albef.evaluation.retrieval import encode_images, encode_texts
    from albef.modeling.build import build_model_from_weights
    from albef.registry import ComponentError

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    if not os.path.isfile(args.weights):
        return fail(f"--weights {args.weights} does not exist")
    if args.images < 1 or args.top_k < 1:
        return fail("--images and --top-k must be >= 1")
    try:
        cfg = load_config(args.config_file, list(args.opts))
        prepare_synthetic(cfg)  # with data.synthetic.noise: data.train now reads the noisy copy
    except (OSError, ValueError, ComponentError) as e:
        return fail(str(e))
    train = cfg.data.get("train")
    files = list(train.get("ann_files") or []) if train is not None else []
    if len(files) != 1:
        return fail(f"data.train.ann_files must name one pretraining JSON file here, got {files}")
    ann_file = files[0]
    try:
        with open(ann_file, encoding="utf-8") as f:
            entries = json.load(f)  # entry i is image i of ds
        ds = RetrievalEvalJSON(ann_file=ann_file, image_root=train.get("image_root", ""),
                               transforms=OmegaConf.to_container(cfg.data.transforms, resolve=True),
                               max_words=cfg.data.max_words, strict=True)
        if len(ds) != len(entries):
            raise DataError("some entries have no caption")
    except (DataError, OSError, ValueError) as e:
        return fail(f"data.train.ann_files {ann_file}: {e}")
    n_all = len(ds)

    # What is correct: the clean captions of each image (corruptions.json for corrupted ones).
    side = os.path.join(os.path.dirname(os.path.abspath(ann_file)), "corruptions.json")
    known = os.path.isfile(side)
    kinds = ["clean"] * n_all
    clean = [[pre_caption(c, cfg.data.max_words) for c in e["caption"]] for e in entries]
    if known:
        with open(side, encoding="utf-8") as f:
            for rec in json.load(f):
                kinds[rec["index"]] = rec["kind"]
                clean[rec["index"]] = [pre_caption(c, cfg.data.max_words) for c in rec["clean"]]
    elif cfg.data.synthetic is None:
        print(f"note: no corruptions.json beside {ann_file}: reporting the teacher's top texts only")

    model, tok, device, amp = build_model_from_weights(cfg, args.weights)
    if model.teacher.model is None:
        return fail(f"model.teacher ({type(model.teacher).__name__}) keeps no momentum model: there is no teacher to inspect")
    if model.temp is None:
        return fail("the model has no ITC projections (model.embed_dim: null): the teacher gives no contrastive targets")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)

    # the pairs in the statistics, and the grid's images among them
    rng = random.Random(args.seed)
    stat_idx = list(range(n_all))
    if args.max_pairs is not None and args.max_pairs < n_all:
        stat_idx = sorted(rng.sample(stat_idx, args.max_pairs))
    grid_local = pick_grid([kinds[i] for i in stat_idx], args.images, args.seed)

    bank = sorted(set(ds.text))
    bank_pos = {t: j for j, t in enumerate(bank)}
    with torch.no_grad():
        _, _, text_feat = model.teacher.run(model, encode_texts, model, tok, bank, cfg.data.max_tokens, args.batch_size, device, autocast, cfg.data.tokenization)
        row_of = {i: r for r, i in enumerate(stat_idx)}  # encode_images puts each image at row "index"
        loader = DataLoader(torch.utils.data.Subset(ds, stat_idx), batch_size=args.batch_size, shuffle=False, num_workers=0,
                            collate_fn=lambda b: {"image": torch.stack([s["image"] for s in b]), "index": torch.tensor([row_of[s["index"]] for s in b])})
        _, image_feat = model.teacher.run(model, encode_images, model, loader, len(stat_idx), device, autocast)
        temp = float(model.temp)
        probs = torch.softmax(image_feat.float() @ text_feat.float().t() / temp, dim=1)  # [n, |bank|]

    correct = torch.zeros(len(stat_idx), len(bank), dtype=torch.bool)
    for r, i in enumerate(stat_idx):
        for c in clean[i]:
            j = bank_pos.get(c)
            if j is not None:
                correct[r, j] = True
    top1 = probs.argmax(dim=1)
    # Synthetic world: also whether a text names the image's two objects (colour and shape),
    # whatever it says of their relation and whatever clutter surrounds them.
    names = None
    if cfg.data.synthetic is not None:
        from albef.data.synthetic.noise import named_objects

        bank_objs = [named_objects(t) for t in bank]
        names = torch.zeros(len(stat_idx), len(bank), dtype=torch.bool)
        by_objs: dict = {}
        for j, o in enumerate(bank_objs):
            if o is not None:
                by_objs.setdefault(o, []).append(j)
        for r, i in enumerate(stat_idx):
            objs = named_objects(clean[i][0])
            if objs is not None and objs in by_objs:
                names[r, by_objs[objs]] = True
    own = torch.tensor([int(top1[r]) in {bank_pos[ds.text[k]] for k in ds.img2txt[i]} for r, i in enumerate(stat_idx)], dtype=torch.float)
    def rates(rows: list[int]) -> dict:
        """The statistics over the pairs at ``rows`` (of stat_idx); percentages but the weight."""
        rt = torch.tensor(rows)
        s = {
            "pairs": len(rows),
            "top1_correct": float(correct[rt, top1[rt]].float().mean() * 100),
            "top1_is_own_caption": float(own[rt].mean() * 100),
            "weight_on_correct": float((probs[rt] * correct[rt]).sum(1).mean()),
            "chance": float(correct[rt].float().mean(1).mean() * 100),
        }
        if names is not None:
            s["top1_names_both_objects"] = float(names[rt, top1[rt]].float().mean() * 100)
            s["chance_names_both_objects"] = float(names[rt].float().mean(1).mean() * 100)
        return s

    stats: dict[str, dict] = {}
    if known or cfg.data.synthetic is not None:
        for kind in sorted(set(kinds[i] for i in stat_idx), key=lambda k: (k != "clean", k)):
            stats[kind] = rates([r for r, i in enumerate(stat_idx) if kinds[i] == kind])
        corrupted = [r for r, i in enumerate(stat_idx) if kinds[i] != "clean"]
        if corrupted:
            stats["all_corrupted"] = rates(corrupted)

    items = []
    for r in grid_local:
        i = stat_idx[r]
        w, j = probs[r].topk(min(args.top_k, len(bank)))
        items.append({
            "index": i, "image": ds.paths[i], "kind": kinds[i], "caption": entries[i]["caption"][0],
            "captions": list(entries[i]["caption"]), "clean": clean[i],
            "top": [{"text": bank[int(jj)], "weight": float(ww), "correct": bool(correct[r, int(jj)]) if (known or cfg.data.synthetic is not None) else None,
                     "names_both_objects": None if names is None else bool(names[r, int(jj)])}
                    for ww, jj in zip(w.tolist(), j.tolist())],
        })
    os.makedirs(args.out, exist_ok=True)
    summary = {"config": args.config_file, "weights": args.weights, "train_file": ann_file, "corruptions": side if known else None,
               "bank_size": len(bank), "temperature": temp, "pairs": len(stat_idx), "stats": stats,
               # ITC's distillation weight in training: its own alpha, or the teacher's
               "itc_alpha": next((o.alpha if o.alpha is not None else model.teacher.alpha for k, o in model.objectives.items()
                                  if type(o).__name__ == "ITCLoss"), None)}
    with open(os.path.join(args.out, "pseudo_targets.json"), "w", encoding="utf-8") as f:
        json.dump({**summary, "items": items}, f, indent=1)
    grid_png(items, [ds.paths[it["index"]] for it in items], os.path.join(args.out, "pseudo_targets.png"), args.top_k)

    print(f"Teacher pseudo-targets: {args.weights} on {ann_file} ({len(stat_idx)} pairs, caption bank of {len(bank)} texts, temperature {temp:.4f})")
    if stats:
        both = names is not None
        print("| pairs | n | teacher top-1 correct | top-1 is the pair's own caption | weight on correct | chance |"
              + (" top-1 names both objects | chance |" if both else ""))
        print("|---|---|---|---|---|---|" + ("---|---|" if both else ""))
        for k, s in stats.items():
            print(f"| {k} | {s['pairs']} | {s['top1_correct']:.1f}% | {s['top1_is_own_caption']:.1f}% | {s['weight_on_correct']:.3f} | {s['chance']:.2f}% |"
                  + (f" {s['top1_names_both_objects']:.1f}% | {s['chance_names_both_objects']:.2f}% |" if both else ""))
    print(f"wrote {os.path.join(args.out, 'pseudo_targets.json')}, {os.path.join(args.out, 'pseudo_targets.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
