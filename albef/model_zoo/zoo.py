"""The model zoo table (``zoo.yaml``) and where a named model's weights come from.

Resolution order of :func:`resolve` for ``albef.load(spec)``:

1. ``spec`` is an existing file or directory: used as is.
2. ``hf-hub:org/repo[@revision]``: a folder in the Hub layout through ``huggingface_hub``
   (its cache; ``local_files_only`` offline, also when ``HF_HUB_OFFLINE=1``).
3. a zoo name: the entry's local ``path``, else its ``file`` in the cache directory
   (``$ALBEF_CACHE``, default ``~/.cache/albef``), else downloaded from its ``url`` (iopath)
   into the cache, verified against ``sha256`` before use.
4. a URL (``http(s)://``, any iopath prefix): downloaded into the cache.

A file with no known checksum gets one recorded at its first download
(``<cache>/sha256.json``, printed); every later use verifies it. Extra entries can be
added with a YAML file named by ``$ALBEF_MODEL_ZOO`` (same schema; it may override names).
"""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, fields
from typing import Any

import yaml

logger = logging.getLogger("albef.model_zoo")

ZOO_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo.yaml")
HUB_PREFIX = "hf-hub:"


class ModelZooError(ValueError):
    """A model that cannot be found, fetched or trusted (the message names it)."""


@dataclass(frozen=True)
class ZooEntry:
    name: str
    config: str | None = None
    file: str | None = None
    url: str | None = None
    path: str | None = None
    sha256: str | None = None
    resolution: int | None = None
    preprocessing: str | None = None
    task: str | None = None
    source: str | None = None


def _read_table(path: str) -> dict[str, ZooEntry]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ModelZooError(f"{path}: cannot read the model zoo table ({e})") from e
    except yaml.YAMLError as e:
        raise ModelZooError(f"{path}: not valid YAML ({e})") from e
    table = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise ModelZooError(f"{path}: a model zoo table is a mapping with an 'entries' mapping")
    known = {f.name for f in fields(ZooEntry)} - {"name"}
    out = {}
    for name, node in table.items():
        if not isinstance(node, dict):
            raise ModelZooError(f"{path}: entry {name!r} must be a mapping")
        unknown = sorted(set(node) - known)
        if unknown:
            raise ModelZooError(f"{path}: entry {name!r} has unknown key(s) {unknown} (known: {sorted(known)})")
        if not node.get("path") and not node.get("file"):
            raise ModelZooError(f"{path}: entry {name!r} needs a 'path' or a 'file'")
        out[str(name)] = ZooEntry(name=str(name), **node)
    return out


def entries() -> dict[str, ZooEntry]:
    """Every zoo entry: ``zoo.yaml``, then the file ``$ALBEF_MODEL_ZOO`` names (if set)."""
    table = _read_table(ZOO_FILE)
    extra = os.environ.get("ALBEF_MODEL_ZOO")
    if extra:
        table.update(_read_table(extra))
    return table


def get(name: str) -> ZooEntry:
    """The entry ``name``; an unknown name is an error that suggests the close ones."""
    table = entries()
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ModelZooError(f"unknown model {name!r}: not a file, a directory, an hf-hub: name or a model zoo name.{hint} "
                        f"Zoo names: {', '.join(sorted(table))}")


def cache_dir() -> str:
    """``$ALBEF_CACHE``, default ``~/.cache/albef`` (created on use)."""
    return os.path.expanduser(os.environ.get("ALBEF_CACHE") or os.path.join("~", ".cache", "albef"))


def sha256_of(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _recorded_hashes() -> dict[str, str]:
    path = os.path.join(cache_dir(), "sha256.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelZooError(f"{path}: the recorded checksums cannot be read ({e}); delete the file to record them anew") from e
    return data if isinstance(data, dict) else {}


def _record_hash(file: str, digest: str) -> None:
    os.makedirs(cache_dir(), exist_ok=True)
    data = _recorded_hashes()
    data[file] = digest
    path = os.path.join(cache_dir(), "sha256.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def verify(path: str, expected: str | None, what: str) -> str:
    """The sha256 of ``path``; an error naming ``what`` when it is not ``expected`` (None: not checked)."""
    digest = sha256_of(path)
    if expected and digest.lower() != expected.lower():
        raise ModelZooError(f"{what}: {path} has sha256 {digest}, expected {expected}: the file is corrupt or not the "
                            f"one the entry names; delete it and load again to download it anew")
    return digest


def _download(url: str, dest: str, expected: str | None, what: str) -> str:
    """``url`` -> ``dest`` (through iopath), verified before it is moved into place."""
    from albef.utils.file_io import PathManager

    if os.environ.get("ALBEF_OFFLINE") == "1":
        raise ModelZooError(f"{what}: {dest} is not in the cache and ALBEF_OFFLINE=1 forbids downloading {url}")
    if url.startswith(("http://", "https://")):
        from iopath.common.file_io import HTTPURLHandler

        if not any(isinstance(h, HTTPURLHandler) for h in PathManager._path_handlers.values()):
            PathManager.register_handler(HTTPURLHandler())
    print(f"albef: downloading {what} from {url}", flush=True)
    try:
        local = url[len("file://"):] if url.startswith("file://") else PathManager.get_local_path(url)
        if not os.path.isfile(local):
            raise FileNotFoundError(local)
    except Exception as e:  # network and handler errors come in many types
        raise ModelZooError(f"{what}: could not download {url} ({type(e).__name__}: {e})") from e
    digest = verify(local, expected, what)
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    shutil.copyfile(local, dest + ".tmp")
    os.replace(dest + ".tmp", dest)
    return digest


def fetch(entry: ZooEntry, download: bool = True) -> str:
    """The local weight file of ``entry``, downloaded if needed and allowed, checksum verified."""
    what = f"model zoo entry {entry.name!r}"
    if entry.path:
        path = os.path.expanduser(entry.path)
        if not os.path.exists(path):
            raise ModelZooError(f"{what}: {path} does not exist ({entry.source or 'train it first'})")
        if entry.sha256:
            verify(path, entry.sha256, what)
        return path
    dest = os.path.join(cache_dir(), entry.file)
    recorded = _recorded_hashes().get(entry.file)
    if os.path.isfile(dest):
        digest = verify(dest, entry.sha256 or recorded, what)
        if not entry.sha256 and not recorded:  # placed in the cache by hand: pinned from now on
            _record_hash(entry.file, digest)
        return dest
    if not entry.url:
        raise ModelZooError(f"{what}: {dest} is not in the cache and the entry has no url")
    if not download:
        raise ModelZooError(f"{what}: {dest} is not in the cache (downloading is off)")
    digest = _download(entry.url, dest, entry.sha256 or recorded, what)
    if not entry.sha256 and not recorded:
        _record_hash(entry.file, digest)
        print(f"albef: {entry.file} sha256 {digest} (recorded in {os.path.join(cache_dir(), 'sha256.json')}; "
              f"later loads verify it)", flush=True)
    return dest


def hub_snapshot(spec: str, local_files_only: bool | None = None) -> str:
    """``hf-hub:org/repo[@revision]`` -> the local folder of that snapshot (``huggingface_hub``)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ModelZooError(f"{spec}: loading from the Hugging Face Hub needs huggingface_hub (pip install 'albef[hub]')") from e
    repo = spec[len(HUB_PREFIX):]
    repo, _, revision = repo.partition("@")
    if repo.count("/") != 1:
        raise ModelZooError(f"{spec}: expected hf-hub:<org>/<repo>[@revision]")
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get("ALBEF_OFFLINE") == "1"
    try:
        return snapshot_download(repo_id=repo, revision=revision or None, local_files_only=local_files_only)
    except Exception as e:  # huggingface_hub raises its own error types (offline, not found, gated)
        where = "in the local Hugging Face cache" if local_files_only else "on the Hub"
        raise ModelZooError(f"{spec}: could not find {repo}{'@' + revision if revision else ''} {where} ({type(e).__name__}: {e})") from e


@dataclass
class Resolved:
    """What ``spec`` named: ``path`` (a weight file or a Hub-layout folder) and the zoo ``entry`` (or None)."""

    path: str
    entry: ZooEntry | None = None


def resolve(spec: Any, download: bool = True) -> Resolved:
    """See the module docstring for the order."""
    spec = os.fspath(spec)
    if os.path.exists(os.path.expanduser(spec)):
        return Resolved(os.path.expanduser(spec))
    if spec.startswith(HUB_PREFIX):
        return Resolved(hub_snapshot(spec))
    if "://" in spec:
        name = os.path.basename(spec.split("?")[0]) or "download.pth"
        key = f"urls/{hashlib.sha256(spec.encode()).hexdigest()[:16]}/{name}"  # two URLs ending alike do not collide
        dest = os.path.join(cache_dir(), key)
        recorded = _recorded_hashes().get(key)
        if os.path.isfile(dest):
            verify(dest, recorded, spec)
        else:
            if not download:
                raise ModelZooError(f"{spec}: not in the cache (downloading is off)")
            digest = _download(spec, dest, None, spec)
            _record_hash(key, digest)
            print(f"albef: {name} sha256 {digest} (recorded; later loads verify it)", flush=True)
        return Resolved(dest)
    looks_like_path = os.sep in spec or spec.endswith((".pth", ".pt", ".bin", ".safetensors"))
    if looks_like_path and spec not in entries():
        raise ModelZooError(f"{spec}: checkpoint file not found")
    entry = get(spec)
    return Resolved(fetch(entry, download), entry)
