"""One fvcore ``Registry`` per component family, and the builder that turns a
config node ``{name: X, **kwargs}`` into an instance of component X.

Families (the YAML key that selects a member is always ``name``):

====================  ===========================  ==============================
registry              config node                   example members
====================  ===========================  ==============================
META_ARCH_REGISTRY    ``model``                     ALBEF
VISION_ENCODER_...    ``model.vision_encoder``      TimmViT
TEXT_ENCODER_...      ``model.text_encoder``        BertTextEncoder
FUSION_REGISTRY       ``model.fusion``              CrossAttentionFusion
OBJECTIVE_REGISTRY    ``model.objectives.<key>``    ITCLoss, ITMLoss, MLMLoss
MINER_REGISTRY        ``model.objectives.itm.miner`` ContrastiveHardNegativeMiner
TEACHER_REGISTRY      ``model.teacher``             MomentumTeacher, NoTeacher
DATASET_REGISTRY      ``data.train/val/test``       PretrainJSON, RetrievalEvalJSON, ...
HEAD_REGISTRY         ``model.heads.<key>``         ITMHead, MLMHead, MLPClassifierHead
COLLATOR_REGISTRY     ``data.collator``             ImageTextCollator
LOADER_REGISTRY       ``data.loader``               MapStyleLoader, StreamingLoader
TEXT_NEGATIVES_...    ``data.text_negatives``       CompositionalNegatives
EVALUATOR_REGISTRY    ``eval.<key>``                RetrievalEvaluator, ClassificationEvaluator
TRAINER_REGISTRY      ``train.trainer``             DefaultTrainer
====================  ===========================  ==============================

Components enter the registries through plugin hooks (:mod:`albef.plugins`): the
built-ins through ``albef.plugins.builtin``, third-party packages through the ``albef``
entry-point group, both on the first lookup. Registering directly with
``@OBJECTIVE_REGISTRY.register()`` (fvcore style) also works for code imported before use.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Mapping

from fvcore.common.registry import Registry

META_ARCH_REGISTRY = Registry("META_ARCH")
VISION_ENCODER_REGISTRY = Registry("VISION_ENCODER")
TEXT_ENCODER_REGISTRY = Registry("TEXT_ENCODER")
FUSION_REGISTRY = Registry("FUSION")
OBJECTIVE_REGISTRY = Registry("OBJECTIVE")
MINER_REGISTRY = Registry("MINER")
TEACHER_REGISTRY = Registry("TEACHER")
DATASET_REGISTRY = Registry("DATASET")
HEAD_REGISTRY = Registry("HEAD")
COLLATOR_REGISTRY = Registry("COLLATOR")
LOADER_REGISTRY = Registry("LOADER")
TEXT_NEGATIVES_REGISTRY = Registry("TEXT_NEGATIVES")
EVALUATOR_REGISTRY = Registry("EVALUATOR")
TRAINER_REGISTRY = Registry("TRAINER")

ALL_REGISTRIES: dict[str, Registry] = {
    "meta_arch": META_ARCH_REGISTRY,
    "vision_encoder": VISION_ENCODER_REGISTRY,
    "text_encoder": TEXT_ENCODER_REGISTRY,
    "fusion": FUSION_REGISTRY,
    "objective": OBJECTIVE_REGISTRY,
    "miner": MINER_REGISTRY,
    "teacher": TEACHER_REGISTRY,
    "dataset": DATASET_REGISTRY,
    "head": HEAD_REGISTRY,
    "collator": COLLATOR_REGISTRY,
    "loader": LOADER_REGISTRY,
    "text_negatives": TEXT_NEGATIVES_REGISTRY,
    "evaluator": EVALUATOR_REGISTRY,
    "trainer": TRAINER_REGISTRY,
}


class ComponentError(ValueError):
    """A config node names an unknown component or passes it an unknown argument."""


def registered_names(registry: Registry) -> list[str]:
    _ensure_builtins_registered()
    return sorted(name for name, _ in registry)


def get_component(registry: Registry, name: str, where: str = "") -> Any:
    """Look ``name`` up in ``registry``; an unknown name lists every registered one."""
    _ensure_builtins_registered()
    if name in registry:
        return registry.get(name)
    known = registered_names(registry)
    close = difflib.get_close_matches(str(name), known, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    loc = f" (at config key '{where}')" if where else ""
    raise ComponentError(
        f"Unknown {registry._name} component '{name}'{loc}.{hint} "
        f"Registered {registry._name} components: {', '.join(known) or '(none)'}."
    )


def _accepted_kwargs(cls: Any) -> tuple[set[str], bool]:
    """(keyword names the factory accepts, whether it takes ``**kwargs``)."""
    if inspect.isclass(cls):
        owner = next((k for k in cls.__mro__ if "__init__" in vars(k)), object)
        if owner is object or owner.__module__.startswith("torch."):
            return set(), False  # nn.Module.__init__(*args, **kwargs) takes no configuration
        target = cls.__init__
    else:
        target = cls
    sig = inspect.signature(target)
    names, var_kw = set(), False
    for p in sig.parameters.values():
        if p.kind == p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
            names.add(p.name)
    return names, var_kw


def build_component(registry: Registry, node: Mapping[str, Any] | None, where: str = "", **extra: Any) -> Any:
    """Build the component described by ``node`` = ``{name: X, **kwargs}``.

    ``extra`` are keyword arguments the caller supplies from context (dimensions of
    other components, tokenizer ids, ...). A component receives only the ``extra``
    arguments its constructor accepts, so a simple plugin need not declare them all;
    a key written in the config that the constructor does not accept is an error
    naming the key and the closest valid ones.
    """
    if node is None:
        return None
    if hasattr(node, "items") and not isinstance(node, dict):  # DictConfig
        from omegaconf import OmegaConf

        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, Mapping) or "name" not in node:
        raise ComponentError(
            f"Config node '{where}' must be a mapping with a 'name' key choosing a "
            f"{registry._name} component, got {node!r}."
        )
    kwargs = dict(node)
    name = kwargs.pop("name")
    cls = get_component(registry, name, where)
    factory = getattr(cls, "from_config", cls)  # detectron2-style: build children from config nodes
    accepted, var_kw = _accepted_kwargs(factory)
    if not var_kw:
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            msgs = []
            for k in unknown:
                close = difflib.get_close_matches(k, sorted(accepted), n=3)
                msgs.append(f"'{where}.{k}'" + (f" (did you mean: {', '.join(close)}?)" if close else ""))
            raise ComponentError(
                f"{registry._name} component '{name}' does not accept config key(s) "
                f"{', '.join(msgs)}. Valid keys: {', '.join(sorted(accepted)) or '(none)'}."
            )
        extra = {k: v for k, v in extra.items() if k in accepted and k not in kwargs}
    else:
        extra = {k: v for k, v in extra.items() if k not in kwargs}
    try:
        return factory(**kwargs, **extra)
    except TypeError as e:  # a missing required argument, most likely
        raise ComponentError(f"Could not build {registry._name} component '{name}' from '{where}': {e}") from e


def _ensure_builtins_registered() -> None:
    """Register the built-in components and installed plugins (once per process).

    Lazy, so ``albef.registry`` stays importable by the modules that register into it;
    the built-ins register through the same plugin hooks as third-party packages.
    """
    from albef.plugins.manager import load_plugins

    load_plugins()
