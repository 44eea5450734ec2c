"""Pretraining pairs streamed from WebDataset tar shards (``tools/make_shards.py``)."""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
import random
import tarfile
import zlib
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import IterableDataset, get_worker_info

from albef.data.files import DataError, decode_image, sample_rng
from albef.data.stream_shuffle import buffer_shuffle, replay_shuffle
from albef.data.text import pre_caption
from albef.data.transforms import PairedHorizontalFlip, build_transforms
from albef.registry import DATASET_REGISTRY
from albef.utils import comm
from albef.utils.file_io import PathManager

logger = logging.getLogger("albef.data")

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")


def expand_shards(shards: str | Sequence[str], index: str | None = None) -> tuple[list[str], list[int] | None, str]:
    """(shard urls, samples per shard or None, where they came from) for ``shards``: a
    directory or ``index.json`` written by ``tools/make_shards.py``, a brace pattern
    (``/data/cc3m/shard-{000000..000331}.tar``), or a list of urls/patterns. ``index``
    (optional) gives the sample counts of a pattern or list."""
    from braceexpand import braceexpand

    from albef.data.shards import read_index, shard_urls

    if isinstance(shards, str) and (shards.endswith(".json") or PathManager.isdir(shards)):
        idx = read_index(shards)
        base = shards if PathManager.isdir(shards) else os.path.dirname(shards)
        return shard_urls(idx, base), [int(s["num_samples"]) for s in idx["shards"]], shards
    patterns = [shards] if isinstance(shards, str) else list(shards or [])
    urls = [u for p in patterns for u in braceexpand(str(p))]
    if not urls:
        raise DataError("data.train.shards is empty: give a shard directory, an index.json, a brace pattern or a list of shards")
    counts = None
    if index:
        idx = read_index(index)
        by_url = dict(zip((os.path.abspath(u) for u in shard_urls(idx, os.path.dirname(index) if index.endswith(".json") else index)),
                          (int(s["num_samples"]) for s in idx["shards"])))
        missing = [u for u in urls if os.path.abspath(u) not in by_url]
        if missing:
            raise DataError(f"data.train.index {index} does not list {len(missing)} of the shards, e.g. {missing[0]}")
        counts = [by_url[os.path.abspath(u)] for u in urls]
    return urls, counts, str(shards)


@DATASET_REGISTRY.register()
class WebDatasetPretrain(IterableDataset):
    """Image-caption pairs for pretraining, streamed from WebDataset shards; the
    counterpart of :class:`~albef.data.datasets.pretrain_json.PretrainJSON` at web scale.

    Each sample is ``{"image": [3, res, res], "caption": str, "image_id": int, "skipped":
    [(name, reason)], "sample_id": "<shard>#<key>"}`` made exactly as the JSON reader makes
    it: the same transforms, ``pre_caption``, one caption drawn per access, the image id the
    shard tool assigned (shared by the captions of one image), and a bad sample (an image
    that does not decode, no usable caption) skipped and reported with the next one
    (``strict``: a :class:`DataError` naming shard and key).

    The stream: epoch e orders the shards by a permutation seeded by (seed, e); reader s of
    S = ranks x DataLoader workers reads shards s, s+S, ... of it (no duplicates or gaps
    within an epoch: every sample is read by exactly one reader), through a shuffle buffer
    (``shuffle_buffer`` samples, webdataset's, seeded by (seed, e, s)). A reader's epochs
    follow each other without end. The stream is a pure function of the seed and the number
    of samples a reader has consumed, so :class:`~albef.data.loaders.StreamingLoader` resumes
    it exactly from that count. With the index's shard sizes it jumps over whole epochs and,
    inside the epoch, over whole consumed shards (the shuffle buffer replayed over sample
    positions, :mod:`albef.data.stream_shuffle`): only the shards still holding samples to
    come are read. Without them it re-reads the consumed samples without decoding them.

    ``resampled``: shards drawn with replacement, forever (webdataset's multi-node mode: no
    epoch boundaries to agree on, any number of readers); a resumed run reseeds it.

    Args:
        shards: a directory or ``index.json`` of ``tools/make_shards.py``, a brace pattern
            (``.../shard-{000000..000331}.tar``) or a list; local paths or any iopath url.
        index: an ``index.json`` giving the sample counts of a pattern or list (for the
            epoch size, the one-epoch alpha ramp and fast resume).
        shuffle_buffer: samples in the shuffle buffer (0: shard order).
        resampled: sample shards with replacement (see above).
        Builder-supplied: transforms, max_words, strict, image_ids, seed.
    """

    loader = "StreamingLoader"
    text_field = "caption"
    max_skip_tries = 20

    def __init__(self, shards: str | Sequence[str] = (), index: str | None = None, shuffle_buffer: int = 1000, resampled: bool = False,
                 transforms: dict[str, Any] | None = None, max_words: int = 30, strict: bool = False, image_ids: bool = True, seed: int = 0):
        if int(shuffle_buffer) < 0:
            raise DataError(f"data.train.shuffle_buffer must be >= 0, got {shuffle_buffer!r}")
        self.urls, self.counts, self.source = expand_shards(shards, index)
        self.shuffle_buffer = int(shuffle_buffer)
        self.resampled = bool(resampled)
        self.seekable = not self.resampled
        self.max_words, self.strict, self.seed = max_words, strict, seed
        self.has_image_ids = image_ids
        t = dict(transforms or {})
        self.transform = build_transforms(t, is_train=True)
        self.flip = PairedHorizontalFlip(t.get("hflip_prob", 0.0), t.get("hflip_swap_words"))
        self.set_stream(comm.get_rank(), comm.get_world_size(), 0, [0], 0)

    @property
    def epoch_size(self) -> int | None:
        """Samples per epoch (from the index), or None when the shard sizes are unknown."""
        return sum(self.counts) if self.counts is not None else None

    def set_stream(self, rank: int, world_size: int, num_workers: int, positions: list[int], reseed: int = 0, worker_offset: int = 0) -> None:
        """Which readers this process's workers are and where each continues: ``positions[w]``
        raw samples (bad ones included) already consumed by stream w of this rank; DataLoader
        worker i reads stream ``(i + worker_offset) % workers``."""
        self.rank, self.world_size, self.num_workers = int(rank), int(world_size), int(num_workers)
        self.positions = [int(p) for p in positions] or [0]
        self.reseed = int(reseed)
        self.worker_offset = int(worker_offset)

    # ------------------------------------------------------------------ the raw stream
    def _epoch_shards(self, epoch: int, reader: int, readers: int) -> list[int]:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + epoch + 7919 * self.reseed)
        return torch.randperm(len(self.urls), generator=g).tolist()[reader::readers]

    def _read_shards(self, shard_ids) -> Iterator[dict[str, Any]]:
        """Raw samples (``__key__``, ``__url__``, extension -> bytes) of the shards, in order."""
        from albef.data.shards import iter_shard

        for i in shard_ids:
            url = self.urls[i]
            try:
                yield from iter_shard(url)
            except (OSError, ValueError, tarfile.TarError) as e:  # a shard cut short raises tarfile.ReadError
                if self.strict:
                    raise DataError(f"{url}: cannot read the shard ({e}) (data.strict=true stops here)") from e
                logger.warning("Skipping the rest of shard %s: %s", url, e)

    def _shuffled(self, raw: Iterator[dict[str, Any]], rng: random.Random) -> Iterator[dict[str, Any]]:
        if self.shuffle_buffer <= 1:
            return raw
        return buffer_shuffle(raw, self.shuffle_buffer, rng)

    def _read_positions(self, shard_ids: list[int], counts: list[int], wanted: set[int], start: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """(position in the epoch, raw sample) for the positions in ``wanted`` and every one
        from ``start`` on, in order. A shard that ends before ``start`` is opened only if it
        holds a wanted position, and closed after its last one."""
        first = 0
        for i, n in zip(shard_ids, counts):
            end = first + n
            last = max((p for p in wanted if first <= p < end), default=first - 1) if end <= start else None
            if last is None or last >= first:
                with contextlib.closing(self._read_shards([i])) as shard:
                    for j, raw in enumerate(shard):
                        pos = first + j
                        if last is not None and pos > last:
                            break
                        if pos >= start or pos in wanted:
                            yield pos, raw
            first = end

    def _resumed_epoch(self, shard_ids: list[int], rng: random.Random, skip: int) -> Iterator[dict[str, Any]]:
        """The epoch's shuffled raw stream after its first ``skip`` samples, without reading
        the shards those used up: the shuffle buffer is replayed over sample positions (the
        index's per-shard counts), which gives the positions still buffered and the first one
        not yet read; only the shards holding those are opened, so the cost of a resume does
        not grow with the position in the epoch. Trusts the index's counts, as the jump over
        whole epochs does."""
        counts = [self.counts[i] for i in shard_ids]
        if self.shuffle_buffer > 1:
            buffered, start = replay_shuffle(sum(counts), skip, self.shuffle_buffer, rng)
        else:  # no buffer: the stream is the shards' order
            buffered, start = [], skip
        found = self._read_positions(shard_ids, counts, set(buffered), start)
        # every buffered position precedes `start`, so they come first
        head = list(itertools.islice(found, len(buffered)))
        by_pos = {p: raw for p, raw in head if p < start}
        if len(by_pos) < len(buffered):
            logger.warning("Resuming the shard stream: %d buffered sample(s) not found (a shard shorter than its index "
                           "says): the stream continues without them", len(buffered) - len(by_pos))
        rest = itertools.chain((raw for p, raw in head if p >= start), (raw for _, raw in found))
        if self.shuffle_buffer <= 1:
            yield from rest
        else:
            yield from buffer_shuffle(rest, self.shuffle_buffer, rng, buf=[by_pos[p] for p in buffered if p in by_pos])

    def _raw_epochs(self, reader: int, readers: int, consumed: int) -> Iterator[tuple[int, Iterator[dict[str, Any]], int]]:
        """(epoch, its shuffled raw stream, raw samples of it to skip) from position ``consumed``."""
        if self.resampled:
            rng = random.Random(f"{self.seed}/{self.reseed}/{reader}")
            shard_rng = random.Random(f"shards/{self.seed}/{self.reseed}/{reader}")
            endless = self._read_shards(shard_rng.randrange(len(self.urls)) for _ in iter(int, 1))
            yield self.reseed, self._shuffled(endless, rng), 0
            return
        if len(self.urls) < readers:
            raise DataError(
                f"data.train: {len(self.urls)} shard(s) in {self.source} for {readers} readers ({self.world_size} rank(s) x "
                f"{max(self.num_workers, 1)} worker(s)): each reader needs a shard of its own. Make more, smaller shards "
                "(tools/make_shards.py --shard-size), use fewer data.num_workers, or resampled: true"
            )
        epoch, skip = 0, consumed
        if self.counts is not None:  # jump over whole epochs without reading them
            while True:
                n = sum(self.counts[i] for i in self._epoch_shards(epoch, reader, readers))
                if n == 0 or skip < n:
                    break
                skip -= n
                epoch += 1
        while True:
            rng = random.Random(f"{self.seed}/{epoch}/{reader}/{self.reseed}")
            shard_ids = self._epoch_shards(epoch, reader, readers)
            if self.counts is not None and 0 < skip < sum(self.counts[i] for i in shard_ids):  # resuming inside this epoch
                yield epoch, self._resumed_epoch(shard_ids, rng, skip), 0
            else:
                yield epoch, self._shuffled(self._read_shards(shard_ids), rng), skip
            skip = 0  # carried over by the caller when the epoch was shorter than the skip
            epoch += 1

    # ------------------------------------------------------------------ samples
    def _decode(self, raw: dict[str, Any], epoch: int) -> dict[str, Any]:
        key = raw.get("__key__", "")
        ext = next((e for e in IMAGE_EXTS if e in raw), None)
        if ext is None or "json" not in raw:
            raise OSError(f"no image or no json entry (has {sorted(k for k in raw if not k.startswith('__'))})")
        try:
            meta = json.loads(raw["json"])
        except (ValueError, UnicodeDecodeError) as e:
            raise OSError(f"invalid json entry ({e})") from e
        caps = meta.get("captions", meta.get("caption"))
        caps = [caps] if isinstance(caps, str) else list(caps or [])
        caps = [c for c in (pre_caption(c, self.max_words) for c in caps if isinstance(c, str)) if c]
        if not caps:
            raise OSError("empty caption")
        img = decode_image(io.BytesIO(raw[ext]))
        number = int(key) if str(key).isdigit() else zlib.crc32(str(key).encode())
        rng = sample_rng(self.seed, epoch, number)
        caption = rng.choice(caps)
        img, caption = self.flip(img, caption, rng)
        image_id = int(meta["image_id"]) if self.has_image_ids and "image_id" in meta else number
        return {"image": self.transform(img, rng), "caption": caption, "image_id": image_id}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = ((info.id + self.worker_offset) % info.num_workers, info.num_workers) if info is not None else (0, 1)
        reader, readers = self.rank * workers + worker, self.world_size * workers
        consumed = self.positions[worker] if worker < len(self.positions) else 0
        pos, skip_left, skipped = consumed, None, []
        for epoch, stream, skip in self._raw_epochs(reader, readers, consumed):
            skip_left = skip if skip_left is None else skip_left
            for raw in stream:
                if skip_left > 0:  # resuming: already consumed before the checkpoint
                    skip_left -= 1
                    continue
                pos += 1
                name = f"{os.path.basename(str(raw.get('__url__', '?')))}#{raw.get('__key__', '?')}"
                try:
                    # resampled: a sample drawn again gets a new crop and caption (the draw count)
                    sample = self._decode(raw, pos if self.resampled else epoch)
                except OSError as e:
                    if self.strict:
                        raise DataError(f"{raw.get('__url__', '?')} sample {raw.get('__key__', '?')}: {e} (data.strict=true stops here)") from e
                    skipped.append((name, str(e)))
                    if len(skipped) >= self.max_skip_tries:
                        raise DataError(f"{self.max_skip_tries} consecutive bad samples in {self.source}: "
                                        + "; ".join(f"{n}: {r}" for n, r in skipped))
                    continue
                sample.update(skipped=skipped, sample_id=name, _worker=worker, _pos=pos)
                skipped = []
                yield sample
