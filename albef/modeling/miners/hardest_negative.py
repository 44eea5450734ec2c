import torch

from albef.modeling.miners.base import NegativeMiner
from albef.registry import MINER_REGISTRY


@MINER_REGISTRY.register()
class HardestNegativeMiner(NegativeMiner):
    """Deterministically the most similar valid candidate (arg-max instead of sampling)."""

    def pick(self, sim: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        valid = candidates.any(dim=1)
        finite = torch.nan_to_num(sim, nan=float("-inf"), posinf=torch.finfo(sim.dtype).max)
        masked = finite.masked_fill(~candidates, float("-inf"))
        # Among candidates, a row of all -inf similarities still picks a candidate (argmax of the mask).
        best = torch.where(torch.isfinite(masked).any(dim=1), masked.argmax(dim=1), candidates.to(torch.uint8).argmax(dim=1))
        return best, valid
