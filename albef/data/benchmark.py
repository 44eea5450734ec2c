"""Benchmarking the training data pipeline (detectron2's ``DataLoaderBenchmark``, for our loaders).

:class:`DataLoaderBenchmark` times the training DataLoader of a config over datasets (e.g.
the JSON reader against WebDataset shards of the same JPEGs) and worker counts, in rounds
that interleave them so a shared machine's drift hits all alike; :func:`per_sample_costs`
splits one sample's cost into reading, decoding, transforms and tokenising. The inputs are
made here too: :func:`write_jpegs` writes COCO-sized JPEGs with a pretraining JSON, and
:func:`caption` draws a COCO-length caption. ``tools/benchmark.py --what data`` runs them.
"""
from __future__ import annotations

import json
import os
import random
import statistics
import time
from typing import Any, Sequence

WORDS = ("a man woman dog cat people group of two young small large red blue white black green sitting standing "
         "riding walking holding on in at with the near next to front top street table field water beach room "
         "building car train bus plate food ball shirt tree grass snow sky city").split()


def caption(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14)))  # COCO captions: ~10 words


def stats(xs: list[float]) -> dict:
    """Median, min, max and mean of a list of timings (seconds)."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "mean": statistics.fmean(xs)}


def write_jpegs(folder: str, n: int, seed: int = 0) -> str:
    """``n`` 640x480 JPEGs of smooth random content (COCO-like size and file size) and a pretrain JSON."""
    import numpy as np
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng, prng = np.random.default_rng(seed), random.Random(seed)
    anns = []
    for i in range(n):
        low = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((640, 480), Image.BICUBIC)
        arr = np.clip(np.asarray(low, dtype=np.int16) + rng.integers(-12, 13, (480, 640, 3)), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"{i:06d}.jpg")
        Image.fromarray(arr).save(path, quality=90)
        anns.append({"image": path, "caption": caption(prng)})
    ann = os.path.join(folder, "pretrain.json")
    with open(ann, "w") as f:
        json.dump(anns, f)
    return ann


def per_sample_costs(ann: str, shard_dir: str | None, dataset, tokenizer, max_tokens: int, n: int) -> dict:
    """Seconds per sample on one core, by stage: reading the bytes (one file per image vs.
    sequential tar reads), decoding the JPEG, the training transforms, tokenising the caption."""
    import io

    from PIL import Image

    from albef.data.files import sample_rng
    from albef.data.tokenization import tokenize

    entries = json.load(open(ann))[:n]
    t0 = time.perf_counter()
    blobs = []
    for e in entries:
        with open(e["image"], "rb") as f:
            blobs.append(f.read())
    out = {"read_file_s": (time.perf_counter() - t0) / len(entries)}
    if shard_dir is not None:
        from albef.data.shards import iter_shard, read_index, shard_urls

        urls = shard_urls(read_index(shard_dir), shard_dir)
        t0, count, nbytes = time.perf_counter(), 0, 0
        for url in urls:
            for raw in iter_shard(url):
                count += 1
                nbytes += len(raw.get("jpg", b""))
        out["read_shard_s"] = (time.perf_counter() - t0) / max(count, 1)
        out["shard_bytes_per_sample"] = nbytes / max(count, 1)
    t0 = time.perf_counter()
    images = []
    for b in blobs:
        img = Image.open(io.BytesIO(b))
        img.load()
        images.append(img.convert("RGB"))
    out["decode_s"] = (time.perf_counter() - t0) / len(blobs)
    out["jpeg_bytes_per_sample"] = sum(map(len, blobs)) / len(blobs)
    t0 = time.perf_counter()
    for i, img in enumerate(images):
        dataset.transform(img, sample_rng(0, 0, i))
    out["transform_s"] = (time.perf_counter() - t0) / len(images)
    caps = [e["caption"] for e in entries]
    t0 = time.perf_counter()
    tokenize(tokenizer, caps, max_tokens)
    out["tokenize_s"] = (time.perf_counter() - t0) / len(caps)
    out["total_json_s"] = out["read_file_s"] + out["decode_s"] + out["transform_s"] + out["tokenize_s"]
    if shard_dir is not None:
        out["total_shards_s"] = out["read_shard_s"] + out["decode_s"] + out["transform_s"] + out["tokenize_s"]
    out["samples"] = len(entries)
    return out


class DataLoaderBenchmark:
    """Batches per second of the config's training DataLoader over each of ``datasets``
    (``{name: dataset}``) and each worker count.

    ``cfg``: the config whose ``data`` builds the loader (``data.num_workers`` is set per
    count); ``steps``: timed batches per (dataset, workers), after one untimed batch
    (worker start-up and the first batch are not the steady state); ``repeats``: rounds,
    each going over every dataset and worker count in turn."""

    def __init__(self, cfg, datasets: dict[str, Any], tokenizer: Any, steps: int, repeats: int = 1):
        self.cfg, self.datasets, self.tokenizer, self.steps, self.repeats = cfg, datasets, tokenizer, steps, repeats

    def benchmark_workers(self, workers: Sequence[int]) -> dict[str, dict[str, dict]]:
        """``{name: {str(workers): {pairs_per_s (median over rounds), pairs_per_s_runs, pairs_per_s_min,
        pairs_per_s_max, pairs_per_s_per_worker, batch_time_s: stats}}}``."""
        from albef.data import build as data_build

        cfg, batch = self.cfg, int(self.cfg.train.batch_size)
        rates: dict[str, dict[str, list[float]]] = {name: {str(w): [] for w in workers} for name in self.datasets}
        times_of: dict[str, dict[str, list[float]]] = {name: {str(w): [] for w in workers} for name in self.datasets}
        for _ in range(self.repeats):  # rounds interleave the loaders, so the machine's drift hits both alike
            for name, dataset in self.datasets.items():
                for w in workers:
                    cfg.data.num_workers = w
                    it = iter(data_build.build_train_loader(cfg, dataset, self.tokenizer))
                    next(it)  # worker start-up and first batch: not the steady state
                    times = []
                    for _ in range(self.steps):
                        t0 = time.perf_counter()
                        next(it)
                        times.append(time.perf_counter() - t0)
                    del it  # shuts the workers down before the next count starts its own
                    rates[name][str(w)].append(batch * len(times) / sum(times))
                    times_of[name][str(w)].extend(times)
        loaders = {}
        for name in self.datasets:
            per_workers = {}
            for w in workers:
                pps = rates[name][str(w)]
                med = statistics.median(pps)
                per_workers[str(w)] = {"pairs_per_s": med, "pairs_per_s_runs": pps, "pairs_per_s_min": min(pps), "pairs_per_s_max": max(pps),
                                       "pairs_per_s_per_worker": med / max(w, 1), "batch_time_s": stats(times_of[name][str(w)])}
            loaders[name] = per_workers
        return loaders

