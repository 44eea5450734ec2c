"""The shard stream's shuffle buffer, and how to resume it without reading what it consumed.

:func:`buffer_shuffle` is webdataset's shuffle buffer (``webdataset.filters._shuffle`` with
``initial = bufsize``), sample for sample: fill the buffer, then emit a uniformly picked
sample for every one read, then drain. Its output order depends only on the rng and on how
many samples come in, never on what they are. So the state after ``k`` samples out of an
epoch of ``n`` -- which positions sit in the buffer, how many were read -- can be found by
running the same buffer over the positions ``0 .. n-1`` (:func:`replay_shuffle`), and the
real stream continued from there by reading just those buffered samples and the ones after
the last read (``buffer_shuffle(rest, bufsize, rng, buf=<the buffered samples>)``). webdataset
has no such entry point, hence the copy; tests/test_shards.py checks it against the original.
"""
from __future__ import annotations

import random
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def _pick(buf: list[T], rng: random.Random) -> T:
    """Remove and return a uniformly chosen item (webdataset's ``pick``: the last item fills the hole)."""
    k = rng.randint(0, len(buf) - 1)
    item = buf[k]
    buf[k] = buf[-1]
    buf.pop()
    return item


def buffer_shuffle(data: Iterable[T], bufsize: int, rng: random.Random, buf: list[T] | None = None) -> Iterator[T]:
    """``data`` shuffled through a buffer of ``bufsize`` items, drawing from ``rng``.

    ``buf``: the contents of a buffer suspended after an emitted item (its order matters),
    to continue it; the list is used, and changed, in place."""
    buf = [] if buf is None else buf
    data = iter(data)
    for item in data:
        buf.append(item)
        if len(buf) < bufsize:  # still filling: read two for every one emitted
            try:
                buf.append(next(data))
            except StopIteration:
                pass
        if len(buf) >= bufsize:
            yield _pick(buf, rng)
    while buf:
        yield _pick(buf, rng)


def replay_shuffle(total: int, emitted: int, bufsize: int, rng: random.Random) -> tuple[list[int], int]:
    """Run :func:`buffer_shuffle` over positions ``0 .. total-1`` until it has emitted
    ``emitted`` items (``0 < emitted < total``); ``rng`` is left where the real stream's would be.

    Returns ``(buffered, read)``: the positions in the buffer, in buffer order, and how many
    positions were read from the input (the real stream continues with position ``read``)."""
    if not 0 < emitted < total:
        raise ValueError(f"replay_shuffle: emitted must be in (0, {total}), got {emitted}")
    read = 0

    def positions() -> Iterator[int]:
        nonlocal read
        while read < total:
            read += 1
            yield read - 1

    buf: list[int] = []
    stream = buffer_shuffle(positions(), bufsize, rng, buf)
    for _ in range(emitted):
        next(stream)
    return list(buf), read
