"""WebDataset shards of pretraining pairs: writing them (``tools/make_shards.py``) and
reading their index.

Format ``albef-webdataset-v1``. ``OUT/<prefix>-000000.tar``, ... hold the samples in the
order of the annotation files, ``shard_size`` per shard (the last may hold fewer). A sample:

* ``__key__``: ``%09d``, its position among the written samples;
* the image bytes under the file's extension (``jpg`` for .jpg/.jpeg, ``png``, ...): the
  original file, or re-encoded after ``resize`` (shorter side, never upsampled);
* ``json``: ``{"captions": [raw captions], "image_id": int, "image": the entry's path,
  "source": "<ann_file>:<entry>"}``. Image ids are assigned as
  :class:`~albef.data.datasets.pretrain_json.PretrainJSON` assigns them (by ``image_id``, or
  by image file), so both readers give a pair the same id.

``OUT/index.json`` is written last (its presence means the set is complete): the shard list
with sample counts, totals, and the arguments. ``OUT/skipped.txt`` names every entry left
out (missing, unreadable or truncated image; empty caption) with its reason.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
from typing import Any, Iterator, Sequence

from albef.data.datasets.base import DataError, captions_of, read_json_list, resolve_image_path
from albef.data.text import pre_caption
from albef.utils.file_io import PathManager

logger = logging.getLogger("albef.data")

FORMAT = "albef-webdataset-v1"
_EXT = {"jpeg": "jpg", "jpg": "jpg", "png": "png", "webp": "webp", "bmp": "bmp", "gif": "gif", "tif": "tif", "tiff": "tif", "ppm": "ppm"}
_PIL_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tif", "PPM": "ppm"}


def read_index(path: str) -> dict[str, Any]:
    """The index of a shard set: ``path`` is its ``index.json`` or the directory holding it."""
    file = os.path.join(path, "index.json") if not str(path).endswith(".json") else path
    if not PathManager.exists(file):
        raise DataError(f"shard index not found: {file} (tools/make_shards.py writes it last: an unfinished set has none)")
    with PathManager.open(file, "r") as f:
        try:
            idx = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{file}: not valid JSON ({e})") from e
    if not isinstance(idx, dict) or idx.get("format") != FORMAT or not isinstance(idx.get("shards"), list):
        raise DataError(f"{file}: not a shard index of format {FORMAT}")
    return idx


def shard_urls(index: dict[str, Any], index_dir: str) -> list[str]:
    """Paths of the index's shards (relative entries resolved against ``index_dir``)."""
    return [s["url"] if os.path.isabs(s["url"]) or "://" in s["url"] else os.path.join(index_dir, s["url"]) for s in index["shards"]]


def _entries(ann_files: Sequence[str], image_root: str, caption_key: str, skipped: list) -> Iterator[dict[str, Any]]:
    """The entries to write, with PretrainJSON's image ids; empty-caption entries go to ``skipped``."""
    ids: dict[Any, int] = {}
    for ann_file in ann_files:
        for i, ann in enumerate(read_json_list(ann_file)):
            if not isinstance(ann, dict) or "image" not in ann:
                raise DataError(f"{ann_file}: entry {i} has no 'image' key: {ann!r}")
            caps = captions_of(ann, ann_file, i, key=caption_key)
            if not any(pre_caption(c, 30) for c in caps):
                skipped.append((f"{ann_file}:{i}", str(ann["image"]), "empty caption"))
                continue
            path = resolve_image_path(ann["image"], image_root)
            key = ann.get("image_id", path)
            try:
                hash(key)
            except TypeError:
                key = json.dumps(key, sort_keys=True)
            yield {"path": path, "image": ann["image"], "captions": caps, "image_id": ids.setdefault(key, len(ids)), "source": f"{ann_file}:{i}"}


def _load(job: tuple[dict[str, Any], int | None]) -> tuple[dict[str, Any], bytes | None, str, str]:
    """(entry, image bytes or None, extension, reason): read, check that it decodes, resize."""
    from PIL import Image

    entry, resize = job
    try:
        with PathManager.open(entry["path"], "rb") as f:
            data = f.read()
        img = Image.open(io.BytesIO(data))
        fmt = img.format
        img.load()  # decodes: a truncated or corrupt file fails here
    except FileNotFoundError:
        return entry, None, "", "file not found"
    except Exception as e:  # PIL raises several types for bad files
        return entry, None, "", f"unreadable image ({e.__class__.__name__}: {e})"
    ext = _EXT.get(os.path.splitext(entry["path"])[1].lower().lstrip("."), _PIL_EXT.get(fmt or "", "jpg"))
    if resize and min(img.size) > resize:
        w, h = img.size
        scale = resize / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
        buf = io.BytesIO()
        if ext == "jpg":
            img.convert("RGB").save(buf, format="JPEG", quality=95)
        else:
            img.save(buf, format=fmt or "PNG")
        data = buf.getvalue()
    return entry, data, ext, ""


def make_shards(ann_files: Sequence[str], image_root: str, out: str, shard_size: int = 1000, resize: int | None = None, workers: int = 1,
                caption_key: str = "caption", prefix: str = "shard", progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Write the shards of ``ann_files`` (official pretraining JSON) to ``out``; returns the index."""
    import webdataset as wds

    if isinstance(ann_files, str):
        ann_files = [ann_files]
    if int(shard_size) < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    if resize is not None and int(resize) < 1:
        raise ValueError(f"--resize must be >= 1, got {resize}")
    index_file = os.path.join(out, "index.json")
    if os.path.exists(index_file):
        if not overwrite:
            raise DataError(f"{index_file} exists: {out} holds a shard set already (--overwrite replaces it)")
        for f in glob.glob(os.path.join(out, f"{prefix}-*.tar")) + [index_file]:
            os.remove(f)
    for f in ann_files:  # every file is checked before anything is written
        read_json_list(f)
    os.makedirs(out, exist_ok=True)
    skipped: list[tuple[str, str, str]] = []
    jobs = ((e, resize) for e in _entries(ann_files, image_root, caption_key, skipped))
    pool = None
    if workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(workers)
        results = pool.imap(_load, jobs, chunksize=16)  # ordered: the output does not depend on the worker count
    else:
        results = map(_load, jobs)
    if progress:
        from tqdm import tqdm

        results = tqdm(results, desc="make_shards", unit="img")
    shards: list[dict[str, Any]] = []
    written, writer, tmp, ids_written = 0, None, None, set()

    def close() -> None:
        writer.close()
        final = tmp[: -len(".tmp")]
        os.replace(tmp, final)
        shards[-1]["url"] = os.path.basename(final)

    try:
        for entry, data, ext, reason in results:
            if data is None:
                skipped.append((entry["source"], entry["path"], reason))
                continue
            if writer is None or shards[-1]["num_samples"] == shard_size:
                if writer is not None:
                    close()
                tmp = os.path.join(out, f"{prefix}-{len(shards):06d}.tar.tmp")
                writer = wds.TarWriter(tmp)
                shards.append({"url": None, "num_samples": 0})
            meta = {"captions": entry["captions"], "image_id": entry["image_id"], "image": entry["image"], "source": entry["source"]}
            writer.write({"__key__": f"{written:09d}", ext: data, "json": json.dumps(meta).encode("utf-8")})
            shards[-1]["num_samples"] += 1
            written += 1
            ids_written.add(entry["image_id"])
        if writer is not None:
            close()
    finally:
        if pool is not None:
            pool.terminate()
    with open(os.path.join(out, "skipped.txt"), "w") as f:
        for source, path, reason in skipped:
            f.write(f"{source}\t{path}\t{reason}\n")
    index = {"format": FORMAT, "shards": shards, "num_samples": written, "num_skipped": len(skipped), "num_image_ids": len(ids_written),
             "ann_files": list(ann_files), "image_root": image_root, "caption_key": caption_key, "resize": resize}
    with open(index_file + ".tmp", "w") as f:
        json.dump(index, f, indent=1)
    os.replace(index_file + ".tmp", index_file)
    for source, path, reason in skipped:
        logger.warning("make_shards: skipped %s (%s): %s", source, path, reason)
    return index
