"""The training forward stays short: one ``model(batch)`` of the default job's model nests
albef's own calls at most :data:`MAX_DEPTH` deep (the redesign took it from 14 to 7)."""
from __future__ import annotations

import os
import sys

import torch

from conftest import REPO

MAX_DEPTH = 7
PKG = os.path.join(REPO, "albef") + os.sep


def albef_call_profile(fn):
    """Run ``fn()`` under ``sys.setprofile``; -> (deepest nesting of albef frames, their
    call stack at that point, distinct albef functions, albef calls)."""
    stack: list[str] = []
    deepest: list[str] = []
    funcs: set[str] = set()
    calls = 0

    def prof(frame, event, arg):
        nonlocal deepest, calls
        if not frame.f_code.co_filename.startswith(PKG):
            return
        if event == "call":
            name = f"{os.path.relpath(frame.f_code.co_filename, PKG)}:{frame.f_code.co_qualname}"
            stack.append(name)
            funcs.add(name)
            calls += 1
            if len(stack) > len(deepest):
                deepest = list(stack)
        elif event == "return" and stack:
            stack.pop()

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return len(deepest), deepest, len(funcs), calls


def test_default_job_forward_nests_at_most_max_depth(synthetic_root, tokenizer):
    from albef.config import load_config
    from albef.modeling import build_model

    cfg = load_config(os.path.join(REPO, "configs", "pretrain", "synthetic.yaml"), [f"data.synthetic.root={synthetic_root}"])
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer).train()
    model.set_distillation_scale(1.0)  # distillation on: the teacher's MLM pass is the deepest path
    caps = ["a red circle left of a blue square", "a green triangle above a red square"] * 4
    enc = tokenizer(caps, padding="longest", return_tensors="pt", return_token_type_ids=False)
    size = cfg.data.synthetic.image_size
    batch = {"image": torch.randn(len(caps), 3, size, size), "image_id": torch.arange(len(caps)) % 2, **enc}
    out = {}
    depth, stack, n_funcs, n_calls = albef_call_profile(lambda: out.update(model(batch)))
    assert {"loss_itc", "loss_itm", "loss_mlm"} <= set(out)  # the whole pretraining step ran
    assert depth <= MAX_DEPTH, f"albef calls nest {depth} deep ({n_funcs} functions, {n_calls} calls):\n" + "\n".join(stack)
