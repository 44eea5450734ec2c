"""Shared fixtures: a tiny synthetic data set and configs for a tiny model."""
from __future__ import annotations

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


def run_cli(args: list[str], timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python tools/train_net.py ARGS`` from the repository root."""
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env=e,
    )
