"""Image-text matching head: a linear classifier on the fused [CLS] token."""
import torch
from torch import nn

from albef.registry import HEAD_REGISTRY


@HEAD_REGISTRY.register()
class ITMHead(nn.Module):
    """``forward(cls [N, H]) -> logits [N, 2]`` (index 1 = "matched").

    Args:
        momentum: keep an EMA copy in the momentum teacher (official: no ``itm_head_m``).
        hidden_size: supplied by the model builder (fusion width).
    """


    def __init__(self, hidden_size: int = 768, momentum: bool = False):
        super().__init__()
        self.momentum = bool(momentum)
        self.linear = nn.Linear(hidden_size, 2)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.linear(cls)
