"""A small iteration-based trainer with hooks (detectron2's shape)."""
from __future__ import annotations

import logging
import time
import weakref
from contextlib import nullcontext
from typing import Any, Iterable, Iterator

import torch

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


class SimpleTrainer(TrainerBase):
    """data -> ``out = model(batch)`` -> sum of ``loss_*`` -> backward -> clip -> step ->
    ``model.after_step(out["state"])``.

    No host synchronisation on the step: losses go to the event storage as tensors.
    Entries of ``out`` not named ``loss_*`` are logged, not optimised, except ``state``,
    which the model's forward hands to its own ``after_step`` (the one place where its
    per-step state changes: teacher EMA, queue, clamps).

    ``compile``: ``torch.compile`` keyword arguments (``backend``, ``mode``, ...) to compile
    the whole forward -- model, objectives, teacher, loss sum -- as one region, whose
    backward AOTAutograd compiles too; None runs it eagerly. ``after_step`` and the
    optimizer stay outside, so nothing the compiled region captures changes state. A
    compiled step receives the batch's tensors only (strings and lists would be guarded
    on and recompile every batch).
    """

    def __init__(self, model: torch.nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer, *, device: torch.device, amp: bool = False, clip_grad: float | None = None, global_batch: int = 1,
                 compile: dict[str, Any] | None = None):
        super().__init__()
        self.model = model
        self.data_loader = data_loader
        self._data_iter: Iterator | None = None
        self.optimizer = optimizer
        self.device = device
        self.amp = amp
        self.clip_grad = clip_grad
        self.global_batch = global_batch
        self.num_skipped = 0
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

    def run_step(self) -> None:
        start = time.perf_counter()
        batch = next(self.data_iter)
        data_time = time.perf_counter() - start
        skipped = batch.pop("skipped", [])
        if skipped:
            self.num_skipped += len(skipped)
            for path, reason in skipped:
                logger.warning("Skipped sample %s: %s (iteration %d, %d skipped so far)", path, reason, self.iter, self.num_skipped)
        batch = self._to_device(batch)
        if self.compiled:
            batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        losses, out, state = self._forward(batch)
        self.optimizer.zero_grad(set_to_none=True)
        losses.backward()
        if self.clip_grad:
            grad_norm = torch.nn.utils.clip_grad_norm_(self._params, self.clip_grad, foreach=True)
            self.storage.put_scalar("grad_norm", grad_norm)
        self.optimizer.step()
        after_step = getattr(self.model.module if hasattr(self.model, "module") else self.model, "after_step", None)
        if after_step is not None:
            after_step(state)
        self.storage.put_scalars(total_loss=losses, **out)
        self.storage.put_scalar("data_time", data_time)
        self.storage.put_scalar("skipped_samples", float(self.num_skipped), smoothing_hint=False)
