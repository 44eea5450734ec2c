"""Image-text matching head: a linear classifier on the fused [CLS] token."""
import torch
from torch import nn



class ITMHead(nn.Module):
    """``forward(cls [N, H]) -> logits [N, 2]`` (index 1 = "matched")."""

    def __init__(self, hidden_size: int = 768):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 2)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.linear(cls)
