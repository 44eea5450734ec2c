"""One registry per component family, and the builder that turns a config node
``{name: X, **kwargs}`` into an instance of component X.

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

A component registers where it is defined (detectron2's way)::

    @OBJECTIVE_REGISTRY.register()
    class ITCLoss(Objective): ...

so importing a family's package (``albef.modeling.objectives``) registers its built-ins,
and the modules that build components import the packages they build from. This module
imports nothing of albef: any module may import it. A plugin (:mod:`albef.plugins`)
registers its components with the same decorators when its module is imported; the
registry records who provided each one (:func:`registering_as`). Installed plugins are
discovered on the first lookup (:func:`get_component`, :func:`registered_names`) of a
process that imported :mod:`albef.plugins` (every builder does), through
:func:`before_lookup`.
"""
from __future__ import annotations

import contextlib
import difflib
import inspect
from typing import Any, Callable, Iterator, Mapping

from fvcore.common.registry import Registry as _FvcoreRegistry

BUILTIN_PROVIDER = "albef (built-in)"

ALL_REGISTRIES: dict[str, "Registry"] = {}  # family key ("objective") -> registry, filled by Registry()


class ComponentError(ValueError):
    """A config node names an unknown component or passes it an unknown argument."""


class RegistrationError(ValueError):
    """A component name registered twice in one family, or a bad registration."""


class _Recording:
    """The registrations made while one provider (a plugin) is being loaded."""

    def __init__(self, provider: str):
        self.provider = provider
        self.added: list[tuple[Registry, str]] = []
        self.modules: set[str] = set()  # the modules that made them (kept after a rollback)

    def rollback(self) -> None:
        for registry, name in reversed(self.added):
            registry.unregister(name)
        self.added.clear()


_recordings: list[_Recording] = []  # innermost last: nested provider scopes


def _is_albef_object(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module == "albef" or module.startswith("albef.")


@contextlib.contextmanager
def registering_as(provider: str) -> Iterator[_Recording]:
    """Attribute the registrations made inside the block to ``provider`` (e.g. ``"plugin 'x'
    (x-dist 1.0)"``); if the block raises, remove them again, so a provider that fails to
    load registers nothing.

    albef's own components (defined in ``albef.*`` modules) stay built-ins even when a
    plugin's import is what first imports them, and are never rolled back: their modules
    stay imported, and would not register them again.
    """
    rec = _Recording(provider)
    _recordings.append(rec)
    try:
        yield rec
    except BaseException:
        rec.rollback()
        raise
    finally:
        _recordings.remove(rec)


class Registry(_FvcoreRegistry):
    """fvcore's ``Registry`` (``@REG.register()``, ``REG.register(obj)``, ``REG.get(name)``,
    ``name in REG``, iteration over ``(name, obj)``) that also

    * lists itself in :data:`ALL_REGISTRIES` under its family key (``"OBJECTIVE"`` ->
      ``"objective"``), so a new family is this one line;
    * records who provided each member (:meth:`provider`): ``albef (built-in)``, the plugin
      being loaded, or the module that registered it directly;
    * refuses a name registered twice with a :class:`RegistrationError` naming both providers;
    * can remove a member (:meth:`unregister`), for a plugin's rollback and for tests.

    fvcore's member table cannot remove, so the members live in this class's own table.
    """

    def __init__(self, name: str, doc: str = "") -> None:
        super().__init__(name)
        self.name = name
        self.family = name.lower()
        self.doc = doc  # what a member of the family is: its interface, for plugin authors
        if self.family in ALL_REGISTRIES:
            raise RegistrationError(f"a registry for the family '{self.family}' already exists")
        self._members: dict[str, tuple[Any, str]] = {}  # name -> (object, provider)
        ALL_REGISTRIES[self.family] = self

    def register(self, obj: Any = None, *, name: str | None = None) -> Any:
        """``@REG.register()`` / ``@REG.register(name="X")`` on a class or function, or
        ``REG.register(obj)``; the name defaults to ``obj.__name__``. Returns ``obj``."""
        if obj is None:

            def deco(func_or_class: Any) -> Any:
                self._add(name, func_or_class)
                return func_or_class

            return deco
        self._add(name, obj)
        return obj

    def _add(self, name: str | None, obj: Any) -> None:
        key = name or getattr(obj, "__name__", None)
        if not key or not isinstance(key, str):
            raise RegistrationError(f"{self.name} registry: register() needs a name for {obj!r}")
        rec = None if _is_albef_object(obj) or not _recordings else _recordings[-1]
        if _is_albef_object(obj):
            provider = BUILTIN_PROVIDER
        elif rec is not None:
            provider = rec.provider
        else:
            provider = f"module '{getattr(obj, '__module__', '?')}' (registered directly)"
        prev = self._members.get(key)
        if prev is not None:
            if prev[0] is obj:
                return  # the same object again (a module imported twice under one name): nothing changes
            raise RegistrationError(f"{self.family} component '{key}' is registered twice: by {prev[1]} and by {provider}.")
        self._members[key] = (obj, provider)
        if rec is not None:
            rec.added.append((self, key))
            rec.modules.add(getattr(obj, "__module__", None) or "")

    def unregister(self, name: str) -> Any:
        """Remove ``name`` and return its object."""
        if name not in self._members:
            raise KeyError(f"No object named '{name}' found in '{self.name}' registry!")
        return self._members.pop(name)[0]

    def provider(self, name: str) -> str:
        """Who registered ``name``: ``albef (built-in)``, ``plugin 'x' (dist 1.0)``, ``module 'm' (registered directly)``."""
        self.get(name)
        return self._members[name][1]

    def get(self, name: str) -> Any:
        if name not in self._members:
            raise KeyError(f"No object named '{name}' found in '{self.name}' registry!")
        return self._members[name][0]

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter([(k, v[0]) for k, v in self._members.items()])  # a copy: registering while iterating is fine

    def __len__(self) -> int:
        return len(self._members)

    def __repr__(self) -> str:
        rows = "".join(f"\n  {k}: {v[0]!r} ({v[1]})" for k, v in sorted(self._members.items()))
        return f"Registry of {self.name}:{rows or ' (empty)'}"

    __str__ = __repr__


META_ARCH_REGISTRY = Registry("META_ARCH", "meta-architectures (the ``model`` node)")
VISION_ENCODER_REGISTRY = Registry(
    "VISION_ENCODER", "image encoders: ``forward(image [B,3,H,W]) -> tokens [B,1+N,D]``, attribute ``embed_dim``"
)
TEXT_ENCODER_REGISTRY = Registry(
    "TEXT_ENCODER", "text encoders: ``forward(ids, mask [B,L]) -> hidden [B,L,H]``, attribute ``hidden_size``"
)
FUSION_REGISTRY = Registry(
    "FUSION",
    "fusion encoders: ``forward(text [B,L,H], mask [B,L], visual: VisualInput) -> [B,L,H]`` "
    "(``albef.modeling.fusion.visual.VisualInput``: one or more visual token sets with masks)",
)
OBJECTIVE_REGISTRY = Registry("OBJECTIVE", "training objectives (losses): ``forward(ctx: StepContext, alpha) -> Tensor | dict``, ``needs(distill)``")
MINER_REGISTRY = Registry("MINER", "ITM negative miners (see ``albef.modeling.miners.base.NegativeMiner``)")
TEACHER_REGISTRY = Registry("TEACHER", "teachers (see ``albef.modeling.teachers``)")
DATASET_REGISTRY = Registry("DATASET", "datasets (``data.train`` / ``data.val`` / ``data.test`` nodes)")
HEAD_REGISTRY = Registry(
    "HEAD", "task heads (``model.heads.<key>``): modules on fused states; attribute ``momentum`` says whether "
    "the momentum teacher keeps an EMA copy"
)
COLLATOR_REGISTRY = Registry("COLLATOR", "collators (``data.collator``): list of samples -> batch dict, tokenising in workers")
LOADER_REGISTRY = Registry(
    "LOADER", "training loaders (``data.loader``): an iterable of batches with ``epoch_size``, optionally "
    "``state_dict()`` / ``load_state_dict(state, start_iter)`` (see :mod:`albef.data.loaders`)"
)
TEXT_NEGATIVES_REGISTRY = Registry(
    "TEXT_NEGATIVES",
    "text-negative generators (``data.text_negatives``): called in the collator as ``gen(captions [B] str, "
    "image_ids [B] | None) -> (negative texts [B] str, kind [B] int)``, kind < 0 where a caption has no negative",
)
EVALUATOR_REGISTRY = Registry(
    "EVALUATOR", "evaluators (``eval.<key>``): ``evaluate(model) -> {metric: value}`` on a split "
    "(see ``albef.evaluation.base.Evaluator``)"
)
TRAINER_REGISTRY = Registry(
    "TRAINER", "trainers (``train.trainer``): subclasses of ``albef.engine.DefaultTrainer`` overriding its ``build_*`` class methods"
)


# ---------------------------------------------------------------------- lookups
_before_lookup: list[Callable[[], Any]] = []


def before_lookup(fn: Callable[[], Any]) -> None:
    """Call ``fn()`` before every lookup through :func:`get_component` / :func:`registered_names`.

    ``fn`` must be cheap once done and idempotent: :mod:`albef.plugins` installs its
    ``load_plugins`` here, so the installed plugins are discovered on the first lookup
    without this module importing the plugin machinery.
    """
    if fn not in _before_lookup:
        _before_lookup.append(fn)


def _prepare_lookup() -> None:
    for fn in list(_before_lookup):
        fn()


def registered_names(registry: Registry) -> list[str]:
    _prepare_lookup()
    return sorted(name for name, _ in registry)


def get_component(registry: Registry, name: str, where: str = "") -> Any:
    """Look ``name`` up in ``registry``; an unknown name lists every registered one."""
    _prepare_lookup()
    if name in registry:
        return registry.get(name)
    known = registered_names(registry)
    close = difflib.get_close_matches(str(name), known, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    loc = f" (at config key '{where}')" if where else ""
    raise ComponentError(
        f"Unknown {registry.name} component '{name}'{loc}.{hint} "
        f"Registered {registry.name} components: {', '.join(known) or '(none)'}."
    )


# ---------------------------------------------------------------------- building from a config node
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
            f"{registry.name} component, got {node!r}."
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
                f"{registry.name} component '{name}' does not accept config key(s) "
                f"{', '.join(msgs)}. Valid keys: {', '.join(sorted(accepted)) or '(none)'}."
            )
        extra = {k: v for k, v in extra.items() if k in accepted and k not in kwargs}
    else:
        extra = {k: v for k, v in extra.items() if k not in kwargs}
    try:
        return factory(**kwargs, **extra)
    except TypeError as e:  # a missing required argument, most likely
        raise ComponentError(f"Could not build {registry.name} component '{name}' from '{where}': {e}") from e
