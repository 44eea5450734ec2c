"""What a training step does when its loss or gradient norm is not finite
(``train.nonfinite``): :class:`StopOnNonFinite` (``stop``, the default) or
:class:`SkipNonFinite` (``skip``).

A policy sees every step once, after its backward and before its optimizer step
(:meth:`NonFinitePolicy.admit`), and says whether the step may update the weights.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from albef.utils import comm

logger = logging.getLogger("albef.train")


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient norm with ``train.nonfinite=stop``; the message names the
    iteration, the loss terms and the samples of the batch."""


def finite_on_every_rank(total: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
    """[] bool: ``total`` (the step's loss, []) and ``grad_norm`` ([]) are finite, on every
    rank (MIN all-reduce: a rank's own loss can be the bad one, and every rank must skip or
    stop together). No host sync on one process."""
    finite = torch.isfinite(total) & torch.isfinite(grad_norm)
    if comm.get_world_size() > 1:
        flag = finite.to(torch.int32)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        finite = flag.bool()
    return finite


class NonFinitePolicy:
    """Base: every step is admitted. ``skipped_steps`` counts the steps a policy refused (it is
    saved in checkpoints, so a resumed run continues the count)."""

    def __init__(self) -> None:
        self.skipped_steps = 0

    def admit(self, iteration: int, finite: torch.Tensor, terms: dict[str, torch.Tensor], sample_ids: list) -> bool:
        """Whether the step of ``iteration`` may take its optimizer step.

        Args:
            finite: [] bool, from :func:`finite_on_every_rank`.
            terms: name -> [] tensor: ``total_loss``, ``grad_norm`` and each ``loss_*``, for a report.
            sample_ids: per (micro-)batch, its sample ids (tensor or list), for a report.
        """
        return True

    def check(self) -> None:
        """Raise for a step admitted earlier whose flag was not read yet (nothing by default)."""


class StopOnNonFinite(NonFinitePolicy):
    """``stop``: raise :class:`NonFiniteError` naming the iteration, the loss terms and the
    sample ids of its batch. The flag is read one step late (:meth:`check`: called after the
    next backward is queued, and by hooks before any checkpoint, evaluation or log line), so
    the check costs no stall on a GPU; the step itself is admitted at once."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: tuple | None = None  # (iteration, host flag, its ready event, terms, sample ids)

    def admit(self, iteration: int, finite: torch.Tensor, terms: dict[str, torch.Tensor], sample_ids: list) -> bool:
        self.check()  # the previous step's flag: its work is done by now
        self._pending = (iteration, *_host_flag(finite), terms, sample_ids)
        return True

    def check(self) -> None:
        if self._pending is None:
            return
        it, flag, event, terms, ids = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
        if not bool(flag):
            raise NonFiniteError(
                f"Non-finite loss or gradient at iteration {it}: {describe(terms, ids)}. "
                "train.nonfinite=skip skips such steps instead."
            )


class SkipNonFinite(NonFinitePolicy):
    """``skip``: the flag is read at once (one host sync per step); a bad step is refused (no
    optimizer step, no ``after_step``, no logged losses), logged with the same details as
    ``stop``'s error, and counted in ``skipped_steps``."""

    def admit(self, iteration: int, finite: torch.Tensor, terms: dict[str, torch.Tensor], sample_ids: list) -> bool:
        if bool(finite):
            return True
        self.skipped_steps += 1
        logger.warning("Skipped iteration %d (train.nonfinite=skip; %d skipped so far): %s", iteration, self.skipped_steps,
                       describe(terms, sample_ids))
        return False


NONFINITE_POLICIES: dict[str, type[NonFinitePolicy]] = {"stop": StopOnNonFinite, "skip": SkipNonFinite}


def build_nonfinite_policy(name: str) -> NonFinitePolicy:
    """The policy named by ``train.nonfinite``."""
    if name not in NONFINITE_POLICIES:
        raise ValueError(f"train.nonfinite must be {' or '.join(NONFINITE_POLICIES)}, got {name!r}")
    return NONFINITE_POLICIES[name]()


def _host_flag(flag: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """``flag`` on the host without waiting for it: an asynchronous copy and the CUDA event
    that marks it done (None on the CPU, where the value is ready)."""
    if flag.device.type != "cuda":
        return flag, None
    host = torch.empty((), dtype=torch.bool, pin_memory=True)
    host.copy_(flag, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def describe(terms: dict[str, torch.Tensor], per_batch_ids: list, max_ids: int = 64) -> str:
    """The loss terms and the sample ids of an iteration's (micro-)batches, for a report."""
    sample_ids = [i for ids in per_batch_ids for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
    values = ", ".join(f"{k}={float(v):.6g}" for k, v in terms.items())
    shown = ", ".join(map(str, sample_ids[:max_ids])) + (f", ... ({len(sample_ids)} in all)" if len(sample_ids) > max_ids else "")
    return f"{values}; samples of the batch: [{shown}]"
