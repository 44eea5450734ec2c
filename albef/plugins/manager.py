"""Plugin discovery and registration (pluggy).

:func:`load_plugins` runs once per process (lazily, on the first registry lookup, and
explicitly in every process ``--num-gpus`` spawns). It registers the built-in
components, then every plugin of the ``albef`` entry-point group, each through the
``albef_register_<family>`` hooks (:mod:`albef.plugins.hookspecs`).

A third-party package declares, e.g. in its ``pyproject.toml``::

    [project.entry-points.albef]
    my_lab = "my_lab_albef.plugin"     # a module with @albef.plugins.hookimpl functions

``ALBEF_PLUGINS`` limits discovery: unset or ``all`` loads every installed plugin;
``none`` (or ``0``, ``off``, empty) loads none (built-ins only); ``a,b`` loads only the
named entry points (an unknown name is an error listing the installed ones).

Errors are :class:`PluginError`: a plugin that fails to import names the plugin, its
distribution and the exception; a component name registered twice names both
providers. A failed load registers nothing (the registries are rolled back).
"""
from __future__ import annotations

import importlib.metadata
import os
import threading
from typing import Any, Callable

import pluggy

from albef.plugins import hookspecs
from albef.plugins.hookspecs import FAMILY_HOOKS, PROJECT

ENTRY_POINT_GROUP = "albef"
ENV_VAR = "ALBEF_PLUGINS"
BUILTIN_NAME = "albef"


class PluginError(RuntimeError):
    """A plugin could not be loaded or registered a conflicting component."""


_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
_loaded = False
_loading = False
_origins: dict[str, dict[str, str]] = {}  # family -> component name -> provider description
_dists: dict[str, str] = {}  # plugin (entry point) name -> "dist version"


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
    if plugin_name == BUILTIN_NAME:
        return "albef (built-in)"
    return f"plugin '{plugin_name}' ({_dists.get(plugin_name, 'registered in-process')})"


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins() -> pluggy.PluginManager:
    """Register built-ins and installed plugins once; later calls return the same manager.

    The built-ins are registered first, so a plugin may look them up while it is imported.
    """
    global _pm, _loaded, _loading
    with _lock:
        if _loaded or _loading:  # _loading: a lookup made while plugins register themselves
            return _pm  # type: ignore[return-value]
        _loading = True
        added: list[tuple[str, str]] = []
        try:
            pm = _new_manager()
            from albef.plugins import builtin

            pm.register(builtin, name=BUILTIN_NAME)
            register_from(pm, added, only=BUILTIN_NAME)
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
            loaded = []
            for ep, dist in eps:
                if ep.name == BUILTIN_NAME:
                    raise PluginError(f"{_dist_label(dist)} declares an albef plugin named '{BUILTIN_NAME}', which is reserved for the built-ins")
                _dists[ep.name] = _dist_label(dist)
                try:
                    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name)
                except Exception as e:
                    raise PluginError(
                        f"albef plugin '{ep.name}' (entry point '{ep.value}' of {_dist_label(dist)}) failed to load: "
                        f"{type(e).__name__}: {e}"
                    ) from e
                loaded.append(ep.name)
            try:
                pm.check_pending()  # a hook implementation whose name matches no albef hook (a typo)
            except pluggy.PluginValidationError as e:
                raise PluginError(f"albef plugin '{e.plugin}' implements an unknown hook: {e}") from e
            for name in loaded:
                register_from(pm, added, only=name)
            _loaded = True
            return pm
        except BaseException:
            _rollback(added)
            _pm = None
            raise
        finally:
            _loading = False


def register_plugin(plugin: Any, name: str) -> None:
    """Register an in-process plugin object (a module or an object with hook methods) now.

    For code that is not an installed distribution, e.g. a notebook or a test. Its
    components are added to the registries immediately, with the same clash checks.
    """
    pm = load_plugins()
    with _lock:
        if pm.get_plugin(name) is not None:
            raise PluginError(f"an albef plugin named '{name}' is already registered")
        try:
            pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as e:
            raise PluginError(f"albef plugin '{name}' cannot be registered: {e}") from e
        added: list[tuple[str, str]] = []
        try:
            try:
                pm.check_pending()
            except pluggy.PluginValidationError as e:
                raise PluginError(f"albef plugin '{name}' implements an unknown hook: {e}") from e
            register_from(pm, added, only=name)
        except BaseException:
            _rollback(added)
            pm.unregister(name=name)
            raise


def unregister_plugin(name: str) -> None:
    """Remove an in-process plugin and the components it registered."""
    with _lock:
        if name == BUILTIN_NAME:
            raise PluginError("the built-in components cannot be unregistered (use ALBEF_PLUGINS to leave plugins out)")
        if _pm is None or _pm.get_plugin(name) is None:
            raise PluginError(f"no albef plugin named '{name}' is registered")
        provider = _provider(name)
        _rollback([(fam, comp) for fam, comps in _origins.items() for comp, prov in comps.items() if prov == provider])
        _pm.unregister(name=name)


def register_from(pm: pluggy.PluginManager, added: list[tuple[str, str]], only: str | None = None) -> None:
    """Call every ``albef_register_*`` implementation (built-ins first), one plugin at a time,
    so each registration is attributed to the plugin that made it."""
    from albef.registry import ALL_REGISTRIES

    for family, hook_name in FAMILY_HOOKS.items():
        impls = getattr(pm.hook, hook_name).get_hookimpls()
        impls = sorted(impls, key=lambda i: i.plugin_name != BUILTIN_NAME)  # stable: built-ins first
        for impl in impls:
            if only is not None and impl.plugin_name != only:
                continue
            if impl.hookwrapper or getattr(impl, "wrapper", False):
                # a wrapper would be called here as a plain function and register nothing
                raise PluginError(f"albef plugin '{impl.plugin_name}': {hook_name} must be a plain @hookimpl, not a hook wrapper")
            register = _make_register(family, ALL_REGISTRIES[family], impl.plugin_name, added)
            kwargs = {"register": register} if "register" in impl.argnames else {}
            try:
                impl.function(**kwargs)
            except PluginError:
                raise
            except Exception as e:
                raise PluginError(f"albef plugin '{impl.plugin_name}': hook {hook_name} raised {type(e).__name__}: {e}") from e


def _make_register(family: str, registry: Any, plugin_name: str, added: list[tuple[str, str]]) -> Callable[..., Any]:
    provider = _provider(plugin_name)

    def register(obj: Any, name: str | None = None) -> Any:
        key = name or getattr(obj, "__name__", None)
        if not key:
            raise PluginError(f"{provider}: register() needs a name for {obj!r}")
        fam = _origins.setdefault(family, {})
        if key in registry:
            prev = fam.get(key) or f"module '{registry.get(key).__module__}' (registered directly)"
            raise PluginError(
                f"{family} component '{key}' is registered twice: by {prev} and by {provider}. "
                f"Rename one, or leave a plugin out with {ENV_VAR}=<the plugins to load>."
            )
        registry._do_register(key, obj)
        fam[key] = provider
        added.append((family, key))
        return obj

    return register


def _rollback(added: list[tuple[str, str]]) -> None:
    from albef.registry import ALL_REGISTRIES

    for family, key in added:
        ALL_REGISTRIES[family]._obj_map.pop(key, None)
        _origins.get(family, {}).pop(key, None)


def component_origins() -> dict[str, dict[str, str]]:
    """``{family: {name: provider}}`` for every registered component (after loading plugins)."""
    from albef.registry import ALL_REGISTRIES

    load_plugins()
    out: dict[str, dict[str, str]] = {}
    for family, reg in ALL_REGISTRIES.items():
        fam = _origins.get(family, {})
        out[family] = {
            name: fam.get(name) or f"module '{obj.__module__}' (registered directly)" for name, obj in sorted(reg, key=lambda x: x[0])
        }
    return out


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
    """Forget every plugin registration (built-ins included) so the next lookup loads afresh."""
    global _pm, _loaded
    with _lock:
        _rollback([(fam, comp) for fam, comps in _origins.items() for comp in list(comps)])
        _origins.clear()
        _dists.clear()
        _pm, _loaded = None, False
