"""Training loaders (``data.loader``, LOADER_REGISTRY): how a dataset becomes an endless
stream of batches on this rank, where that stream stands (``state_dict``) and how it
continues after ``--resume`` (``load_state_dict``).

* :class:`MapStyleLoader` -- a dataset with ``__getitem__`` and ``__len__`` (the JSON
  readers), drawn through a sampler that shards ``(epoch, index)`` keys across ranks
  (:class:`~albef.data.samplers.InfiniteSampler` or the dataset's own ``build_sampler``);
  the sampler starts at the resumed position, so a resumed run sees exactly the batches an
  uninterrupted one would.
* :class:`StreamingLoader` -- an ``IterableDataset`` that shards itself across ranks and
  DataLoader workers (:class:`~albef.data.datasets.webdataset_pretrain.WebDatasetPretrain`):
  each batch carries its worker's stream position, the loader keeps the latest per worker,
  and a resumed run hands them back to the dataset.

The loaders take built objects, not the config: :func:`albef.data.build.build_train_loader`
makes the collator (with the text negatives), the sampler and the settings from ``data``
and ``train`` and passes each loader class the ones its constructor names (``dataset``,
``collate_fn``, ``sampler`` -- None for an ``IterableDataset`` --, ``batch_size``,
``num_workers``, ``seed``, ``rank``, ``world_size``, ``start_iter``, and the
``data.loader`` keys). ``data.loader.name: auto`` takes the dataset's ``loader`` attribute
(MapStyleLoader when it has none). A loader has ``__iter__`` (batches of ``batch_size``),
``epoch_size`` (pairs per epoch, or None) and optionally ``state_dict()`` /
``load_state_dict(state, start_iter)``.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from albef.registry import LOADER_REGISTRY

logger = logging.getLogger("albef.data")


def ignore_preemption_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a preemption signal sent to the whole process group
    (Slurm's SIGTERM at the time limit, ``kill -- -PGID``, ``--signal=USR1@T``) must not kill
    the workers while the main process finishes its step and writes a checkpoint: a dead
    worker makes the DataLoader raise in the main process at once (its SIGCHLD handler).

    SIGUSR1 is ignored. SIGTERM is ignored unless the worker's parent sends it, which is how
    the DataLoader and multiprocessing stop workers: at exit, a loader still alive (held by a
    reference cycle or a traceback) is not shut down by the DataLoader (a no-op once Python is
    exiting), and multiprocessing terminates its daemonic children with SIGTERM, then waits
    for them without a timeout -- a worker ignoring every SIGTERM hangs the exit. PyTorch's
    own worker handler tells the two senders apart too, but dies on a SIGTERM from anyone
    else. A Python handler is not told the sender; ``sigwaitinfo`` is: SIGTERM is blocked
    (threads started later inherit the mask) and a thread takes it.
    """
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # not on macOS: there a group-wide SIGTERM still stops the workers
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_parents_sigterm, args=(parent,), name="sigterm-from-parent", daemon=True).start()


def _exit_on_parents_sigterm(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent:
            os._exit(0)  # as PyTorch's handler does: a quiet exit, no failure for its SIGCHLD handler


@contextmanager
def preemption_signals_blocked():
    """SIGTERM and SIGUSR1 blocked in this thread while DataLoader workers start: a forked
    worker inherits the mask, so a signal that arrives before its ``worker_init_fn``
    (:func:`ignore_preemption_signals`) runs waits instead of killing it. This process gets
    its own signal when the block is lifted."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGUSR1})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def epoch_size(dataset) -> int | None:
    """Pairs per epoch: ``dataset.epoch_size`` if it says, else ``len(dataset)``, else None."""
    size = getattr(dataset, "epoch_size", None)
    if size is not None:
        return int(size)
    try:
        return len(dataset)
    except TypeError:
        return None


@LOADER_REGISTRY.register()
class MapStyleLoader(DataLoader):
    """Batches of ``batch_size`` indices drawn by ``sampler`` from ``dataset``, collated by
    ``collate_fn``, incomplete batches dropped. Its position is the sampler's (built at the
    resumed iteration), nothing else to save. A ``torch.utils.data.DataLoader``.

    Args:
        dataset: a map-style dataset (``__getitem__``, ``__len__``).
        collate_fn: list of samples -> batch dict (the ``data.collator``).
        sampler: an endless, rank-sharded index stream (None: an error naming the way out).
        batch_size: samples per batch on this rank (``train.batch_size``).
        num_workers: DataLoader worker processes (``data.num_workers``).
        seed, rank: seed the loader's own generator with ``seed + rank``.
        prefetch_factor, pin_memory, persistent_workers: ``data.loader`` settings
            (``pin_memory`` resolved from auto by the builder).
    """

    def __init__(self, dataset: Dataset, *, collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]], sampler: Sampler | None,
                 batch_size: int, num_workers: int = 0, seed: int = 0, rank: int = 0, prefetch_factor: int = 4,
                 pin_memory: bool = False, persistent_workers: bool = True):
        if sampler is None:
            raise ValueError(f"data.loader: MapStyleLoader needs a map-style dataset (indexed, with a length); "
                             f"{type(dataset).__name__} is an IterableDataset: use StreamingLoader (or name: auto)")
        nw = int(num_workers)
        super().__init__(
            dataset,
            batch_size=int(batch_size),
            sampler=sampler,
            num_workers=nw,
            collate_fn=collate_fn,
            pin_memory=bool(pin_memory),
            drop_last=True,
            persistent_workers=bool(persistent_workers) and nw > 0,
            prefetch_factor=int(prefetch_factor) if nw > 0 else None,
            worker_init_fn=ignore_preemption_signals if nw > 0 else None,
            # Its own generator: creating the iterator must not draw from the global RNG,
            # or a resumed run would diverge from an uninterrupted one.
            generator=torch.Generator().manual_seed(int(seed) + int(rank)),
        )

    def __iter__(self):
        with preemption_signals_blocked():  # the workers start here
            return super().__iter__()

    @property
    def epoch_size(self) -> int | None:
        return epoch_size(self.dataset)


class _StreamCollate:
    """The collator, plus the stream position of the batch's last sample (picklable: it
    runs in the workers)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        marks = [(s.pop("_worker"), s.pop("_pos")) for s in samples]
        batch = self.inner(samples)
        batch["stream_pos"] = marks[-1]
        return batch


@LOADER_REGISTRY.register()
class StreamingLoader:
    """Batches from an ``IterableDataset`` that splits its stream across ranks and workers
    itself (``dataset.set_stream(rank, world_size, num_workers, positions, reseed)``) and
    marks every sample with its worker and position (``_worker``, ``_pos``).

    ``state_dict()``: this rank's position per worker and the batches handed out (which
    worker's turn is next), as of the last batch handed out (the
    DataLoader's prefetched batches are not counted, so nothing is skipped or seen twice).
    ``load_state_dict(state, start_iter)``: continue from there when the run has the same
    ranks and workers and the dataset can seek (an epoch-ordered shard stream); otherwise
    the stream is reseeded with ``start_iter`` (new order, no exact continuation) and a
    warning says so.

    Args:
        dataset: an ``IterableDataset`` with ``set_stream`` (and ``seekable``).
        collate_fn: list of samples -> batch dict (the ``data.collator``).
        batch_size: samples per batch on this rank (``train.batch_size``).
        num_workers: DataLoader worker processes = streams of this rank (``data.num_workers``).
        rank, world_size: this process's place among the readers.
        seed: seeds the DataLoader's own generator with ``seed + rank``.
        start_iter: the iteration a resumed run starts at (reseeds the stream when no saved
            position is loaded).
        prefetch_factor, pin_memory: ``data.loader`` settings; ``persistent_workers`` is
            accepted for the shared config node (each pass starts its own workers).
    """

    def __init__(self, dataset, *, collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]], batch_size: int, num_workers: int = 0,
                 rank: int = 0, world_size: int = 1, seed: int = 0, start_iter: int = 0, prefetch_factor: int = 4,
                 pin_memory: bool = False, persistent_workers: bool = True):
        if not hasattr(dataset, "set_stream"):
            raise ValueError(f"data.loader: StreamingLoader needs a dataset that splits its own stream (set_stream); "
                             f"{type(dataset).__name__} does not: use MapStyleLoader (or name: auto)")
        self.dataset = dataset
        self.epoch_size = epoch_size(dataset)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_workers = int(num_workers)
        self.positions = [0] * max(self.num_workers, 1)
        self.batches = 0  # handed out so far: the DataLoader takes batch i from worker i % workers
        self.reseed = 0
        self.collate = _StreamCollate(collate_fn)
        self.pin_memory = bool(pin_memory)
        self.prefetch_factor = int(prefetch_factor)
        self.start_iter = int(start_iter)
        self._resolved = start_iter == 0  # a resumed run's position comes from load_state_dict, or is reseeded at __iter__

    def state_dict(self) -> dict[str, Any]:
        return {"positions": list(self.positions), "batches": self.batches, "num_workers": self.num_workers,
                "world_size": self.world_size, "rank": self.rank, "reseed": self.reseed}

    def load_state_dict(self, state: dict[str, Any] | None, start_iter: int = 0) -> None:
        self._resolved = True
        same = (isinstance(state, dict) and state.get("num_workers") == self.num_workers
                and state.get("world_size") == self.world_size and state.get("rank") == self.rank)
        if same and getattr(self.dataset, "seekable", False):
            self.positions = [int(p) for p in state["positions"]]
            self.batches = int(state.get("batches", 0))
            self.reseed = int(state.get("reseed", 0))
            logger.info("Streaming data: continuing each worker's stream at its saved position %s", self.positions)
            return
        why = ("the dataset cannot seek (resampled shards)" if not getattr(self.dataset, "seekable", False)
               else "no saved stream position for this number of ranks and workers" if state is None or not same else "")
        self.positions = [0] * max(self.num_workers, 1)
        self.batches = 0
        self.reseed = int(start_iter)
        logger.warning("Streaming data resumed at iteration %d by reseeding (%s): the samples seen next are a new draw, "
                       "not the exact continuation", start_iter, why)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self._resolved:  # built at start_iter > 0 and given no saved position
            self.load_state_dict(None, self.start_iter)
        # a new DataLoader starts its round robin at its worker 0: that worker plays the stream
        # whose turn it is, so the batches continue in the uninterrupted order
        nw = self.num_workers
        self.dataset.set_stream(self.rank, self.world_size, nw, list(self.positions), self.reseed, worker_offset=self.batches % max(nw, 1))
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, num_workers=nw, collate_fn=self.collate, drop_last=True,
            pin_memory=self.pin_memory, prefetch_factor=self.prefetch_factor if nw > 0 else None,
            worker_init_fn=ignore_preemption_signals if nw > 0 else None,
            # its own generator, as MapStyleLoader: the iterator's base seed must not come from
            # the global RNG, whose state a resumed run restores from the checkpoint
            generator=torch.Generator().manual_seed(self.seed + self.rank),
        )
        with preemption_signals_blocked():  # the workers start here
            batches = iter(loader)
        for batch in batches:
            worker, pos = batch.pop("stream_pos")
            self.positions[worker] = pos
            self.batches += 1
            yield batch
