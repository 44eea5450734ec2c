"""A small iteration-based trainer with hooks (detectron2's shape)."""
from __future__ import annotations

import logging
import time
import weakref
from contextlib import nullcontext
from typing import Any, Iterable, Iterator

import torch

from albef.utils import comm
from albef.utils.events import EventStorage

logger = logging.getLogger("albef.train")


class HookBase:
    """Hooks run in registration order: before_train, (before_step, run_step, after_step)*, after_train.
    ``self.trainer`` is a weak reference to the trainer, set on registration."""

    trainer: "TrainerBase"

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}


class TrainerBase:
    def __init__(self) -> None:
        self._hooks: list[HookBase] = []
        self.iter = 0
        self.start_iter = 0
        self.max_iter = 0
        self.storage: EventStorage
        # set by a hook (PeriodicCheckpointer on a preemption signal) to end the run after this step
        self.stop_requested = False

    def register_hooks(self, hooks: Iterable[HookBase | None]) -> None:
        for h in hooks:
            if h is None:
                continue
            h.trainer = weakref.proxy(self)
            self._hooks.append(h)

    def train(self, start_iter: int, max_iter: int) -> None:
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        logger.info("Starting training from iteration %d", start_iter)
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    if self.stop_requested:  # preemption: a hook checkpointed this iteration
                        break
                else:
                    self.iter += 1  # iteration count reached, so after_train hooks see max_iter
            finally:
                self.after_train()

    def before_train(self) -> None:
        for h in self._hooks:
            h.before_train()

    def after_train(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.before_step()

    def after_step(self) -> None:
        for h in self._hooks:
            h.after_step()

    def run_step(self) -> None:
        raise NotImplementedError


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient norm with ``train.nonfinite=stop``; the message names the
    iteration, the loss terms and the samples of the batch."""


class SimpleTrainer(TrainerBase):
    """data -> ``out = model(batch)`` -> sum of ``loss_*`` -> backward -> clip -> step ->
    ``model.after_step(out["state"])``.

    No host synchronisation on the step: losses go to the event storage as tensors.
    Entries of ``out`` not named ``loss_*`` are logged, not optimised, except ``state``,
    which the model's forward hands to its own ``after_step`` (the one place where its
    per-step state changes: teacher EMA, queue, clamps).

    ``grad_accum_steps`` k > 1: an iteration draws k micro-batches; each one's forward and
    backward (of its loss / k, so the gradient is the mean of the micro-batch gradients) runs
    in turn, DDP's all-reduce only on the last (``no_sync``); then one clip, one optimizer step
    and one ``model.after_step([state_1, ..., state_k])`` (one EMA update, every
    micro-batch's momentum features enqueued in order). Logged losses are micro-batch means.

    ``nonfinite``: a non-finite total loss or gradient norm (over the whole iteration) is
    ``stop``: a :class:`NonFiniteError` naming the iteration, the loss terms and the sample
    ids of its batch. Read one step late (after the next backward is queued, or before any
    checkpoint: :meth:`check_nonfinite`), so the check costs no stall on a GPU.
    ``skip``: the flag is read at once (one host sync per step); a bad step gets no optimizer
    step, no ``after_step`` and no logged losses, and is counted (``skipped_steps``).

    ``compile``: ``torch.compile`` keyword arguments (``backend``, ``mode``, ...) to compile
    the whole forward -- model, objectives, teacher, loss sum -- as one region, whose
    backward AOTAutograd compiles too; None runs it eagerly. ``after_step`` and the
    optimizer stay outside, so nothing the compiled region captures changes state. A
    compiled step receives the batch's tensors only (strings and lists would be guarded
    on and recompile every batch).
    """

    def __init__(self, model: torch.nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer, *, device: torch.device, amp: bool = False, clip_grad: float | None = None, global_batch: int = 1,
                 compile: dict[str, Any] | None = None, grad_accum_steps: int = 1, nonfinite: str = "stop"):
        super().__init__()
        if int(grad_accum_steps) < 1:
            raise ValueError(f"train.grad_accum_steps must be >= 1, got {grad_accum_steps!r}")
        if nonfinite not in ("stop", "skip"):
            raise ValueError(f"train.nonfinite must be stop or skip, got {nonfinite!r}")
        self.model = model
        self.data_loader = data_loader
        self._data_iter: Iterator | None = None
        self.optimizer = optimizer
        self.device = device
        self.amp = amp
        self.clip_grad = clip_grad
        self.global_batch = global_batch
        self.grad_accum_steps = int(grad_accum_steps)
        self.nonfinite = nonfinite
        self.num_skipped = 0
        self.num_skipped_steps = 0
        self._pending: tuple | None = None  # (iteration, finite flag, its ready event, loss terms, sample ids)
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self.compiled = compile is not None
        if compile is not None:
            # Masked-only MLM gathers a data-dependent number of positions (nonzero): traced
            # with a symbolic size instead of a graph break (which would drop the model's
            # forward back to eager) and a recompile for every new count.
            torch._dynamo.config.capture_dynamic_output_shape_ops = True
            self._forward = torch.compile(self.forward_losses, **compile)
        else:
            self._forward = self.forward_losses

    @property
    def data_iter(self) -> Iterator:
        if self._data_iter is None:
            self._data_iter = iter(self.data_loader)
        return self._data_iter

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def forward_losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any], Any]:
        """(sum of the ``loss_*`` entries, the other outputs, the model's ``state``): the
        part of the step that ``compile`` compiles."""
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()
        with ctx:
            out = self.model(batch)
        state = out.pop("state", None)
        losses = sum(v for k, v in out.items() if k.startswith("loss_"))
        return losses, out, state

    def _next_batch(self) -> tuple[dict[str, Any], list]:
        """The next batch, its skipped files logged and counted, and its sample ids (popped:
        they are for the non-finite report, not the model)."""
        batch = next(self.data_iter)
        skipped = batch.pop("skipped", [])
        if skipped:
            self.num_skipped += len(skipped)
            for path, reason in skipped:
                logger.warning("Skipped sample %s: %s (iteration %d, %d skipped so far)", path, reason, self.iter, self.num_skipped)
        ids = batch.pop("sample_id", None)
        if ids is None:  # the image ids stand in; made a list only if a report needs it
            ids = batch.get("image_id", [])
        return batch, ids

    def run_step(self) -> None:
        k = self.grad_accum_steps
        start = time.perf_counter()
        batches = [self._next_batch() for _ in range(k)]
        data_time = time.perf_counter() - start
        self.optimizer.zero_grad(set_to_none=True)
        totals, outs, states, sample_ids = [], [], [], []
        for j, (batch, ids) in enumerate(batches):
            batch = self._to_device(batch)
            if self.compiled:
                batch = {key: v for key, v in batch.items() if isinstance(v, torch.Tensor)}
            # gradients are all-reduced once, on the last micro-batch
            sync = nullcontext() if j == k - 1 or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                losses, out, state = self._forward(batch)
                (losses / k if k > 1 else losses).backward()
            totals.append(losses.detach())
            outs.append(out)
            states.append(state)
            sample_ids.append(ids)
        self.check_nonfinite()  # the previous step's flag: its work is done by now
        total = totals[0] if k == 1 else torch.stack(totals).mean()
        out = outs[0] if k == 1 else {key: _mean([o[key] for o in outs]) for key in outs[0]}
        if self.clip_grad:
            grad_norm = torch.nn.utils.clip_grad_norm_(self._params, self.clip_grad, foreach=True)
            self.storage.put_scalar("grad_norm", grad_norm)
        else:
            grads = [p.grad for p in self._params if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else total.new_zeros(())
        finite = torch.isfinite(total) & torch.isfinite(grad_norm)
        if comm.get_world_size() > 1:  # every rank skips or stops together (a rank's own loss can be the bad one)
            flag = finite.to(torch.int32)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            finite = flag.bool()
        terms = {"total_loss": total, "grad_norm": grad_norm.detach(), **{key: v.detach() for key, v in out.items() if key.startswith("loss_")}}
        if self.nonfinite == "skip" and not bool(finite):
            self.num_skipped_steps += 1
            logger.warning("Skipped iteration %d (train.nonfinite=skip; %d skipped so far): %s", self.iter, self.num_skipped_steps,
                           _describe(terms, sample_ids))
            self.optimizer.zero_grad(set_to_none=True)
        else:
            if self.nonfinite == "stop":
                self._pending = (self.iter, *_host_flag(finite), terms, sample_ids)
            self.optimizer.step()
            after_step = getattr(self.model.module if hasattr(self.model, "module") else self.model, "after_step", None)
            if after_step is not None:
                after_step(states[0] if k == 1 else states)
            self.storage.put_scalars(total_loss=total, **out)
        self.storage.put_scalar("data_time", data_time)
        self.storage.put_scalar("skipped_samples", float(self.num_skipped), smoothing_hint=False)
        self.storage.put_scalar("skipped_steps", float(self.num_skipped_steps), smoothing_hint=False)

    def check_nonfinite(self) -> None:
        """Raise :class:`NonFiniteError` if the last unchecked step (``nonfinite=stop``) had a
        non-finite loss or gradient norm. Hooks call it before writing a checkpoint."""
        if self._pending is None:
            return
        it, flag, event, terms, ids = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
        if not bool(flag):
            raise NonFiniteError(
                f"Non-finite loss or gradient at iteration {it}: {_describe(terms, ids)}. "
                "train.nonfinite=skip skips such steps instead."
            )

    def after_train(self) -> None:
        try:
            if self.iter >= self.max_iter or self.stop_requested:
                self.check_nonfinite()
        finally:
            super().after_train()


def _mean(values: list) -> Any:
    if isinstance(values[0], torch.Tensor):
        return torch.stack([v.detach().float() for v in values]).mean()
    if isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
        return sum(values) / len(values)
    return values[-1]


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


def _describe(terms: dict[str, torch.Tensor], per_batch_ids: list, max_ids: int = 64) -> str:
    """The loss terms and the sample ids of an iteration's (micro-)batches, for a report."""
    sample_ids = [i for ids in per_batch_ids for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
    values = ", ".join(f"{k}={float(v):.6g}" for k, v in terms.items())
    shown = ", ".join(map(str, sample_ids[:max_ids])) + (f", ... ({len(sample_ids)} in all)" if len(sample_ids) > max_ids else "")
    return f"{values}; samples of the batch: [{shown}]"
