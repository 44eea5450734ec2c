"""Classification heads on the fused [CLS] token (SNLI-VE, NLVR2, NLVR2 text assignment)."""
from __future__ import annotations

from torch import nn

from albef.registry import HEAD_REGISTRY


def _bert_init(m: nn.Module, std: float) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=std)
        nn.init.zeros_(m.bias)


@HEAD_REGISTRY.register()
class MLPClassifierHead(nn.Sequential):
    """``forward(cls [N, H]) -> logits [N, num_classes]``: Linear(H, H) -> ReLU -> Linear(H, C).

    The official ``cls_head`` of SNLI-VE (3 classes) and NLVR2 (2 classes); its keys
    (``0.weight``, ``2.weight``, ...) are the official ones.

    Args:
        num_classes: C.
        momentum: keep an EMA copy in the momentum teacher (official ``cls_head_m``),
            whose soft predictions are the distillation targets.
        hidden_size: supplied by the model builder.
    """


    def __init__(self, num_classes: int = 2, hidden_size: int = 768, momentum: bool = True, initializer_range: float = 0.02):
        if num_classes < 2:
            raise ValueError(f"MLPClassifierHead.num_classes must be >= 2, got {num_classes}")
        super().__init__(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, num_classes))
        self.momentum = bool(momentum)
        self.num_classes = int(num_classes)
        self.apply(lambda m: _bert_init(m, initializer_range))


@HEAD_REGISTRY.register()
class LinearClassifierHead(nn.Linear):
    """``forward(cls [N, H]) -> logits [N, num_classes]``: one linear layer.

    The official text-assignment head ``ta_head`` (3 classes: the text describes image 0,
    image 1, or neither) of NLVR2's pretraining step.
    """


    def __init__(self, num_classes: int = 3, hidden_size: int = 768, momentum: bool = False, initializer_range: float = 0.02):
        if num_classes < 2:
            raise ValueError(f"LinearClassifierHead.num_classes must be >= 2, got {num_classes}")
        super().__init__(hidden_size, num_classes)
        self.momentum = bool(momentum)
        self.num_classes = int(num_classes)
        _bert_init(self, initializer_range)

