"""The teacher base class: an EMA copy of the student's modules that runs the student's own code.

A task model names the modules its teacher mirrors (``paths`` such as ``vision_encoder``,
``fusion``, ``heads.mlm``); :meth:`Teacher.attach` deep-copies them in one go (so weights
tied across modules, like the MLM decoder and the word embeddings, stay tied in the
copy). :meth:`Teacher.run` calls any function of the student -- its ``encode_image``,
``fuse``, a head -- with the EMA modules swapped in for the duration of the call, under
``no_grad``. So a new task model (two images, a decoder) gets a teacher without teacher
code of its own: whatever the student computes, the teacher can compute on its weights.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn


def _resolve(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the submodule at dotted ``path``."""
    *parents, name = path.split(".")
    mod = root
    for p in parents:
        mod = mod._modules[p]
    if name not in mod._modules:
        raise KeyError(f"{type(root).__name__} has no submodule '{path}'")
    return mod, name


class Teacher(nn.Module):
    """EMA copies of the student's modules at ``paths``, kept in :attr:`model` (a nested
    ``ModuleDict`` mirroring the paths: ``teacher.model.<path>.*`` is the EMA of ``<path>.*``).

    ``update(student)``: ``p_m = m * p_m + (1 - m) * p`` (foreach kernels, tied weights
    moved once); ``reset(student)``: copy the student (after its weights were loaded);
    ``run(student, fn, *args)``: ``fn(*args)`` with the EMA modules in place of the
    student's, without gradient.

    Args:
        momentum: EMA coefficient m.
        alpha: distillation weight after the ramp; the trainer's alpha hook sets
            :attr:`current_alpha` = alpha * ramp(iteration).

    This step's alpha lives in a 0-d buffer (:attr:`alpha_now`, on the model's device)
    that the ramp fills in place: objectives compute with the tensor, so a compiled or
    graph-captured step sees every new value without recompiling, and whether to distil
    at all is the static :attr:`distills` (the configured alpha > 0).
    """

    def __init__(self, momentum: float = 0.995, alpha: float = 0.4):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"model.teacher.momentum must be in [0, 1], got {momentum}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"model.teacher.alpha must be in [0, 1], got {alpha}")
        self.momentum = float(momentum)
        self.alpha = float(alpha)
        self.register_buffer("alpha_now", torch.tensor(float(alpha)), persistent=False)
        self._alpha_value = float(alpha)
        # the ramp factor itself, for objectives with an alpha of their own (model.objectives.<k>.alpha)
        self.register_buffer("ramp_now", torch.tensor(1.0), persistent=False)
        self.model: nn.ModuleDict | None = None
        self.paths: list[str] = []
        self._pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    # ------------------------------------------------------------------ structure
    def attach(self, student: nn.Module, paths: Sequence[str] | None = None) -> None:
        """Make the EMA copy of ``student``'s modules at ``paths`` (default: every child)."""
        paths = list(paths) if paths is not None else list(student._modules)
        tree: dict[str, Any] = {}
        for path in paths:
            parent, name = _resolve(student, path)
            node = tree
            for p in path.split(".")[:-1]:
                node = node.setdefault(p, {})
            node[path.split(".")[-1]] = parent._modules[name]

        def as_module(node: dict[str, Any]) -> nn.ModuleDict:
            return nn.ModuleDict({k: as_module(v) if isinstance(v, dict) else v for k, v in node.items()})

        self.model = copy.deepcopy(as_module(tree))  # one deepcopy: ties across modules survive
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.paths = paths
        self._pairs = None

    def has(self, path: str) -> bool:
        """Whether the teacher keeps an EMA copy of the student's module at ``path``."""
        return self.model is not None and path in self.paths

    def module(self, path: str) -> nn.Module:
        mod: nn.Module = self.model
        for p in path.split("."):
            mod = mod._modules[p]
        return mod

    @property
    def current_alpha(self) -> float:
        """This step's alpha as a Python float (for logging; no device read)."""
        return self._alpha_value

    @current_alpha.setter
    def current_alpha(self, value: float) -> None:
        self._alpha_value = float(value)
        self.alpha_now.fill_(float(value))  # in place: a captured graph reads the new value

    @property
    def distills(self) -> bool:
        """Whether objectives compute distillation targets at all: the configured alpha > 0
        (or a current alpha set above 0 by hand, as the parity tests do); static for a run."""
        return self.alpha > 0 or self._alpha_value > 0

    def set_alpha_scale(self, scale: float) -> None:
        self.ramp_now.fill_(float(scale))  # in place, as alpha_now
        self.current_alpha = self.alpha * float(scale)

    # ------------------------------------------------------------------ weights
    def _param_pairs(self, student: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self._pairs is None:
            teacher_params, student_params, seen = [], [], set()
            for path in self.paths:
                parent, name = _resolve(student, path)
                for p_m, p in zip(self.module(path).parameters(), parent._modules[name].parameters()):
                    if id(p_m) in seen:  # tied weights (MLM decoder = word embeddings) move once
                        continue
                    seen.add(id(p_m))
                    teacher_params.append(p_m.data)
                    student_params.append(p.data)
            self._pairs = (teacher_params, student_params)
        return self._pairs

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        if self.model is None:
            return
        teacher_params, student_params = self._param_pairs(student)
        torch._foreach_mul_(teacher_params, self.momentum)
        torch._foreach_add_(teacher_params, student_params, alpha=1.0 - self.momentum)

    @torch.no_grad()
    def reset(self, student: nn.Module) -> None:
        """Copy the student's current weights (official ``copy_params``), e.g. after loading them."""
        if self.model is None:
            return
        teacher_params, student_params = self._param_pairs(student)
        torch._foreach_copy_(teacher_params, student_params)

    # ------------------------------------------------------------------ running the student's code
    @contextmanager
    def swapped(self, student: nn.Module) -> Iterator[None]:
        """Within the block, the student's modules at :attr:`paths` are the EMA copies."""
        saved = []
        try:
            for path in self.paths:
                parent, name = _resolve(student, path)
                saved.append((parent, name, parent._modules[name]))
                parent._modules[name] = self.module(path)
            yield
        finally:
            for parent, name, mod in reversed(saved):
                parent._modules[name] = mod

    def run(self, student: nn.Module, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` (a function of ``student``) on the EMA weights, without gradient."""
        with torch.no_grad(), self.swapped(student):
            return fn(*args, **kwargs)

    # ------------------------------------------------------------------ contrastive targets
    def contrastive(self, ctx) -> "Any":
        """Momentum features (and queue) of a batch for ITC / ITM mining: a
        :class:`~albef.modeling.context.TeacherOutput`. Teachers without one raise."""
        raise NotImplementedError(f"{type(self).__name__} gives no contrastive features")

    def enqueue(self, state: dict[str, torch.Tensor]) -> None:
        """Store the momentum features of the last step (called after the optimizer step)."""
