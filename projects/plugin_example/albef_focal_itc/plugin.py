"""The entry point named in pyproject.toml (group ``albef``): importing it registers the
objective (``@OBJECTIVE_REGISTRY.register()`` on ``FocalITCLoss``, in its own module)."""
from albef_focal_itc import focal_itc  # noqa: F401  (register)
