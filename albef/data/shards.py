"""WebDataset shards of pretraining pairs: writing them (``tools/make_shards.py``) and
reading their index.

Format ``albef-webdataset-v1``. ``OUT/<prefix>-000000.tar``, ``OUT/<prefix>-000001.tar``, ...
hold the usable entries of the annotation files in order (file by file, entry by entry),
``shard_size`` samples per shard (the last may hold fewer). A sample:

* ``__key__``: ``%09d``, its position among the written samples (0, 1, ... over all shards);
* the image bytes under the file's lowercase extension (``jpg`` for .jpg/.jpeg, ``png``,
  ``webp``, ...; the PIL format decides when the extension is not an image one): the original
  file unchanged, or, with ``resize``, re-encoded in its own format (JPEG quality 95) after
  a bicubic downscale of the shorter side to ``resize`` (never upsampled);
* ``json``: UTF-8 JSON ``{"captions": [raw captions of the entry], "image_id": int,
  "image": the entry's "image" string, "source": "<ann_file>:<entry index>"}``. Image ids
  are assigned as :class:`~albef.data.datasets.pretrain_json.PretrainJSON` assigns them (by
  ``image_id``, else by image path, over the entries with a non-empty caption, whether or
  not their image is readable), so both readers give a pair the same id.

``OUT/skipped.txt`` has one ``<ann_file>:<i>\\t<image path>\\t<reason>`` line per entry left
out (missing, unreadable or truncated image; empty caption). ``OUT/index.json``, written
last and atomically (its presence means the set is complete)::

    {"format": "albef-webdataset-v1", "shards": [{"url": "shard-000000.tar", "num_samples": 1000}, ...],
     "num_samples": N, "num_skipped": K, "num_image_ids": number of ids assigned,
     "ann_files": [...], "image_root": ..., "caption_key": ..., "resize": S or null}

Shard urls are relative to the index's directory.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import sys
from typing import Any, Iterator, Sequence

from albef.data.files import DataError, captions_of, read_json, read_json_list, resolve_image_path
from albef.data.text import pre_caption
from albef.utils.file_io import PathManager

logger = logging.getLogger("albef.data")

FORMAT = "albef-webdataset-v1"
MAX_WORDS = 30  # PretrainJSON's default: an entry it would drop as empty is dropped here too
TAR_MTIME = 946684800  # 2000-01-01: a fixed member mtime makes a shard's bytes depend on its content only
_EXT = {"jpg": "jpg", "jpeg": "jpg", "png": "png", "webp": "webp", "bmp": "bmp", "gif": "gif", "tif": "tif", "tiff": "tiff", "ppm": "ppm"}
_PIL_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tiff", "PPM": "ppm"}


def read_index(path: str) -> dict[str, Any]:
    """The index of a shard set: ``path`` is its ``index.json`` or the directory holding it."""
    path = str(path)
    file = path if path.endswith(".json") and not PathManager.isdir(path) else os.path.join(path, "index.json")
    if not PathManager.exists(file):
        raise DataError(f"shard index not found: {file} (tools/make_shards.py writes it last: an unfinished set has none)")
    idx = read_json(file, "shard index")
    if not isinstance(idx, dict) or idx.get("format") != FORMAT:
        raise DataError(f"{file}: not a shard index of format {FORMAT}")
    shards = idx.get("shards")
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and isinstance(s.get("url"), str) and isinstance(s.get("num_samples"), int) for s in shards):
        raise DataError(f"{file}: 'shards' must be a list of {{url, num_samples}}")
    return idx


def shard_urls(index: dict[str, Any], index_dir: str) -> list[str]:
    """Absolute paths of the index's shards (remote urls are kept as they are)."""
    return [u if "://" in u else os.path.abspath(os.path.join(index_dir, u)) for u in (s["url"] for s in index["shards"])]


def iter_shard(url: str) -> Iterator[dict[str, Any]]:
    """The raw samples of one shard, in order: ``{"__key__", "__url__", <ext>: bytes, ...}``
    (opened through iopath; webdataset's tar expansion and key grouping)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with PathManager.open(url, "rb") as stream:
        for raw in group_by_keys(tar_file_expander([{"url": url, "stream": stream}])):
            if raw:  # the end-of-file marker
                yield raw


def _check_ann_files(ann_files: Sequence[str], caption_key: str) -> int:
    """Number of entries; a missing/invalid file or malformed entry is a DataError naming it.
    Run before anything is written, so a bad last file does not leave half a shard set."""
    total = 0
    for ann_file in ann_files:
        for i, ann in enumerate(read_json_list(ann_file)):
            if not isinstance(ann, dict) or not isinstance(ann.get("image"), str):
                raise DataError(f"{ann_file}: entry {i} has no 'image' string: {ann!r}")
            captions_of(ann, ann_file, i, key=caption_key)
            total += 1
    return total


def _id_key(ann: dict[str, Any], path: str) -> Any:
    key = ann.get("image_id", path)
    try:
        hash(key)
    except TypeError:  # a list/dict image_id: its canonical JSON text stands for it
        key = json.dumps(key, sort_keys=True)
    return key


def _jobs(ann_files: Sequence[str], image_root: str, caption_key: str) -> Iterator[dict[str, Any]]:
    """Every entry in order; an empty-caption one carries its skip reason and no id key."""
    for ann_file in ann_files:
        for i, ann in enumerate(read_json_list(ann_file)):
            caps = captions_of(ann, ann_file, i, key=caption_key)
            path = resolve_image_path(ann["image"], image_root)
            empty = not any(pre_caption(c, MAX_WORDS) for c in caps)
            yield {"path": path, "image": ann["image"], "captions": caps, "source": f"{ann_file}:{i}",
                   "id_key": None if empty else _id_key(ann, path), "skip": "empty caption" if empty else None}


def _resized(img, fmt: str | None, size: int) -> tuple[bytes, str | None]:
    """(bytes, format) of ``img`` with its shorter side downscaled to ``size``, in its own format."""
    from PIL import Image

    w, h = img.size
    nw, nh = (size, max(1, round(h * size / w))) if w <= h else (max(1, round(w * size / h)), size)
    if img.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK"):  # e.g. 16-bit modes that BICUBIC rejects
        img = img.convert("RGB")
    img = img.resize((nw, nh), Image.BICUBIC)
    buf = io.BytesIO()
    if fmt == "JPEG":
        if img.mode not in ("L", "RGB", "CMYK"):  # modes JPEG cannot hold (P after "1", LA, RGBA)
            img = img.convert("RGB")
        img.save(buf, format="JPEG", quality=95)
        return buf.getvalue(), fmt
    try:
        img.save(buf, format=fmt or "PNG")
        return buf.getvalue(), fmt
    except (KeyError, OSError, ValueError):  # a format PIL reads but cannot write
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue(), "PNG"


def _load(job: tuple[dict[str, Any], int | None]) -> tuple[dict[str, Any], bytes | None, str, str]:
    """(entry, image bytes or None, extension, skip reason): read, check it decodes, resize."""
    from PIL import Image, UnidentifiedImageError

    entry, resize = job
    if entry["skip"]:
        return entry, None, "", entry["skip"]
    try:
        with PathManager.open(entry["path"], "rb") as f:
            data = f.read()
        img = Image.open(io.BytesIO(data))
        fmt = img.format
        img.load()  # decode now: truncation fails here (base.py sets LOAD_TRUNCATED_IMAGES = False)
    except FileNotFoundError:
        return entry, None, "", "file not found"
    except UnidentifiedImageError:
        return entry, None, "", "unreadable image (not a recognised image format, or truncated before its header ends)"
    except Exception as e:  # PIL raises many types for bad files; a bad file must never stop the run
        return entry, None, "", f"unreadable image ({e.__class__.__name__}: {e})"
    ext = _EXT.get(os.path.splitext(entry["path"])[1].lower().lstrip("."))
    if ext is None:
        ext = _PIL_EXT.get(fmt or "", (fmt or "bin").lower())
    if resize and min(img.size) > resize:
        try:
            data, new_fmt = _resized(img, fmt, resize)
        except Exception as e:
            return entry, None, "", f"could not resize ({e.__class__.__name__}: {e})"
        if new_fmt != fmt:
            ext = _PIL_EXT[new_fmt]
    return entry, data, ext, ""


def _clean(s: str) -> str:
    return " ".join(str(s).split("\t")).replace("\n", " ")  # one skip per line, three tab-separated fields


def make_shards(ann_files: Sequence[str], image_root: str, out: str, shard_size: int = 1000, resize: int | None = None, workers: int = 1,
                caption_key: str = "caption", prefix: str = "shard", progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Write the shards of ``ann_files`` (official pretraining JSON) to ``out``; returns the index.

    Raises ValueError for a bad argument (naming its flag) and DataError for a missing or
    invalid annotation file, or an ``out`` that holds a complete set (unless ``overwrite``)."""
    import webdataset as wds

    if isinstance(ann_files, str):
        ann_files = [ann_files]
    ann_files = list(ann_files)
    if not ann_files:
        raise ValueError("--ann-files: give at least one annotation file")
    if int(shard_size) < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    if resize is not None and int(resize) < 1:
        raise ValueError(f"--resize must be >= 1, got {resize}")
    if int(workers) < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    shard_size, workers = int(shard_size), int(workers)
    resize = int(resize) if resize is not None else None
    index_file = os.path.join(out, "index.json")
    if os.path.exists(index_file) and not overwrite:
        raise DataError(f"{index_file} exists: {out} holds a shard set already (--overwrite replaces it)")
    total = _check_ann_files(ann_files, caption_key)
    if overwrite:  # only now: a bad argument or annotation file leaves the old set intact
        for f in [index_file] + glob.glob(os.path.join(glob.escape(out), f"{glob.escape(prefix)}-*.tar")) \
                + glob.glob(os.path.join(glob.escape(out), f"{glob.escape(prefix)}-*.tar.tmp")):
            if os.path.exists(f):
                os.remove(f)
    os.makedirs(out, exist_ok=True)

    jobs = ((e, resize) for e in _jobs(ann_files, image_root, caption_key))
    pool = None
    if workers > 1:
        import multiprocessing as mp

        # fork: workers start at once with the modules already imported (spawn re-imports torch
        # in each); they only run PIL
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(workers)
        results = pool.imap(_load, jobs, chunksize=8)  # ordered: the output does not depend on the worker count
    else:
        results = map(_load, jobs)
    from tqdm import tqdm

    bar = tqdm(total=total, desc="make_shards", unit="entry", file=sys.stderr, disable=not progress)
    ids: dict[Any, int] = {}
    skipped: list[tuple[str, str, str]] = []
    shards: list[dict[str, Any]] = []
    written, writer, tmp = 0, None, None

    def finish_shard() -> None:
        writer.close()
        os.replace(tmp, tmp[: -len(".tmp")])  # a shard appears under its name only when complete

    try:
        for entry, data, ext, reason in results:
            bar.update(1)
            if entry["id_key"] is not None:  # id before the image check, as PretrainJSON (which keeps bad images)
                image_id = ids.setdefault(entry["id_key"], len(ids))
            if data is None:
                skipped.append((entry["source"], entry["path"], reason))
                continue
            if writer is None or shards[-1]["num_samples"] == shard_size:
                if writer is not None:
                    finish_shard()
                name = f"{prefix}-{len(shards):06d}.tar"
                tmp = os.path.join(out, name + ".tmp")
                writer = wds.TarWriter(tmp, encoder=False, mtime=TAR_MTIME)
                shards.append({"url": name, "num_samples": 0})
            meta = {"captions": entry["captions"], "image_id": image_id, "image": entry["image"], "source": entry["source"]}
            writer.write({"__key__": f"{written:09d}", ext: data, "json": json.dumps(meta).encode("utf-8")})
            shards[-1]["num_samples"] += 1
            written += 1
        if writer is not None:
            finish_shard()
            writer = None
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
        if writer is not None:  # an error mid-shard: leave no partial file behind
            try:
                writer.close()
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
    with open(os.path.join(out, "skipped.txt"), "w", encoding="utf-8") as f:
        for source, path, reason in skipped:
            f.write(f"{_clean(source)}\t{_clean(path)}\t{_clean(reason)}\n")
    index = {"format": FORMAT, "shards": shards, "num_samples": written, "num_skipped": len(skipped), "num_image_ids": len(ids),
             "ann_files": ann_files, "image_root": image_root, "caption_key": caption_key, "resize": resize}
    with open(index_file + ".tmp", "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1)
    os.replace(index_file + ".tmp", index_file)  # last: its presence means the set is complete
    if skipped:
        logger.warning("make_shards: skipped %d of %d entries (listed in %s)", len(skipped), total, os.path.join(out, "skipped.txt"))
    return index
