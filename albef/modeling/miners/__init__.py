"""ITM negative miners; importing the package registers the built-ins (MINER_REGISTRY)."""
from albef.modeling.miners.base import MinedNegatives, NegativeMiner, candidate_mask, sample_rows
from albef.modeling.miners import contrastive_hard, hardest_negative, random_negative  # noqa: F401  (register)

__all__ = ["MinedNegatives", "NegativeMiner", "candidate_mask", "sample_rows"]
