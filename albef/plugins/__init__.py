"""Plugins: third-party components through the ``albef`` entry-point group (pluggy).

See :mod:`albef.plugins.manager` for discovery and :mod:`albef.plugins.hookspecs` for
the hooks. A plugin module::

    from albef.plugins import hookimpl

    @hookimpl
    def albef_register_objectives(register):
        register(MyLoss)            # usable as model.objectives.<key>={name: MyLoss}
"""
from albef.plugins.hookspecs import FAMILY_HOOKS, hookimpl, hookspec
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
    "ENTRY_POINT_GROUP", "ENV_VAR", "FAMILY_HOOKS", "PluginError", "component_origins", "format_components",
    "hookimpl", "hookspec", "load_plugins", "register_plugin", "unregister_plugin",
]
