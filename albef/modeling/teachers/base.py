"""The teacher base class: an EMA copy of the student's modules, and what it computes for a step.

A task model names the modules its teacher mirrors (``paths`` such as ``vision_encoder``,
``fusion``, ``heads.mlm``); :meth:`Teacher.attach` deep-copies them in one go (so weights
tied across modules, like the MLM decoder and the word embeddings, stay tied in the
copy). The copies are kept under the student's names (``teacher.model.<path>``), so the
student's encode functions (:mod:`albef.modeling.encoding`) run on them unchanged:
:meth:`Teacher.encode` gives a step's :class:`TeacherOutput` in one call.
:meth:`Teacher.run` calls any other function of the student with the EMA modules swapped
in (for analysis tools), under ``no_grad``.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from albef.modeling.fusion.visual import VisualInput


@dataclass
class TeacherOutput:
    """What the teacher computed for one batch (all without gradient).

    image_feat_m, text_feat_m: [B, E] momentum (or detached online) features, or None when
        no objective contrasts (or the model has no projections).
    image_feat_all, text_feat_all: [B + Q, E] = batch features then the queue.
    idx_all: [B + Q] image ids (-100 = unknown) or None when the batch has no ids.
    visual: the teacher's fusion input of the batch's images (its own cross-attention
        keys/values attached), when an objective distils through the fusion; else None.
    fused: [B, L, H] the batch's texts fused with their images on the teacher's weights,
        when an objective distils from the fused states (classifiers, the answer decoder).
    modules: the EMA modules (``text_encoder``, ``fusion``, ``heads`` ...), for an
        objective that runs them on inputs of its own (MLM's masked text); None without.
    """

    image_feat_m: torch.Tensor | None = None
    text_feat_m: torch.Tensor | None = None
    image_feat_all: torch.Tensor | None = None
    text_feat_all: torch.Tensor | None = None
    idx_all: torch.Tensor | None = None
    visual: VisualInput | None = None
    fused: torch.Tensor | None = None
    modules: nn.ModuleDict | None = None

    def head(self, key: str) -> nn.Module | None:
        """The EMA copy of ``model.heads.<key>``, or None when the teacher keeps none."""
        heads = getattr(self.modules, "heads", None)
        return heads[key] if heads is not None and key in heads else None


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
        alpha: distillation weight after the ramp.

    The distillation weight: :attr:`alpha` is the configured one; the trainer's ramp hook
    calls :meth:`set_alpha_scale` with ramp(iteration), which fills two 0-d buffers in
    place, :attr:`ramp_now` (the ramp) and :attr:`alpha_now` (alpha * ramp), so a compiled
    or graph-captured step sees every new value without recompiling. The model hands each
    objective its alpha for the step (:meth:`objective_alpha`).
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
        # the ramp factor itself, for objectives with an alpha of their own (model.objectives.<k>.alpha)
        self.register_buffer("ramp_now", torch.tensor(1.0), persistent=False)
        self._alpha_value = float(alpha)  # alpha_now as a Python float: logged without a device read
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

    def set_alpha_scale(self, scale: float) -> None:
        self.ramp_now.fill_(float(scale))  # in place, as alpha_now
        self.current_alpha = self.alpha * float(scale)

    def objective_alpha(self, own: float | None, heads: Sequence[str] = ()) -> torch.Tensor | None:
        """This step's distillation weight for an objective: None = do not distil.

        ``own`` is the objective's own configured alpha: None -> the teacher's (this step's
        :attr:`alpha_now`), a number -> ``own * ramp``, the same warm-up ramp. Whether to
        distil at all is static for a run (the configured value > 0, or a current alpha set
        above 0 by hand, as the parity tests do), so a compiled step does not recompile; an
        objective that distils through heads needs the teacher's EMA copy of each.
        """
        if own is None:
            alpha, on = self.alpha_now, self.alpha > 0 or self._alpha_value > 0
        else:
            alpha, on = own * self.ramp_now, own > 0
        if not on or self.model is None or not all(self.has(f"heads.{h}") for h in heads):
            return None
        return alpha

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

    # ------------------------------------------------------------------ one step's encodings
    def encode(self, batch: dict[str, Any], *, contrastive: bool = True, visual: bool = False, fused: bool = False,
               image_feat: torch.Tensor | None = None, text_feat: torch.Tensor | None = None) -> TeacherOutput:
        """The teacher's part of a step, computed once for every objective (no gradient).

        ``contrastive``: momentum features and queue (ITC, ITM mining); ``visual``: the
        teacher's fusion input of the batch's images; ``fused``: its fused states of the
        batch's pairs. ``image_feat`` / ``text_feat``: the student's features [B, E] (a
        teacher without an EMA model contrasts against them).
        """
        raise NotImplementedError(
            f"{type(self).__name__} computes nothing for a step: a teacher implements encode(batch, ...) -> TeacherOutput "
            "(this replaces the former contrastive(ctx))"
        )

    def enqueue(self, state: dict[str, torch.Tensor]) -> None:
        """Store the momentum features of the last step (called after the optimizer step)."""
