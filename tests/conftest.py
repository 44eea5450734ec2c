"""Shared fixtures: a tiny synthetic data set and configs for a tiny model."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "configs", "tiny.yaml")

torch.set_num_threads(1)  # tests are many small ops; threads only add overhead here


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> str:
    """The tiny synthetic data set of tests/configs/tiny.yaml, generated once per session."""
    from albef.config import load_config
    from albef.data.build import prepare_synthetic

    root = str(tmp_path_factory.mktemp("data") / "synthetic")
    prepare_synthetic(load_config(TINY, [f"data.synthetic.root={root}"]))
    return root


@pytest.fixture()
def tiny_cfg(synthetic_root, tmp_path):
    """``tiny_cfg(*overrides)`` -> merged config of the tiny model on the tiny data, output in tmp_path."""
    from albef.config import load_config

    def make(*overrides: str):
        return load_config(TINY, [f"data.synthetic.root={synthetic_root}", f"output_dir={tmp_path / 'out'}", *overrides])

    return make


@pytest.fixture()
def tokenizer(synthetic_root):
    from albef.data.tokenization import build_tokenizer

    return build_tokenizer(os.path.join(synthetic_root, "vocab.txt"))


def tree_bytes(root: str) -> dict[str, bytes]:
    """relative path -> bytes of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def write_json(path, obj) -> str:
    """Dump ``obj`` to ``path``; the path as a string."""
    with open(path, "w") as f:
        json.dump(obj, f)
    return str(path)


def official_meta_state(keys_file: str = "official_keys_base.txt") -> dict:
    """``tests/fixtures/<keys_file>`` ("key [shape]" per line, dumped from the official
    model) as a state dict of meta tensors: every key and shape, no data."""
    out = {}
    with open(os.path.join(REPO, "tests", "fixtures", keys_file)) as f:
        for line in f:
            key, shape = line.split(" ", 1)
            dtype = torch.long if key.endswith(("queue_ptr", "position_ids")) else torch.float32
            out[key] = torch.empty(json.loads(shape), dtype=dtype, device="meta")
    return out


def run_cli(args: list[str], timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python tools/train_net.py ARGS`` from the repository root."""
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env=e,
    )


# --------------------------------------------------------------------------- a small trained checkpoint
#: The recipe of the suite's small trained model: the default job's objectives (ITC + ITM + MLM)
#: on a 64 px world with a grounding split (every object's box in its manifest), two fusion layers
#: (Grad-CAM reads the first: in the last one only [CLS] reaches the ITM head). ~1 min on one core.
SMALL_RECIPE = [
    "data.synthetic.image_size=64", "data.synthetic.num_train_images=600",
    "data.synthetic_task={task: grounding, num_train: 4, num_val: 2, num_test: 30}",
    "model.vision_encoder.img_size=64", "model.vision_encoder.model_kwargs.embed_dim=48", "model.text_encoder.config.hidden_size=48",
    "model.text_encoder.config.intermediate_size=96", "model.fusion.num_layers=2", "model.embed_dim=32",
    "train.max_iter=600", "train.batch_size=32", "train.lr=1e-3", "train.warmup_iters=20", "train.checkpoint_period=100000",
    "train.log_period=500", "data.test=null", "eval.retrieval=null",
]


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory):
    """``(checkpoint, world)``: ``model_final.pth`` of SMALL_RECIPE trained through
    ``tools/train_net.py`` (its config travels in the file: ``albef.load(checkpoint)``), and the
    synthetic world it was trained on. Trained once per session: the xdist workers share it
    through a lock file in the session's common temp directory."""
    from filelock import FileLock

    dev = os.environ.get("ALBEF_TEST_SMALL_CHECKPOINT")  # development only: a folder with out/model_final.pth and world/
    if dev:
        return os.path.join(dev, "out", "model_final.pth"), os.path.join(dev, "world")
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "small_checkpoint"
    ckpt, world = root / "out" / "model_final.pth", root / "world"
    with FileLock(str(shared / "small_checkpoint.lock")):
        if not ckpt.is_file():
            r = run_cli(["--config-file", TINY, f"data.synthetic.root={world}", f"output_dir={root / 'out'}", *SMALL_RECIPE], timeout=900)
            assert r.returncode == 0, r.stderr[-3000:]
    return str(ckpt), str(world)
