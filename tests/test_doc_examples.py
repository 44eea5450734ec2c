"""The Python blocks of README.md and docs/*.md run as written, so they cannot go stale.

Each document's ```python blocks run in order as one script, in a fresh process whose
working directory has the default job's layout (``output/synthetic/model_final.pth``,
``datasets/albef_synthetic/``) linked to the suite's small trained checkpoint and its world.
A block preceded by an ``<!-- not run: reason -->`` line is skipped (it needs files a
reader makes first, e.g. an export).
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.xdist_group("small_checkpoint")

BLOCK = re.compile(r"(?:^<!-- not run:[^\n]*-->\n)?^```python\n(.*?)^```", re.S | re.M)
DOCS = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))


def python_blocks(path: str) -> list[str]:
    text = open(path, encoding="utf-8").read()
    return [m.group(1) for m in BLOCK.finditer(text) if not m.group(0).startswith("<!-- not run")]


RUNNABLE = [d for d in DOCS if python_blocks(d)]


def test_block_parser_skips_marked_blocks(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text("x\n```python\nprint(1)\n```\n<!-- not run: needs an export -->\n```python\nprint(2)\n```\n```bash\nls\n```\n")
    assert python_blocks(str(doc)) == ["print(1)\n"]


# One process runs every document's script in turn (each in a fresh namespace, its stdout
# captured), so torch and albef are imported once for all of them.
DRIVER = r"""
import contextlib, io, json, sys, traceback
out = {}
for path, script in json.load(sys.stdin):
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            exec(compile(script, path, "exec"), {"__name__": "__main__"})
        out[path] = {"ok": True, "stdout": buf.getvalue()}
    except BaseException:
        out[path] = {"ok": False, "stdout": buf.getvalue(), "error": traceback.format_exc()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def doc_runs(small_checkpoint, tmp_path_factory):
    """{doc path: {"ok", "stdout", "error"}} of every runnable document, run in a working directory
    with the default job's layout linked to the small checkpoint and its world."""
    import json

    ckpt, world = small_checkpoint
    cwd = tmp_path_factory.mktemp("reader")
    (cwd / "output" / "synthetic").mkdir(parents=True)
    (cwd / "datasets").mkdir()
    os.symlink(ckpt, cwd / "output" / "synthetic" / "model_final.pth")
    os.symlink(world, cwd / "datasets" / "albef_synthetic")
    jobs = [(os.path.relpath(d, REPO), "\n".join(python_blocks(d))) for d in RUNNABLE]
    r = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(jobs), cwd=str(cwd), capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("doc", RUNNABLE, ids=[os.path.relpath(d, REPO) for d in RUNNABLE])
def test_python_blocks_run(doc, doc_runs):
    res = doc_runs[os.path.relpath(doc, REPO)]
    assert res["ok"], f"{os.path.relpath(doc, REPO)}: its Python blocks fail:\n{res.get('error', '')[-3000:]}"
    if doc.endswith("README.md"):
        # the snippet prints the ITM match probability of each of its three captions for the one image
        probs = [float(x) for x in re.findall(r"[-+]?\d+\.\d+(?:e[-+]?\d+)?", res["stdout"])]
        assert res["stdout"].startswith("tensor([[") and len(probs) == 3 and all(0.0 <= p <= 1.0 for p in probs), res["stdout"]
