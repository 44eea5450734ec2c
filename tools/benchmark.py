#!/usr/bin/env python
"""Measure the training step, the retrieval evaluation or the data pipeline of a config.

    python tools/benchmark.py --config-file FILE [--device cpu|cuda] [--batch N] [--steps N] [--warmup N]
        [--what train|eval|data] [--out FILE.json] [--profile-steps N] [--flops-per-pair F] [--peak-tflops T]
        [--num-images N] [--num-texts N] [--workers N ...] [--target-pairs-per-s P] [--threads N] [KEY=VALUE ...]

Examples::

    # the training step of the paper's recipe (ViT-B/16 at 256 px, BERT-base 6+6), as the trainer runs it
    python tools/benchmark.py --config-file configs/Base-ALBEF.yaml --device cuda --batch 64
    # the default job's step on the CPU
    python tools/benchmark.py --config-file configs/pretrain/synthetic.yaml --device cpu --batch 32 --steps 10
    # retrieval evaluation (ITC + ITM re-ranking of the top k_test) on 200 synthetic images, 1,000 texts
    python tools/benchmark.py --config-file configs/Base-ALBEF.yaml --what eval --num-images 200 eval.retrieval.k_test=128
    # two variants of the step, interleaved in one process (speedup of the second over the first)
    python tools/benchmark.py --config-file configs/pretrain/synthetic.yaml --what compare --steps 40 \
        --variant "model.fusion.cache_visual_kv=false model.objectives.mlm.logits=all" --variant ""
    # the training DataLoader at the config's resolution and augmentations, 0, 2 and 4 workers
    python tools/benchmark.py --config-file configs/Base-ALBEF.yaml --what data --batch 64 --steps 10 --workers 0 2 4 --target-pairs-per-s 1500
    # the same, the JSON reader against WebDataset shards of the same JPEGs, 3 interleaved rounds
    python tools/benchmark.py --config-file configs/Base-ALBEF.yaml --what data --loaders json shards --repeats 3 --workers 0 1 2 --

KEY=VALUE config overrides come last; after a list flag (``--workers 0 1``) put ``--`` before them.

How each mode measures, and where the tokenizer comes from: :mod:`albef.engine.benchmark`
(the data loader: :class:`albef.data.benchmark.DataLoaderBenchmark`).

Writes a JSON (``--out``, default ``output/benchmark/<what>.json``) and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout without installing

import torch  # noqa: E402

# albef (and the model stack behind it) is imported after the arguments are checked, so that a
# bad argument is reported in the time torch takes to import, not the whole stack's.


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="KEY=VALUE config overrides go last (after `--` when the last flag takes a list).")
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--what", choices=("train", "eval", "data", "compare"), default="train")
    p.add_argument("--variant", action="append", default=[], metavar="'K=V K=V'",
                   help="compare: one config variant (repeat the flag; the first is the reference; '' = none)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, help="per-step batch (default: train.batch_size)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (data: batches)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (eval: >0 runs a 4-image evaluation first)")
    p.add_argument("--profile-steps", type=int, default=3, help="steps under torch.profiler (0: none)")
    p.add_argument("--flops-per-pair", type=float, help="FLOP per pair for the MFU (default: see the docstring)")
    p.add_argument("--peak-tflops", type=float, help="device peak TFLOP/s for the MFU (default: table by CUDA device name)")
    p.add_argument("--num-images", type=int, help="eval: synthetic images (100); data: JPEGs written (256)")
    p.add_argument("--num-texts", type=int, help="eval: synthetic texts (5 per image)")
    p.add_argument("--repeats", type=int, default=1, help="eval: timed evaluations; data: rounds over loaders and worker counts")
    p.add_argument("--workers", type=int, nargs="+", default=[0], help="data: DataLoader worker counts to try")
    p.add_argument("--target-pairs-per-s", type=float, help="data: pairs/s one GPU consumes, for workers_needed_per_gpu")
    p.add_argument("--loaders", nargs="+", choices=("json", "shards"), default=["json"],
                   help="data: the JSON reader (one file per image) and/or WebDataset shards of the same images")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", metavar="FILE.json", help="default: output/benchmark/<what>.json")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY=VALUE")
    a = p.parse_args(argv)
    a.opts = [o for o in a.opts if o != "--"]
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available on this machine (torch %s)" % torch.__version__)
    for name in ("batch", "steps", "num_images", "num_texts", "repeats", "threads", "warmup", "profile_steps"):
        v, least = getattr(a, name), 0 if name in ("warmup", "profile_steps") else 1
        if v is not None and v < least:
            p.error(f"--{name.replace('_', '-')} must be >= {least}, got {v}")
    if a.what == "compare" and len(a.variant) < 2:
        p.error("--what compare needs at least two --variant (use --variant '' for the command's config as is)")
    if min(a.workers) < 0:
        p.error("--workers counts must be >= 0")
    bad = [o for o in a.opts if "=" not in o]
    if bad:
        p.error(f"unrecognized arguments (config overrides are KEY=VALUE): {' '.join(bad)}")
    if not os.path.isfile(a.config_file):
        p.error(f"--config-file {a.config_file}: no such file")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from albef.engine.benchmark import BenchmarkSpec, format_summary, run_benchmark
    from albef.utils.errors import USER_ERRORS, report_user_error

    spec = BenchmarkSpec(**{k: v for k, v in vars(args).items() if k not in ("threads", "out")})
    out = args.out or os.path.join("output", "benchmark", f"{args.what}.json")
    try:
        res = run_benchmark(spec)
    except USER_ERRORS as e:
        report_user_error(e)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(format_summary(res, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
