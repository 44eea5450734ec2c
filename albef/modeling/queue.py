"""Feature queues as a ring buffer (MoCo-style memory of past momentum features)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from albef.utils import comm


class FeatureQueue(nn.Module):
    """Ring buffers of the last ``size`` momentum features and their image ids.

    Buffers (saved in checkpoints): ``image_queue`` [Q, E], ``text_queue`` [Q, E],
    ``idx_queue`` [Q] (int64, -100 = no id), ``ptr`` [1] (int64, next slot).

    Unlike the official ``_dequeue_and_enqueue`` there is no ``Q % batch == 0``
    requirement: a batch of any size wraps around the end, and a batch larger than
    ``Q`` keeps its last ``Q`` rows. The pointer stays on the device (no host sync).
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.size = int(size)
        self.dim = int(dim)
        # Official initialisation: random unit vectors, so the first Q/batch steps
        # contrast against noise until real features fill the queue.
        self.register_buffer("image_queue", F.normalize(torch.randn(self.size, dim), dim=1))
        self.register_buffer("text_queue", F.normalize(torch.randn(self.size, dim), dim=1))
        self.register_buffer("idx_queue", torch.full((self.size,), -100, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, image_feat: torch.Tensor, text_feat: torch.Tensor, idx: torch.Tensor | None, gather: bool = True) -> None:
        """Write ``image_feat``/``text_feat`` [B, E] (and ``idx`` [B]) gathered from every rank."""
        if self.size == 0:
            return
        if idx is None:
            idx = torch.full((image_feat.shape[0],), -100, dtype=torch.long, device=image_feat.device)
        if gather:
            image_feat, text_feat, idx = (comm.all_gather_tensor(t) for t in (image_feat, text_feat, idx))
        n = image_feat.shape[0]
        keep = min(n, self.size)
        offset = n - keep
        pos = (self.ptr + offset + torch.arange(keep, device=self.ptr.device)) % self.size
        self.image_queue.index_copy_(0, pos, image_feat[offset:].to(self.image_queue.dtype))
        self.text_queue.index_copy_(0, pos, text_feat[offset:].to(self.text_queue.dtype))
        self.idx_queue.index_copy_(0, pos, idx[offset:].to(torch.long))
        self.ptr.copy_((self.ptr + n) % self.size)
