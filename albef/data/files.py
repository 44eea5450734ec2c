"""Files the datasets and the shard tools share: annotation JSON read with errors naming the
file, image paths and decoding with clear errors, captions, deterministic per-sample randomness."""
from __future__ import annotations

import json
import logging
import os
import random
import zlib
from typing import Any

from PIL import Image, ImageFile, UnidentifiedImageError

from albef.utils.file_io import PathManager

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated JPEG is an error to report, not to hide
logger = logging.getLogger("albef.data")


class DataError(RuntimeError):
    """Bad data that stops the run (strict mode, or nothing usable left); the message names the file."""


def read_json(path: str, what: str = "annotation file") -> Any:
    """The JSON value in ``path`` (UTF-8 text); a missing file, text in another encoding or
    invalid JSON is a DataError naming the file (and, for a bad byte, its position)."""
    if not PathManager.exists(path):
        raise DataError(f"{what} not found: {path}")
    with PathManager.open(path, "rb") as f:
        data = f.read()
    try:
        # decoded here, whole, rather than by a text stream: the error's offset is then the
        # byte's position in the file, not in whichever read chunk it fell in
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text: byte {e.start} ({data[e.start:e.start + 1]!r}) {e.reason}; JSON {what}s must be "
            "UTF-8: re-encode the file (e.g. iconv -f latin1 -t utf-8, with its actual encoding)"
        ) from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e


def read_json_list(path: str, what: str = "annotation file") -> list[Any]:
    data = read_json(path, what)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of annotations, got {type(data).__name__}")
    return data


def resolve_image_path(image: str, image_root: str) -> str:
    if os.path.isabs(image) or "://" in image or not image_root:
        return image
    return os.path.join(image_root, image)


def load_image(path: str) -> Image.Image:
    """Open ``path`` as RGB; raise ``OSError`` with a reason for a missing, unreadable or truncated file."""
    try:
        f = PathManager.open(path, "rb")
    except FileNotFoundError as e:
        raise OSError("file not found") from e
    except (OSError, ValueError) as e:
        raise OSError(f"unreadable image ({e})") from e
    with f:
        return decode_image(f)


def decode_image(f) -> Image.Image:
    """Decode the image in the binary file object ``f`` as RGB; raise ``OSError`` with a reason
    for an unreadable or truncated one (a file on disk, or the bytes of a shard sample)."""
    try:
        img = Image.open(f)
        img.load()  # decode now so truncation is detected here
        return img.convert("RGB")
    except UnidentifiedImageError as e:
        raise OSError("unreadable image (not a recognised image format, or truncated before its header ends)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise OSError(f"unreadable image ({e})") from e


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """A ``random.Random`` that depends only on (seed, epoch, index)."""
    return random.Random(zlib.crc32(f"{seed}/{epoch}/{index}".encode()))


def captions_of(ann: dict[str, Any], path: str, i: int, key: str = "caption") -> list[str]:
    if key not in ann:
        raise DataError(f"{path}: entry {i} has no '{key}' key (keys: {sorted(ann)})")
    caps = ann[key]
    if isinstance(caps, str):
        return [caps]
    if isinstance(caps, list) and all(isinstance(c, str) for c in caps):
        return list(caps)
    raise DataError(f"{path}: entry {i}: '{key}' must be a string or a list of strings, got {caps!r}")
