"""A generated data set directory: built atomically, identified by its manifest.

Both generators (pretraining shapes, downstream tasks) write into a private temporary
directory next to the target and rename it into place; ``os.rename`` of a directory is
atomic on one filesystem, so concurrent callers (DDP ranks, parallel test workers) either
win the race or find a complete copy, never a partial one. ``manifest.json``, written
last, records the format version and the generation parameters; a directory is reused
only when both equal the requested ones. Every JSON file of them is written by
:func:`dump_json` (one layout, so the files stay byte-identical).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any, Callable


def dump_json(obj: Any, path: str) -> None:
    """``obj`` as indented JSON plus a final newline: the one layout of every generated JSON
    file (changing it changes the bytes of every generated data set)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def is_empty_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.listdir(path)


def build_dir_atomically(target: str, build: Callable[[str], None]) -> None:
    """Run ``build(tmp)`` on a fresh temporary directory and rename it to ``target``.

    When another process renamed its copy into place first, ours is discarded (the caller
    then validates the winner's manifest).  The temporary directory is always removed; an
    error from ``build`` propagates unchanged.
    """
    norm = os.path.normpath(os.path.abspath(os.fspath(target)))
    os.makedirs(os.path.dirname(norm), exist_ok=True)
    tmp = f"{norm}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    os.makedirs(tmp)
    try:
        build(tmp)
        try:
            os.rename(tmp, norm)
        except OSError:
            # Lost the race only if a complete (non-empty) copy is there now.
            if not os.path.isdir(norm) or is_empty_dir(norm):
                raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def check_manifest(directory: str, what: str, format_version: int, params: dict) -> dict:
    """The manifest of the generated ``directory`` (``what`` names it in errors) when its
    format version and parameters equal the requested ones; ValueError otherwise."""
    path = os.path.join(directory, "manifest.json")
    if not os.path.isfile(path):
        raise ValueError(
            f"{what} {directory!r} exists but has no manifest.json (not a complete generated "
            "data set); remove it or choose another root"
        )
    with open(path, "r", encoding="utf-8") as f:
        manifest = json.load(f)
    stored = {"format_version": manifest.get("format_version"), **manifest.get("params", {})}
    requested = {"format_version": format_version, **params}
    if stored != requested:
        raise ValueError(
            f"{what} at {directory!r} was generated with other parameters: stored {stored}, "
            f"requested {requested}; remove it or choose another root or seed"
        )
    return manifest
