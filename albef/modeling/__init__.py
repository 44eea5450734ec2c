"""Model components. Importing a family's package (``albef.modeling.objectives``, ...)
registers its built-ins; :func:`build_model` builds the model of ``cfg.model``."""
from albef.modeling.build import build_model

__all__ = ["build_model"]
