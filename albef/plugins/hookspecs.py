"""Hook specifications: one ``albef_register_<family>`` hook per registry family.

A plugin implements any of them with :data:`albef.plugins.hookimpl`; each receives a
``register`` callback::

    register(obj, name=None)   # name defaults to obj.__name__

that adds ``obj`` to that family's registry, recording which plugin provided it. The
built-in components register through these same hooks (``albef.plugins.builtin``), first,
so a plugin may look built-ins up while it is imported. Each implementation is called
once, one plugin at a time (so every registration is attributed): plain ``@hookimpl``
functions only, no hook wrappers.
"""
from __future__ import annotations

import pluggy

PROJECT = "albef"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# registry family (albef.registry.ALL_REGISTRIES key) -> hook name
FAMILY_HOOKS: dict[str, str] = {
    "meta_arch": "albef_register_meta_archs",
    "vision_encoder": "albef_register_vision_encoders",
    "text_encoder": "albef_register_text_encoders",
    "fusion": "albef_register_fusion_blocks",
    "objective": "albef_register_objectives",
    "miner": "albef_register_miners",
    "teacher": "albef_register_teachers",
    "dataset": "albef_register_datasets",
    "head": "albef_register_heads",
    "collator": "albef_register_collators",
    "loader": "albef_register_loaders",
    "text_negatives": "albef_register_text_negatives",
    "evaluator": "albef_register_evaluators",
    "trainer": "albef_register_trainers",
}


@hookspec
def albef_register_objectives(register):
    """Register training objectives (losses): ``forward(ctx: StepContext) -> Tensor | dict``."""


@hookspec
def albef_register_vision_encoders(register):
    """Register image encoders: ``forward(image [B,3,H,W]) -> tokens [B,1+N,D]``, attribute ``embed_dim``."""


@hookspec
def albef_register_text_encoders(register):
    """Register text encoders: ``forward(ids, mask [B,L]) -> hidden [B,L,H]``, attribute ``hidden_size``."""


@hookspec
def albef_register_fusion_blocks(register):
    """Register fusion encoders: ``forward(text [B,L,H], mask [B,L], visual: VisualInput) -> [B,L,H]``
    (``albef.modeling.fusion.visual.VisualInput``: one or more visual token sets with masks)."""


@hookspec
def albef_register_miners(register):
    """Register ITM negative miners (see ``albef.modeling.miners.base.NegativeMiner``)."""


@hookspec
def albef_register_teachers(register):
    """Register teachers (see ``albef.modeling.teachers``)."""


@hookspec
def albef_register_datasets(register):
    """Register datasets (``data.train`` / ``data.test`` nodes)."""


@hookspec
def albef_register_heads(register):
    """Register task heads (``model.heads.<key>``): modules on fused states; attribute
    ``momentum`` says whether the momentum teacher keeps an EMA copy."""


@hookspec
def albef_register_collators(register):
    """Register collators (``data.collator``): list of samples -> batch dict, tokenising in workers."""


@hookspec
def albef_register_text_negatives(register):
    """Register text-negative generators (``data.text_negatives``): called in the collator as
    ``gen(captions [B] str, image_ids [B] | None) -> (negative texts [B] str, kind [B] int)``,
    kind < 0 where a caption has no negative (see ``albef.data.compositional_negatives``)."""


@hookspec
def albef_register_evaluators(register):
    """Register evaluators (``eval.<key>``): ``evaluate(model) -> {metric: value}`` on a split
    (see ``albef.evaluation.base.Evaluator``)."""


@hookspec
def albef_register_loaders(register):
    """Register training-loader builders (``data.loader``): ``cls(cfg, dataset, tokenizer,
    start_iter, **settings)`` -> an iterable of batches with ``epoch_size`` and optionally
    ``state_dict()`` / ``load_state_dict(state, start_iter)`` (see :mod:`albef.data.loaders`)."""


@hookspec
def albef_register_trainers(register):
    """Register trainers (``train.trainer``): subclasses of ``albef.engine.DefaultTrainer``
    overriding its ``build_*`` class methods."""


@hookspec
def albef_register_meta_archs(register):
    """Register meta-architectures (the ``model`` node)."""
