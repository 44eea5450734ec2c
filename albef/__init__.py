"""albef: ALBEF (Align before Fuse) as a modular, config-driven vision-language framework.

``model, preprocess = albef.load(NAME)`` loads a trained model (see :mod:`albef.model_zoo.load`).
"""
__version__ = "0.1.0"

__all__ = ["load", "export_hub_folder", "__version__"]


def __getattr__(name: str):
    # lazy: `import albef` stays light (no torch import) for tools that only read configs
    if name == "load":
        from albef.model_zoo.load import load

        return load
    if name == "export_hub_folder":
        from albef.model_zoo.hub import export_hub_folder

        return export_hub_folder
    raise AttributeError(f"module 'albef' has no attribute {name!r}")
