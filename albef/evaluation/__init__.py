"""Evaluators; importing the package registers the built-ins (EVALUATOR_REGISTRY)."""
from albef.evaluation import classification, composition, grounding, retrieval, vqa  # noqa: F401  (register)
