import torch

from albef.modeling.miners.base import NegativeMiner, sample_rows
from albef.registry import MINER_REGISTRY


@MINER_REGISTRY.register()
class RandomNegativeMiner(NegativeMiner):
    """Uniformly random negatives among the valid candidates (the paper's "w/o hard negatives" ablation)."""

    def pick(self, sim: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_rows(candidates.to(sim.dtype), candidates)
