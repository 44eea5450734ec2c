"""Negative miners for image-text matching: which image is the negative for each text, and vice versa."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class MinedNegatives:
    """neg_image_for_text [B]: index of the negative image paired with text b.
    neg_text_for_image [B]: index of the negative text paired with image b.
    valid_text, valid_image [B] bool: False where no valid candidate exists (the pair is dropped).
    """

    neg_image_for_text: torch.Tensor
    neg_text_for_image: torch.Tensor
    valid_text: torch.Tensor
    valid_image: torch.Tensor


def candidate_mask(batch_size: int, image_ids: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """[B, B] bool: True where column j may serve as a negative for row i.

    Excludes the diagonal and, with image ids, every pair showing the same image
    (another caption of the same image is not a negative).
    """
    if image_ids is None:
        return ~torch.eye(batch_size, dtype=torch.bool, device=device)
    return image_ids.view(-1, 1) != image_ids.view(1, -1)


def sample_rows(weights: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one column per row of ``weights`` [B, B] restricted to ``candidates`` [B, B].

    Degenerate rows never crash: a row whose weights over the candidates are all zero
    or not finite falls back to uniform over its candidates; a row with no candidate
    at all gets a placeholder index and ``valid = False``. Fully vectorised.
    Returns (index [B] long, valid [B] bool).
    """
    w = torch.where(candidates & torch.isfinite(weights), weights.clamp(min=0), torch.zeros_like(weights))
    row_sum = w.sum(dim=1, keepdim=True)
    usable = torch.isfinite(row_sum) & (row_sum > 0)
    valid = candidates.any(dim=1)
    w = torch.where(usable, w, candidates.to(w.dtype))  # fallback: uniform over candidates
    w = torch.where(valid.unsqueeze(1), w, torch.ones_like(w))  # no candidate: any index, dropped later
    return torch.multinomial(w, 1).squeeze(1), valid


class NegativeMiner(nn.Module):
    """``forward(sim_i2t [B, B], sim_t2i [B, B], image_ids [B] | None, temp=None) -> MinedNegatives``.

    ``sim_i2t[i, j]`` is the similarity of image i with text j (in-batch columns only),
    already divided by the ITC temperature ``temp`` (0-dim tensor) when it is given.
    """

    def forward(self, sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, image_ids: torch.Tensor | None, temp: torch.Tensor | None = None) -> MinedNegatives:
        sim_i2t, sim_t2i = self.rescale(sim_i2t, temp), self.rescale(sim_t2i, temp)
        cand = candidate_mask(sim_i2t.shape[0], image_ids, sim_i2t.device)
        neg_img, valid_t = self.pick(sim_t2i.float(), cand)
        neg_txt, valid_i = self.pick(sim_i2t.float(), cand)
        return MinedNegatives(neg_img, neg_txt, valid_t, valid_i)

    def rescale(self, sim: torch.Tensor, temp: torch.Tensor | None) -> torch.Tensor:
        return sim

    def pick(self, sim: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
