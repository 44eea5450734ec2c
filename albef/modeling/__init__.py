"""Model components (registered through albef.plugins.builtin on the first registry lookup)."""
from albef.modeling.encoders import bert_text, timm_vit  # noqa: F401
from albef.modeling.fusion import cross_attention  # noqa: F401
from albef.modeling.heads import classifier, itm_head, mlm_head  # noqa: F401
from albef.modeling import miners, objectives  # noqa: F401
from albef.modeling.teachers import base, momentum, none  # noqa: F401
from albef.modeling.meta_arch import albef  # noqa: F401
from albef.modeling.meta_arch import base as _base  # noqa: F401
from albef.modeling.build import build_model

__all__ = ["build_model"]
