"""Teachers; importing the package registers the built-ins (TEACHER_REGISTRY)."""
from albef.modeling.teachers import momentum, none  # noqa: F401  (register)
