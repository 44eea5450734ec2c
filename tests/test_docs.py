"""The documentation's references resolve: relative links, script paths and config files.

README.md is the entry point and stays short; the details live in docs/*.md, the research
projects' READMEs and tools/README.md. These tests keep every link and every command path
they name pointing at a file of the repository.
"""
from __future__ import annotations

import glob
import os
import re

import pytest

from conftest import REPO

README = os.path.join(REPO, "README.md")
DOCS = sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
LINKED_DOCS = [README] + DOCS + sorted(glob.glob(os.path.join(REPO, "projects", "*", "README.md"))) + [
    os.path.join(REPO, "projects", "README.md"), os.path.join(REPO, "tools", "README.md")]
COMMAND_DOCS = [README] + DOCS

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SCRIPT = re.compile(r"\bpython\s+((?:tools|projects)/[^\s`'\"),;]+?\.py)\b")
CONFIG = re.compile(r"--config-file\s+([^\s`'\"),;]+)")
# placeholders and paths of a run's output, not files of the repository
PLACEHOLDERS = {"FILE", "CONFIG", "CKPT"}


def _rel(path: str) -> str:
    return os.path.relpath(path, REPO)


def _ids(paths):
    return [_rel(p) for p in paths]



def _is_placeholder(path: str) -> bool:
    return (path in PLACEHOLDERS or "<" in path or "$" in path or path.startswith("output_dir/")
            or path.isupper())


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=_ids(LINKED_DOCS))
def test_relative_links_resolve(doc):
    """(a) Every relative markdown link, with or without #anchor, names an existing file."""
    assert os.path.isfile(doc), f"{_rel(doc)} does not exist"
    text = open(doc, encoding="utf-8").read()
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^(https?:|mailto:)", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        resolved = os.path.normpath(os.path.join(os.path.dirname(doc), path))
        if not os.path.exists(resolved):
            broken.append(target)
    assert not broken, f"{_rel(doc)}: broken relative links: {broken}"


@pytest.mark.parametrize("doc", COMMAND_DOCS, ids=_ids(COMMAND_DOCS))
def test_named_scripts_and_configs_exist(doc):
    """(b) Every `python tools/...py`, `python projects/...py` and `--config-file PATH` exists."""
    text = open(doc, encoding="utf-8").read()
    missing = []
    for kind, pattern in (("script", SCRIPT), ("config", CONFIG)):
        for path in pattern.findall(text):
            if _is_placeholder(path):
                continue
            if not os.path.isfile(os.path.join(REPO, path)):
                missing.append(f"{kind} {path}")
    assert not missing, f"{_rel(doc)}: names files that do not exist: {missing}"


def test_docs_exist():
    assert DOCS, "docs/*.md: no documentation files found"


def test_readme_is_short():
    """(c) README.md is the entry point, not the manual."""
    n = len(open(README, encoding="utf-8").read().splitlines())
    assert n <= 220, f"README.md has {n} lines (at most 220); move detail into docs/"
