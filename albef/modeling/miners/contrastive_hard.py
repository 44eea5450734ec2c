import torch

from albef.modeling.miners.base import NegativeMiner, sample_rows
from albef.registry import MINER_REGISTRY


@MINER_REGISTRY.register()
class ContrastiveHardNegativeMiner(NegativeMiner):
    """ALBEF's miner: sample a negative with probability softmax(similarity) over the valid candidates.

    Equivalent to the official softmax-then-zero-the-diagonal (``multinomial``
    renormalises), with same-image pairs excluded too and degenerate rows handled.

    Args:
        temperature: ``null`` (official) samples from softmax(cosine / ITC temperature),
            whatever the learnable temperature has become; a number samples from
            softmax(cosine / temperature) instead. When the ITC temperature falls low,
            sampling is nearly arg-max and every negative is the hardest one; a fixed,
            higher sampling temperature keeps easier negatives in the mix.
    """

    def __init__(self, temperature: float | None = None):
        super().__init__()
        if temperature is not None and temperature <= 0:
            raise ValueError(f"miner temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def rescale(self, sim: torch.Tensor, temp: torch.Tensor | None) -> torch.Tensor:
        if self.temperature is None or temp is None:
            return sim
        return sim * (temp.detach().float() / self.temperature)

    def pick(self, sim: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = sim.masked_fill(~candidates, float("-inf"))
        weights = torch.softmax(logits, dim=1)  # NaN on all -inf rows; sample_rows sanitises
        return sample_rows(weights, candidates)
