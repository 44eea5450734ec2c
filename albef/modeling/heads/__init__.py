"""Task heads; importing the package registers the built-ins (HEAD_REGISTRY)."""
from albef.modeling.heads import answer_decoder, classifier, itm_head, mlm_head  # noqa: F401  (register)
