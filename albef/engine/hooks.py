"""Training hooks: timing, LR schedule, alpha ramp, checkpoints (periodic and best), evaluation, writers.

The model's own per-step state changes (teacher EMA, queue, temperature clamp) are not a
hook: :class:`~albef.engine.train_loop.SimpleTrainer` calls ``model.after_step`` once
after every optimizer step. Hooks reach the trainer through ``self.trainer`` (a weak
reference); the trainer lists them in ``trainer.hooks``.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from typing import Any, Callable

import torch
from fvcore.common.checkpoint import PeriodicCheckpointer as _FvPeriodicCheckpointer
from fvcore.common.param_scheduler import ParamScheduler

from albef.checkpoint import gather_rng_states
from albef.checkpoint.checkpointer import numbered_checkpoints
from albef.engine.train_loop import HookBase
from albef.utils import comm
from albef.utils.events import EventWriter

logger = logging.getLogger("albef.train")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


class IterationTimer(HookBase):
    """Records ``time`` (seconds per step, data loading included) and ``pairs_per_s``."""

    def before_step(self) -> None:
        self._start = time.perf_counter()

    def after_step(self) -> None:
        dt = time.perf_counter() - self._start
        s = self.trainer.storage
        s.put_scalar("time", dt)
        s.put_scalar("pairs_per_s", self.trainer.global_batch / max(dt, 1e-9))


class LRScheduler(HookBase):
    """Sets every param group's lr from an fvcore ``ParamScheduler`` of ``iter / max_iter``, per iteration."""

    def __init__(self, scheduler: ParamScheduler):
        self.scheduler = scheduler

    def before_step(self) -> None:
        t = self.trainer
        lr = self.scheduler(t.iter / t.max_iter)
        for g in t.optimizer.param_groups:
            g["lr"] = lr
        t.storage.put_scalar("lr", lr, smoothing_hint=False)


class AlphaRamp(HookBase):
    """Distillation weight: alpha * min(1, iter / ramp_iters) (the paper ramps over the first epoch)."""

    def __init__(self, ramp_iters: int):
        self.ramp_iters = max(int(ramp_iters), 0)

    def before_step(self) -> None:
        t = self.trainer
        scale = 1.0 if self.ramp_iters == 0 else min(1.0, t.iter / self.ramp_iters)
        model = unwrap(t.model)
        model.set_distillation_scale(scale)
        t.storage.put_scalar("alpha", model.distillation_alpha, smoothing_hint=False)


def check_nonfinite(trainer) -> None:
    """The trainer's pending non-finite check (``train.nonfinite=stop``), before anything
    that keeps the weights or the logged losses (a checkpoint, an evaluation, a log line)."""
    fn = getattr(trainer, "check_nonfinite", None)
    if fn is not None:
        fn()


class PreemptionSignals:
    """Records that one of ``names`` (e.g. SIGTERM, SIGUSR1) arrived; installed for the
    training loop and restored after it. The handler only sets a flag: the step in flight
    finishes, then :class:`PeriodicCheckpointer` writes a checkpoint and ends the run."""

    def __init__(self, names: list[str] | tuple[str, ...] = ("SIGTERM", "SIGUSR1")):
        self.signums = []
        for n in names or []:
            num = getattr(signal, str(n).upper(), None)
            if not isinstance(num, signal.Signals):
                raise ValueError(f"train.preemption_signals: unknown signal {n!r} (e.g. SIGTERM, SIGUSR1)")
            self.signums.append(num)
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            logger.warning("Received %s: finishing this step, then writing a checkpoint and exiting", name)
        self.received = name

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("Not in the main thread: preemption signals are not handled")
            return
        for num in self.signums:
            self._previous[num] = signal.signal(num, self._handler)

    def restore(self) -> None:
        for num, prev in self._previous.items():
            signal.signal(num, prev)
        self._previous.clear()


class PeriodicCheckpointer(HookBase):
    """Saves ``model_XXXXXXX.pth`` every ``period`` iterations and ``model_final.pth`` at the end
    (fvcore's PeriodicCheckpointer), with RNG states of every rank and the data position.

    Also, beside the iteration period: every ``minutes`` of training (time-based), and when a
    preemption signal arrives (``signals``, a :class:`PreemptionSignals`): then it writes the
    checkpoint of the iteration just finished and asks the trainer to stop (the run exits 0;
    ``--resume`` continues it). Under several processes the decision is rank 0's clock or any
    rank's signal, agreed on by one small all-reduce per step, since saving is collective.
    """

    def __init__(self, checkpointer, period: int, max_to_keep: int | None, extra: Callable[[int], dict[str, Any]],
                 minutes: float | None = None, signals: PreemptionSignals | None = None):
        self.checkpointer = checkpointer
        self.period = period
        self.max_to_keep = max_to_keep
        self.extra = extra
        if minutes is not None and not float(minutes) > 0:
            raise ValueError(f"train.checkpoint_minutes must be > 0 or null, got {minutes!r}")
        self.minutes = float(minutes) if minutes is not None else None
        self.signals = signals
        self._group = None

    def before_train(self) -> None:
        self._fv = _FvPeriodicCheckpointer(self.checkpointer, self.period or 10**12, max_iter=self.trainer.max_iter, max_to_keep=self.max_to_keep)
        self._last_save = time.monotonic()
        if comm.get_world_size() > 1:
            import torch.distributed as dist

            # the flags travel as CPU tensors: a gloo group beside an NCCL one
            self._group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        if self.signals is not None:
            self.signals.install()

    def restore_signals(self) -> None:
        """Put the previous signal handlers back: called once the run is over (after the
        final evaluation, so a signal during it does not kill a finished run)."""
        if self.signals is not None:
            self.signals.restore()

    def _requests(self) -> tuple[bool, bool]:
        """(time to save, preemption requested), the same on every rank."""
        timed = self.minutes is not None and comm.is_main_process() and time.monotonic() - self._last_save >= self.minutes * 60
        preempt = self.signals is not None and self.signals.received is not None
        if comm.get_world_size() > 1:
            import torch.distributed as dist

            flags = torch.tensor([timed, preempt], dtype=torch.int32)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._group)
            timed, preempt = bool(flags[0]), bool(flags[1])
        return timed, preempt

    def _state(self, it: int) -> dict[str, Any]:
        """Saved beside model, optimizer and iteration: every rank's RNG state, every rank's
        trainer state (skipped-sample and skipped-step counts, continued by ``--resume``) and
        ``extra(it)`` (collective: every rank calls it)."""
        rng = gather_rng_states()
        trainer_state = comm.all_gather_object(self.trainer.state_dict())
        return {"rng": rng, "trainer_state": trainer_state, **self.extra(it)}

    def _save(self, it: int) -> None:
        check_nonfinite(self.trainer)
        self._fv.step(it, **self._state(it))
        self._last_save = time.monotonic()

    def _prune(self) -> None:
        """Keep the newest ``max_to_keep`` numbered checkpoints (fvcore prunes only the ones it
        wrote; the timed and preemption ones are numbered the same way). Rank 0 only."""
        if not self.max_to_keep or not comm.is_main_process():
            return
        d = self.checkpointer.save_dir
        for name in numbered_checkpoints(d)[: -self.max_to_keep]:
            os.remove(os.path.join(d, name))

    def after_step(self) -> None:
        it = self.trainer.iter
        due = (self.period and (it + 1) % self.period == 0) or it >= self.trainer.max_iter - 1
        timed, preempt = self._requests()
        if due:
            self._save(it)
        elif timed or preempt:
            check_nonfinite(self.trainer)
            self.checkpointer.save(f"model_{it:07d}", iteration=it, **self._state(it))
            self._last_save = time.monotonic()
            self._prune()
        if preempt and it < self.trainer.max_iter - 1:
            why = self.signals.received or "another rank's signal"
            logger.warning("Preempted (%s): checkpoint of iteration %d written to %s; continue with --resume",
                           why, it, self.checkpointer.save_dir)
            self.trainer.stop_requested = True


class EvalHook(HookBase):
    """Runs ``eval_fn() -> {"<prefix>/<metric>": value}`` every ``period`` iterations and after
    training; the metrics go to the event storage (metrics.json, TensorBoard) and to every
    ``on_results(results, iteration)`` callback (e.g. :class:`BestCheckpointer`)."""

    def __init__(self, period: int, eval_fn: Callable[[], dict[str, float]], on_results: list[Callable[[dict[str, float], int], None]] | None = None):
        self.period = period
        self.eval_fn = eval_fn
        self.on_results = list(on_results or [])
        self.latest: dict[str, float] | None = None

    def _run(self) -> None:
        check_nonfinite(self.trainer)
        results = self.eval_fn()
        self.latest = results
        s = self.trainer.storage
        for k, v in results.items():
            s.put_scalar(k, v, smoothing_hint=False)
        for fn in self.on_results:
            fn(results, self.trainer.iter)
        comm.synchronize()

    def after_step(self) -> None:
        nxt = self.trainer.iter + 1
        if self.period > 0 and nxt % self.period == 0 and nxt != self.trainer.max_iter:
            self._run()

    def after_train(self) -> None:
        if self.trainer.iter >= self.trainer.max_iter:  # not after a crash
            self._run()


class BestCheckpointer:
    """Keeps ``model_best.pth`` (the model, the iteration, the metric and its value) for the best
    value of ``metric`` seen so far (``mode``: max or min). A metric the evaluators do not
    report is an error naming the ones they do."""

    def __init__(self, checkpointer, metric: str, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"train.best_metric_mode must be max or min, got {mode!r}")
        self.checkpointer, self.metric, self.mode = checkpointer, metric, mode
        self.best: float | None = None

    def __call__(self, results: dict[str, float], iteration: int) -> None:
        if self.metric not in results:
            raise KeyError(f"train.best_metric={self.metric!r} is not among the evaluation metrics: {', '.join(sorted(results))}")
        value = float(results[self.metric])
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if not better:
            return
        self.best = value
        logger.info("New best %s = %.4f at iteration %d: saving model_best.pth", self.metric, value, iteration)
        self.checkpointer.save("model_best", iteration=iteration, best_metric=self.metric, best_value=value)


class PeriodicWriter(HookBase):
    """Drains the event storage into the writers every ``period`` iterations and at the end.

    Also where a non-finite loss is noticed (here, not on the step, so the step never syncs).
    """

    def __init__(self, writers: list[EventWriter], period: int):
        self.writers = writers
        self.period = max(int(period), 1)

    def _write(self, check: bool = True) -> None:
        if check:
            check_nonfinite(self.trainer)  # its message names the iteration, terms and samples
        storage = self.trainer.storage
        storage.flush()
        hist = storage.histories()
        if check and "total_loss" in hist and hist["total_loss"].values():
            v, it = hist["total_loss"].values()[-1]
            if not math.isfinite(v):
                raise FloatingPointError(f"Loss became infinite or NaN at iteration {it}: {storage.latest()}")
        dropped = hist.get("dropped_itm_negatives")
        if dropped is not None:
            recent = [v for v, it in dropped.values() if it > getattr(self, "_last_dropped_it", -1)]
            if recent and sum(recent) > 0:
                logger.warning(
                    "ITM: %d negative pair(s) dropped in the last %d iteration(s): every other sample of the "
                    "batch showed the same image (no valid negative)", int(sum(recent)), len(recent)
                )
            if dropped.values():
                self._last_dropped_it = dropped.values()[-1][1]
        for w in self.writers:
            w.write()
        self._last_written = self.trainer.iter

    def after_step(self) -> None:
        if (self.trainer.iter + 1) % self.period == 0 or self.trainer.iter == self.trainer.max_iter - 1:
            self._write()

    def after_train(self) -> None:
        try:
            # no loss check here: the last step was checked by after_step, and a run that
            # stopped on an error must report that error, not a second one
            if self.trainer.iter != getattr(self, "_last_written", None):
                self._write(check=False)
        finally:
            for w in self.writers:
                w.close()
