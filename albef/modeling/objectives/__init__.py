"""Training objectives; importing the package registers the built-ins (OBJECTIVE_REGISTRY)."""
from albef.modeling.objectives.base import Objective
from albef.modeling.objectives import answer_generation, classification, edited_caption, itc, itm, mlm, text_assignment  # noqa: F401  (register)

__all__ = ["Objective"]
