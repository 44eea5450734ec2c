"""Plugins: third-party components through the ``albef`` entry-point group.

An entry point names a module; importing it registers its components with the same
decorators albef's own components use (see :mod:`albef.plugins.manager`)::

    from albef.registry import OBJECTIVE_REGISTRY

    @OBJECTIVE_REGISTRY.register()
    class MyLoss(Objective): ...      # usable as model.objectives.<key>={name: MyLoss}
"""
from albef.plugins.manager import (
    ENTRY_POINT_GROUP,
    ENV_VAR,
    PluginError,
    component_origins,
    format_components,
    load_plugins,
    register_plugin,
    unregister_plugin,
)

__all__ = [
    "ENTRY_POINT_GROUP", "ENV_VAR", "PluginError", "component_origins", "format_components", "load_plugins",
    "register_plugin", "unregister_plugin",
]

_REMOVED_HOOK_API = ("hookimpl", "hookspec", "FAMILY_HOOKS")


def __getattr__(name: str):
    # A plugin written for the albef_register_<family> hooks (removed) fails to import with
    # this message, which the plugin loader reports with the plugin's name.
    if name in _REMOVED_HOOK_API:
        raise ImportError(
            f"albef.plugins.{name} was removed with the albef_register_<family> hooks: a plugin module now registers "
            f"its components when imported, with the family registry's decorator, e.g. "
            f"`from albef.registry import OBJECTIVE_REGISTRY` and `@OBJECTIVE_REGISTRY.register()` on the class"
        )
    raise AttributeError(f"module 'albef.plugins' has no attribute '{name}'")
