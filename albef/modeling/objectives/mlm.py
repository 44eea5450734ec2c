"""Image-conditioned masked language modelling with momentum distillation."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from albef.modeling.context import StepContext
from albef.modeling.heads.mlm_head import MLMHead
from albef.modeling.objectives.base import Objective


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask_prob: float,
    mask_token_id: int,
    vocab_size: int,
    never_mask: torch.Tensor,
    positions: torch.Tensor | None = None,
    replace_prob: float = 0.8,
    random_prob: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking, vectorised on the ids' device.

    Each position is chosen with probability ``mask_prob`` (or given as ``positions``
    [B, L] bool), never padding or a token in ``never_mask`` ([CLS], [SEP], [PAD] ids).
    Of the chosen: ``replace_prob`` -> [MASK], ``random_prob`` -> a uniformly random
    id over the whole vocabulary (as the official code), the rest unchanged.
    With ``positions`` given, every chosen position becomes [MASK] (deterministic).
    Returns (masked_ids [B, L], labels [B, L] with -100 where not chosen).
    """
    if positions is not None:  # pinned positions are taken as given (padding aside)
        chosen = positions.bool() & attention_mask.bool()
        return input_ids.masked_fill(chosen, mask_token_id), input_ids.masked_fill(~chosen, -100)
    eligible = attention_mask.bool() & ~torch.isin(input_ids, never_mask)
    chosen = (torch.rand(input_ids.shape, device=input_ids.device) < mask_prob) & eligible
    labels = input_ids.masked_fill(~chosen, -100)
    r = torch.rand(input_ids.shape, device=input_ids.device)
    to_mask = chosen & (r < replace_prob)
    to_random = chosen & (r >= replace_prob) & (r < replace_prob + random_prob)
    random_ids = torch.randint(vocab_size, input_ids.shape, device=input_ids.device, dtype=input_ids.dtype)
    out = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    out = torch.where(to_random, random_ids, out)
    return out, labels


class MLMLoss(Objective):
    """Predict masked words from the text *and* the image (full text encoder + fusion + MLM head).

    loss = (1 - alpha) * CE(pred, labels) + alpha * mean_masked[-sum_v softmax(teacher)_v log_softmax(pred)_v],
    both means over the masked tokens only; a batch with no masked token gives 0 (not NaN).

    A batch may pin the masked positions with ``mlm_positions`` [B, L] bool (tests, parity).

    Args:
        mask_prob: probability of choosing a token (15%).
        replace_prob, random_prob: the 80/10/10 split.
        Builder-supplied: word_embeddings (tied decoder), vocab_size, mask_token_id,
        special_token_ids, layer_norm_eps.
    """

    def __init__(
        self,
        weight: float = 1.0,
        mask_prob: float = 0.15,
        replace_prob: float = 0.8,
        random_prob: float = 0.1,
        word_embeddings: nn.Parameter | None = None,
        vocab_size: int = 30522,
        mask_token_id: int = 103,
        special_token_ids: Sequence[int] = (0, 101, 102),
        layer_norm_eps: float = 1e-12,
    ):
        super().__init__(weight)
        if word_embeddings is None:
            raise ValueError("MLMLoss needs the text encoder's word embeddings to tie its decoder")
        if not 0.0 <= mask_prob <= 1.0 or replace_prob + random_prob > 1.0:
            raise ValueError(f"invalid MLM probabilities: mask {mask_prob}, replace {replace_prob}, random {random_prob}")
        self.mask_prob, self.replace_prob, self.random_prob = mask_prob, replace_prob, random_prob
        self.vocab_size = vocab_size
        self.mask_token_id = mask_token_id
        self.register_buffer("never_mask", torch.tensor(sorted(set(special_token_ids)), dtype=torch.long), persistent=False)
        self.mlm_head = MLMHead(word_embeddings, layer_norm_eps=layer_norm_eps)

    def teacher_modules(self) -> dict[str, nn.Module]:
        return {"mlm_head": self.mlm_head}

    def forward(self, ctx: StepContext) -> torch.Tensor:
        ids, mask = ctx.batch["input_ids"], ctx.attention_mask
        masked_ids, labels = mask_tokens(
            ids, mask, self.mask_prob, self.mask_token_id, self.vocab_size, self.never_mask,
            positions=ctx.batch.get("mlm_positions"), replace_prob=self.replace_prob, random_prob=self.random_prob,
        )
        model = ctx.model
        text = model.text_encoder(masked_ids, mask)
        logits = self.mlm_head(model.fusion(text, mask, ctx.image_embeds)).float()  # [B, L, V]
        chosen = (labels != -100).float()
        n = chosen.sum().clamp(min=1.0)
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none")
        loss = ce.sum() / n
        alpha = ctx.teacher.alpha
        if alpha > 0 and model.teacher.has_module("mlm_head") and ctx.teacher.image_embeds_m is not None:
            soft = F.softmax(model.teacher.mlm_logits(masked_ids, mask, ctx.teacher.image_embeds_m).float(), dim=-1)
            distill = -(soft * F.log_softmax(logits, dim=-1)).sum(dim=-1)  # [B, L]
            loss = (1 - alpha) * loss + alpha * (distill * chosen).sum() / n
        return loss
