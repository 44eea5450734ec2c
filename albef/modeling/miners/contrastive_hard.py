import torch

from albef.modeling.miners.base import NegativeMiner, sample_rows
from albef.registry import MINER_REGISTRY


@MINER_REGISTRY.register()
class ContrastiveHardNegativeMiner(NegativeMiner):
    """ALBEF's miner: sample a negative with probability softmax(similarity) over the valid candidates.

    Equivalent to the official softmax-then-zero-the-diagonal (``multinomial``
    renormalises), with same-image pairs excluded too and degenerate rows handled.
    """

    def pick(self, sim: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = sim.masked_fill(~candidates, float("-inf"))
        weights = torch.softmax(logits, dim=1)  # NaN on all -inf rows; sample_rows sanitises
        return sample_rows(weights, candidates)
