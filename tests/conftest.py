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
