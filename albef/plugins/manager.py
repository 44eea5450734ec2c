"""Plugin discovery: third-party packages through the ``albef`` entry-point group.

A third-party package declares, e.g. in its ``pyproject.toml``::

    [project.entry-points.albef]
    my_lab = "my_lab_albef.plugin"     # a module whose import registers components

and the module registers its components with the family registries' decorators, as
albef's own components do::

    from albef.registry import OBJECTIVE_REGISTRY

    @OBJECTIVE_REGISTRY.register()
    class MyLoss(Objective): ...

pluggy loads the entry points and keeps the loaded plugins by name; each is imported inside
:func:`albef.registry.registering_as`, which attributes its registrations to it.

``ALBEF_PLUGINS`` limits discovery: unset or ``all`` loads every installed plugin;
``none`` (or ``0``, ``off``, empty) loads none (built-ins only); ``a,b`` loads only the
named entry points (an unknown name is an error listing the installed ones).

Errors are :class:`PluginError`: a plugin that fails to import names the plugin, its
distribution and the exception; a component name registered twice names both
providers. A failed load registers nothing: its registrations are removed again and the
modules it imported forgotten, so the next lookup tries (and fails) the same way.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import threading
from typing import Any, Callable

import pluggy

from albef.registry import ALL_REGISTRIES, RegistrationError, before_lookup, registering_as

PROJECT = "albef"
ENTRY_POINT_GROUP = "albef"
ENV_VAR = "ALBEF_PLUGINS"
BUILTIN_NAME = "albef"  # reserved: the built-ins, which no plugin may be named as


class PluginError(RuntimeError):
    """A plugin could not be loaded or registered a conflicting component."""


_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
_loaded = False
_loading = False
_dists: dict[str, str] = {}  # plugin (entry point) name -> "dist version"
_plugin_state: dict[str, tuple[Any, list[str]]] = {}  # plugin name -> (its registrations, modules its load imported)


def plugin_selection() -> set[str] | None:
    """Entry-point names allowed by ``ALBEF_PLUGINS``; None means all."""
    raw = os.environ.get(ENV_VAR)
    if raw is None or raw.strip().lower() == "all":
        return None
    if raw.strip().lower() in ("", "none", "0", "off", "false"):
        return set()
    return {s.strip() for s in raw.split(",") if s.strip()}


def discover_entry_points(selected: set[str] | None = None) -> list[tuple[importlib.metadata.EntryPoint, Any]]:
    """The ``albef`` entry points of the installed distributions, as (entry point, distribution);
    only the ``selected`` names when given (None: all).

    Two distributions declaring the same selected plugin name is an error (pluggy would
    silently keep only the first one found on ``sys.path``).
    """
    seen: dict[str, tuple[importlib.metadata.EntryPoint, Any]] = {}
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or (selected is not None and ep.name not in selected):
                continue
            prev = seen.get(ep.name)
            if prev is not None:
                if (prev[0].value, _dist_label(prev[1])) == (ep.value, _dist_label(dist)):
                    continue  # the same distribution found twice on sys.path
                raise PluginError(
                    f"albef plugin name clash: '{ep.name}' is declared by {_dist_label(prev[1])} ({prev[0].value}) "
                    f"and by {_dist_label(dist)} ({ep.value}); uninstall one of them, or leave it out with {ENV_VAR}"
                )
            seen[ep.name] = (ep, dist)
    return sorted(seen.values(), key=lambda x: x[0].name)


def _dist_label(dist: Any) -> str:
    md = dist.metadata
    return f"{md['Name']} {md['Version']}"


def _provider(plugin_name: str) -> str:
    return f"plugin '{plugin_name}' ({_dists.get(plugin_name, 'registered in-process')})"


def _load_one(name: str, load: Callable[[], Any], describe: str, entry_module: str | None) -> Any:
    """Run ``load()`` (an import, or an in-process plugin's function) with its registrations
    attributed to plugin ``name``; on failure nothing it registered stays behind.

    ``entry_module``: the module ``load`` imports (None for a function): the plugin's own
    modules that the load imported are forgotten when it fails or is unloaded."""
    before = set(sys.modules)
    rec = None
    try:
        with registering_as(_provider(name)) as rec:
            result = load()
    except Exception as e:
        if rec is not None and entry_module is not None:
            _forget(_own_new_modules(before, rec.modules | {entry_module}))
        if isinstance(e, RegistrationError):  # a clash: the message names both providers
            raise PluginError(f"{e} Rename one, or leave a plugin out with {ENV_VAR}=<the plugins to load>.") from e
        raise PluginError(f"albef plugin '{name}' ({describe}) failed to load: {type(e).__name__}: {e}") from e
    own = _own_new_modules(before, rec.modules | {entry_module}) if entry_module is not None else []
    _plugin_state[name] = (rec, own)
    return result


def _own_new_modules(before: set[str], owners: set[str]) -> list[str]:
    """The modules imported since ``before`` that are the plugin's own: in the top-level
    package of its entry point or of a module that registered a component (not albef's,
    nor a library the plugin happened to import first)."""
    tops = {m.split(".")[0] for m in owners if m} - {"albef"}
    return sorted(m for m in set(sys.modules) - before if m.split(".")[0] in tops)


def _forget(modules: list[str]) -> None:
    # So a later load imports them afresh and registers again (an import of a module
    # still in sys.modules would run nothing).
    for m in modules:
        sys.modules.pop(m, None)


def _unload(name: str) -> None:
    """Remove plugin ``name``'s components and forget its modules."""
    rec, modules = _plugin_state.pop(name, (None, []))
    if rec is not None:
        rec.rollback()
    _forget(modules)


def load_plugins() -> pluggy.PluginManager:
    """Load the installed plugins once; later calls return the same manager.

    The built-ins are not loaded here: they are registered by importing albef's family
    packages (a plugin that looks one up imports its package first).
    """
    global _pm, _loaded, _loading
    with _lock:
        if _loaded or _loading:  # _loading: a lookup made while a plugin is being imported
            return _pm  # type: ignore[return-value]
        _loading = True
        pm = pluggy.PluginManager(PROJECT)
        loaded: list[str] = []
        try:
            _pm = pm
            selected = plugin_selection()
            eps = [] if selected == set() else discover_entry_points(selected)  # none: not even discovered
            names = {ep.name for ep, _ in eps}
            if selected:
                unknown = selected - names
                if unknown:
                    installed = sorted(ep.name for ep, _ in discover_entry_points())
                    raise PluginError(
                        f"{ENV_VAR}={os.environ.get(ENV_VAR)!r} names plugin(s) {sorted(unknown)} that are not installed; "
                        f"installed albef plugins: {', '.join(installed) or '(none)'}"
                    )
            for ep, dist in eps:
                if ep.name == BUILTIN_NAME:
                    raise PluginError(f"{_dist_label(dist)} declares an albef plugin named '{BUILTIN_NAME}', which is reserved for the built-ins")
                _dists[ep.name] = _dist_label(dist)
                loaded.append(ep.name)
                _load_one(
                    ep.name,
                    lambda ep=ep: pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name),
                    f"entry point '{ep.value}' of {_dist_label(dist)}",
                    entry_module=ep.module,
                )
            _loaded = True
            return pm
        except BaseException:
            for name in reversed(loaded):  # all or nothing: the next lookup starts afresh
                _unload(name)
                _dists.pop(name, None)
            _pm = None
            raise
        finally:
            _loading = False


def register_plugin(plugin: Callable[[], Any] | str, name: str) -> None:
    """Register an in-process plugin now, for code that is not an installed distribution
    (a notebook, a test).

    ``plugin`` is a function that registers components when called (with the registries'
    ``register``), or the dotted name of a module whose import does. Its components are
    attributed to ``plugin 'name'`` with the same clash checks; if it fails, it registers
    nothing.
    """
    pm = load_plugins()
    with _lock:
        if name == BUILTIN_NAME or pm.get_plugin(name) is not None:
            raise PluginError(f"an albef plugin named '{name}' is already registered")
        if isinstance(plugin, str):
            obj = _load_one(name, lambda: importlib.import_module(plugin), f"module '{plugin}'", entry_module=plugin)
        elif callable(plugin):
            _load_one(name, plugin, f"in-process {plugin!r}", entry_module=None)
            obj = plugin
        else:
            raise PluginError(f"albef plugin '{name}': register_plugin() takes a function or a module name, got {plugin!r}")
        try:
            pm.register(obj, name=name)
        except ValueError as e:  # pluggy: the same object registered under another name
            _unload(name)
            raise PluginError(f"albef plugin '{name}' cannot be registered: {e}") from e


def unregister_plugin(name: str) -> None:
    """Remove a plugin and the components it registered."""
    with _lock:
        if name == BUILTIN_NAME:
            raise PluginError("the built-in components cannot be unregistered (use ALBEF_PLUGINS to leave plugins out)")
        if _pm is None or _pm.get_plugin(name) is None:
            raise PluginError(f"no albef plugin named '{name}' is registered")
        _unload(name)
        _pm.unregister(name=name)


def component_origins() -> dict[str, dict[str, str]]:
    """``{family: {name: provider}}`` for every registered component (after loading plugins)."""
    load_plugins()
    return {family: {name: reg.provider(name) for name, _ in sorted(reg, key=lambda x: x[0])} for family, reg in ALL_REGISTRIES.items()}


def format_components() -> str:
    """Human-readable listing: every family, its components and who provided each."""
    lines = []
    for family, comps in component_origins().items():
        lines.append(f"{family} ({len(comps)}):")
        width = max((len(n) for n in comps), default=0)
        for name, provider in comps.items():
            lines.append(f"  {name:<{width}}  {provider}")
    sel = plugin_selection()
    lines.append("")
    lines.append(f"plugins: {ENV_VAR}=" + ("<unset> (all installed plugins)" if sel is None else (",".join(sorted(sel)) or "none")))
    return "\n".join(lines)


def _reset_for_tests() -> None:
    """Forget every plugin (their components and modules) so the next lookup loads afresh.
    The built-ins stay: they belong to albef's imported modules."""
    global _pm, _loaded
    with _lock:
        for name in reversed(list(_plugin_state)):
            _unload(name)
        _dists.clear()
        _pm, _loaded = None, False


before_lookup(load_plugins)  # discover the installed plugins on the first registry lookup
