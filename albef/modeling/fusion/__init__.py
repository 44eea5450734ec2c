"""Fusion encoders; importing the package registers the built-ins (FUSION_REGISTRY)."""
from albef.modeling.fusion import cross_attention  # noqa: F401  (register)
