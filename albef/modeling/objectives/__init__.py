from albef.modeling.objectives.base import Objective
from albef.modeling.objectives import itc, itm, mlm  # noqa: F401  (register)

__all__ = ["Objective"]
