"""Vision and text encoders; importing the package registers the built-ins
(VISION_ENCODER_REGISTRY, TEXT_ENCODER_REGISTRY)."""
from albef.modeling.encoders import bert_text, timm_vit  # noqa: F401  (register)
