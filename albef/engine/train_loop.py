"""A small iteration-based trainer with hooks (detectron2's shape).

* :class:`TrainerBase` -- the loop: ``before_train``, (``before_step``, ``run_step``,
  ``after_step``)*, ``after_train``, each forwarded to the registered hooks (``hooks``).
* :class:`SimpleTrainer` -- one batch per iteration: forward, backward, clip, the non-finite
  policy (:mod:`albef.engine.nonfinite`), optimizer step, ``model.after_step``.
* :class:`AccumulatingTrainer` -- ``train.grad_accum_steps`` micro-batches per iteration.
* :class:`CompiledForward` -- ``train.compile``: the step's forward under ``torch.compile``.

**The training forward's outputs.** ``model(batch)`` returns a dict whose entries the trainer
treats by name (this is the one place that says how):

* ``loss_*`` -- [] weighted scalar losses; their sum is optimised and each one is logged. An
  accumulated iteration logs their mean over its micro-batches (the loss of the whole step).
* ``state`` -- what ``model.after_step`` takes (e.g. the momentum features to enqueue); not
  logged.
* any other name -- [] a count over the batch's samples (``dropped_itm_negatives``,
  ``dropped_ta_rows``, ``itm_text_negatives``, ``text_negatives_<kind>``): logged, not
  optimised. An accumulated iteration logs the sum over its micro-batches (the count of the
  whole step, as one large batch would give). A statistic that is not a count does not
  belong in the training outputs.
"""
from __future__ import annotations

import logging
import time
import weakref
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch

from albef.engine.nonfinite import NonFiniteError, build_nonfinite_policy, finite_on_every_rank
from albef.utils.events import EventStorage

__all__ = ["AccumulatingTrainer", "CompiledForward", "HookBase", "NonFiniteError", "SimpleTrainer", "StepOutput", "TrainerBase",
           "is_loss", "reduce_micro_batches"]

logger = logging.getLogger("albef.train")

LOSS_PREFIX = "loss_"


def is_loss(name: str) -> bool:
    """Whether a training output is a loss (optimised, averaged over micro-batches) rather
    than a count (summed): see the module docstring."""
    return name.startswith(LOSS_PREFIX)


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
    """The loop over iterations ``[start_iter, max_iter)`` and its hooks (``hooks``, in
    registration order). ``stop_requested``, set by a hook (PeriodicCheckpointer on a
    preemption signal), ends the run after the current iteration."""

    def __init__(self) -> None:
        self.hooks: list[HookBase] = []
        self.iter = 0
        self.start_iter = 0
        self.max_iter = 0
        self.storage: EventStorage
        self.stop_requested = False

    def register_hooks(self, hooks: Iterable[HookBase | None]) -> None:
        for h in hooks:
            if h is None:
                continue
            h.trainer = weakref.proxy(self)
            self.hooks.append(h)

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
        for h in self.hooks:
            h.before_train()

    def after_train(self) -> None:
        self.storage.iter = self.iter
        for h in self.hooks:
            h.after_train()

    def before_step(self) -> None:
        self.storage.iter = self.iter
        for h in self.hooks:
            h.before_step()

    def after_step(self) -> None:
        for h in self.hooks:
            h.after_step()

    def run_step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the trainer itself, for a resumed run (nothing here)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class StepOutput:
    """One iteration's forward and backward.

    Attributes:
        total: [] the sum of the ``loss_*`` outputs (over micro-batches: their mean), detached.
        outputs: name -> [] the forward's ``loss_*`` and count outputs (over micro-batches:
            reduced by :func:`reduce_micro_batches`); the losses may still hold their graph.
        state: what ``model.after_step`` takes: the forward's ``state``, or the list of the
            micro-batches' states.
        sample_ids: per (micro-)batch, its sample ids ([B] tensor or list), for a report.
    """

    total: torch.Tensor
    outputs: dict[str, Any]
    state: Any
    sample_ids: list


class SimpleTrainer(TrainerBase):
    """data -> ``out = model(batch)`` -> sum of ``loss_*`` -> backward -> clip -> step ->
    ``model.after_step(out["state"])``.

    No host synchronisation on the step: losses go to the event storage as tensors. The
    model's forward stays pure; ``model.after_step`` (once per optimizer step) is the one
    place where its per-step state changes (teacher EMA, queue, clamps).

    ``nonfinite``: ``stop`` or ``skip`` (:func:`~albef.engine.nonfinite.build_nonfinite_policy`):
    whether a step with a non-finite total loss or gradient norm raises (read one step late,
    :meth:`check_nonfinite`) or is skipped and counted (``skipped_steps``).

    ``compile``: ``torch.compile`` keyword arguments (``backend``, ``mode``, ...) for
    :class:`CompiledForward`; None runs the forward eagerly. ``after_step`` and the
    optimizer stay outside the compiled region, so nothing it captures changes state.

    ``state_dict()``: the skipped-sample and skipped-step counts, saved in checkpoints so
    that a resumed run continues them.
    """

    grad_accum_steps = 1  # micro-batches per iteration (AccumulatingTrainer: more)

    def __init__(self, model: torch.nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer, *, device: torch.device, amp: bool = False,
                 clip_grad: float | None = None, global_batch: int = 1, compile: dict[str, Any] | None = None, nonfinite: str = "stop"):
        super().__init__()
        self.model = model
        self.data_loader = data_loader
        self._data_iter: Iterator | None = None
        self.optimizer = optimizer
        self.device = device
        self.amp = amp
        self.clip_grad = clip_grad
        self.global_batch = global_batch
        self.nonfinite = build_nonfinite_policy(nonfinite)
        self.num_skipped = 0  # samples the data set stepped over (unreadable files)
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        # the step's forward: forward_losses, or its compiled wrapper
        self.forward = CompiledForward(self.forward_losses, **compile) if compile is not None else self.forward_losses

    def run_step(self) -> None:
        start = time.perf_counter()
        batches = [self.next_batch() for _ in range(self.grad_accum_steps)]
        data_time = time.perf_counter() - start
        self.optimizer.zero_grad(set_to_none=True)
        step = self.forward_backward(batches)
        grad_norm = self.clip_gradients()
        terms = {"total_loss": step.total, "grad_norm": grad_norm.detach(), **{k: v.detach() for k, v in step.outputs.items() if is_loss(k)}}
        if self.nonfinite.admit(self.iter, finite_on_every_rank(step.total, grad_norm), terms, step.sample_ids):
            self.optimizer.step()
            self.model_after_step(step.state)
            self.storage.put_scalars(total_loss=step.total, **step.outputs)
        else:
            self.optimizer.zero_grad(set_to_none=True)
        self.storage.put_scalar("data_time", data_time)
        self.storage.put_scalar("skipped_samples", float(self.num_skipped), smoothing_hint=False)
        self.storage.put_scalar("skipped_steps", float(self.nonfinite.skipped_steps), smoothing_hint=False)

    # ------------------------------------------------------------------ parts of the step
    @property
    def data_iter(self) -> Iterator:
        if self._data_iter is None:
            self._data_iter = iter(self.data_loader)
        return self._data_iter

    def next_batch(self) -> tuple[dict[str, Any], Any]:
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

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def forward_losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any], Any]:
        """(the sum of the ``loss_*`` entries [], the other outputs, the model's ``state``): the
        part of the step that ``compile`` compiles."""
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()
        with ctx:
            out = self.model(batch)
        state = out.pop("state", None)
        losses = sum(v for k, v in out.items() if is_loss(k))
        return losses, out, state

    def forward_backward(self, batches: list[tuple[dict[str, Any], Any]]) -> StepOutput:
        """Forward and backward of the iteration's one batch (``(batch, sample ids)``)."""
        (batch, ids), = batches
        losses, out, state = self.forward(self._to_device(batch))
        losses.backward()
        return StepOutput(losses.detach(), out, state, [ids])

    def clip_gradients(self) -> torch.Tensor:
        """[] the gradients' total norm, after clipping them to ``clip_grad`` (then logged as
        ``grad_norm``) when it is set."""
        if self.clip_grad:
            norm = torch.nn.utils.clip_grad_norm_(self._params, self.clip_grad, foreach=True)
            self.storage.put_scalar("grad_norm", norm)
            return norm
        grads = [p.grad for p in self._params if p.grad is not None]
        return torch.nn.utils.get_total_norm(grads, foreach=True) if grads else torch.zeros((), device=self.device)

    def model_after_step(self, state: Any) -> None:
        """``model.after_step(state)`` (teacher EMA, queue, clamps), if the model has one."""
        model = self.model.module if hasattr(self.model, "module") else self.model  # DDP
        after_step = getattr(model, "after_step", None)
        if after_step is not None:
            after_step(state)

    # ------------------------------------------------------------------ non-finite check, state
    def check_nonfinite(self) -> None:
        """Raise :class:`NonFiniteError` if the last unchecked step (``nonfinite=stop``) had a
        non-finite loss or gradient norm. Hooks call it before writing a checkpoint."""
        self.nonfinite.check()

    def after_train(self) -> None:
        try:
            if self.iter >= self.max_iter or self.stop_requested:
                self.check_nonfinite()
        finally:
            super().after_train()

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_samples": self.num_skipped, "skipped_steps": self.nonfinite.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_skipped = int(state.get("skipped_samples", 0))
        self.nonfinite.skipped_steps = int(state.get("skipped_steps", 0))


class AccumulatingTrainer(SimpleTrainer):
    """``grad_accum_steps`` k micro-batches per iteration: each one's forward and backward (of
    its loss / k, so the gradient is the mean of the micro-batch gradients) in turn, DDP's
    all-reduce only on the last (``no_sync``); then :class:`SimpleTrainer`'s one clip, one
    optimizer step and one ``model.after_step([state_1, ..., state_k])`` (one EMA update,
    every micro-batch's momentum features enqueued in order). Logged losses are micro-batch
    means, logged counts micro-batch sums (:func:`reduce_micro_batches`)."""

    def __init__(self, *args: Any, grad_accum_steps: int, **kwargs: Any):
        if int(grad_accum_steps) < 1:
            raise ValueError(f"train.grad_accum_steps must be >= 1, got {grad_accum_steps!r}")
        super().__init__(*args, **kwargs)
        self.grad_accum_steps = int(grad_accum_steps)

    def forward_backward(self, batches: list[tuple[dict[str, Any], Any]]) -> StepOutput:
        k = len(batches)
        totals, outs, states, sample_ids = [], [], [], []
        for j, (batch, ids) in enumerate(batches):
            batch = self._to_device(batch)
            # gradients are all-reduced once, on the last micro-batch
            sync = nullcontext() if j == k - 1 or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                losses, out, state = self.forward(batch)
                (losses / k).backward()
            totals.append(losses.detach())
            outs.append(out)
            states.append(state)
            sample_ids.append(ids)
        return StepOutput(torch.stack(totals).mean(), reduce_micro_batches(outs), states, sample_ids)


def reduce_micro_batches(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """The outputs of an iteration from those of its micro-batches (the same names): each
    ``loss_*`` [] averaged, each count [] summed (see the module docstring); a value that is
    neither a tensor nor a number is the last micro-batch's."""
    return {key: _reduce(key, [o[key] for o in outputs]) for key in outputs[0]}


def _reduce(key: str, values: list) -> Any:
    if isinstance(values[0], torch.Tensor):
        if is_loss(key):
            return torch.stack([v.detach().float() for v in values]).mean()
        return torch.stack([v.detach() for v in values]).sum()
    if isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
        return sum(values) / len(values) if is_loss(key) else sum(values)
    return values[-1]


class CompiledForward:
    """``torch.compile`` of a step's forward (:meth:`SimpleTrainer.forward_losses`: model,
    objectives, teacher and loss sum as one region, whose backward AOTAutograd compiles too).
    Called with a batch, it passes on the batch's tensors (and dicts of tensors) only: strings
    and lists would be guarded on and recompile every batch. ``eager`` is the uncompiled forward."""

    def __init__(self, forward: Any, **compile_kwargs: Any):
        # Masked-only MLM gathers a data-dependent number of positions (nonzero): traced
        # with a symbolic size instead of a graph break (which would drop the model's
        # forward back to eager) and a recompile for every new count.
        torch._dynamo.config.capture_dynamic_output_shape_ops = True
        self.eager = forward
        self.compiled = torch.compile(forward, **compile_kwargs)

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any], Any]:
        return self.compiled({k: v for k, v in batch.items() if _tensors_only(v)})


def _tensors_only(value: Any) -> bool:
    """A tensor, or a dict of tensors (the collator's per-batch counts, ``batch["stats"]``)."""
    if isinstance(value, dict):
        return all(isinstance(v, torch.Tensor) for v in value.values())
    return isinstance(value, torch.Tensor)
