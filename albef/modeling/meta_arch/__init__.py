"""Meta-architectures; importing the package registers the built-ins (META_ARCH_REGISTRY)."""
from albef.modeling.meta_arch import albef  # noqa: F401  (register)
