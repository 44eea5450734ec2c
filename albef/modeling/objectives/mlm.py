"""Image-conditioned masked language modelling with momentum distillation."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from albef.modeling.context import StepContext
from albef.modeling.objectives.base import Objective
from albef.registry import OBJECTIVE_REGISTRY


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
    focus_ids: torch.Tensor | None = None,
    focus_prob: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking, vectorised on the ids' device.

    Each position is chosen with probability ``mask_prob`` (or given as ``positions``
    [B, L] bool), never padding or a token in ``never_mask`` ([CLS], [SEP], [PAD] ids).
    Of the chosen: ``replace_prob`` -> [MASK], ``random_prob`` -> a uniformly random
    id over the whole vocabulary (as the official code), the rest unchanged.
    With ``positions`` given, every chosen position becomes [MASK] (deterministic).
    Tokens in ``focus_ids`` (e.g. the relation words) are chosen with ``focus_prob`` instead.
    Returns (masked_ids [B, L], labels [B, L] with -100 where not chosen).
    """
    if positions is not None:  # pinned positions are taken as given (padding aside)
        chosen = positions.bool() & attention_mask.bool()
        return input_ids.masked_fill(chosen, mask_token_id), input_ids.masked_fill(~chosen, -100)
    eligible = attention_mask.bool() & ~torch.isin(input_ids, never_mask)
    prob: torch.Tensor | float = mask_prob
    if focus_ids is not None and focus_ids.numel():
        prob = torch.where(torch.isin(input_ids, focus_ids), focus_prob, mask_prob)
    chosen = (torch.rand(input_ids.shape, device=input_ids.device) < prob) & eligible
    labels = input_ids.masked_fill(~chosen, -100)
    r = torch.rand(input_ids.shape, device=input_ids.device)
    to_mask = chosen & (r < replace_prob)
    to_random = chosen & (r >= replace_prob) & (r < replace_prob + random_prob)
    random_ids = torch.randint(vocab_size, input_ids.shape, device=input_ids.device, dtype=input_ids.dtype)
    out = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    out = torch.where(to_random, random_ids, out)
    return out, labels


@OBJECTIVE_REGISTRY.register()
class MLMLoss(Objective):
    """Predict masked words from the text *and* the image (full text encoder + fusion + MLM head).

    loss = (1 - alpha) * CE(pred, labels) + alpha * mean_masked[-sum_v softmax(teacher)_v log_softmax(pred)_v],
    both means over the masked tokens only; a batch with no masked token gives 0 (not NaN).

    The teacher's logits (the distillation targets) come from the same text encoder,
    fusion and head on the momentum teacher's weights, over the same masked ids and the
    teacher's own image tokens; without an EMA copy of the head there is no distillation.

    A batch may pin the masked positions with ``mlm_positions`` [B, L] bool (tests, parity).

    Args:
        logits: ``masked`` (default): the MLM head (and the teacher's, and both softmaxes)
            runs only at the chosen positions, ~15% of them; ``all``: at every position, as
            the official code, then the unchosen ones are ignored. The loss is the same (to
            float rounding); ``masked`` skips ~85% of the vocabulary projection. Its
            number of positions varies per batch (a data-dependent shape, which the
            compiled step traces as a symbolic size: no graph break, no recompile).
        mask_prob: probability of choosing a token (15%).
        focus_words, focus_prob: words chosen with probability ``focus_prob`` instead
            (e.g. the relation words: the image decides them, so predicting them teaches
            the fusion encoder where each object is); each must be one token of the
            vocabulary. Default: none.
        replace_prob, random_prob: the 80/10/10 split.
        alpha: MLM's own distillation weight (null: the teacher's ``alpha``; 0: hard
            labels only, while ITC may still distil).
        head: key of the MLM head in ``model.heads``.
        Builder-supplied: vocab_size, mask_token_id, special_token_ids, vocab (token -> id).
    """

    def __init__(
        self,
        weight: float = 1.0,
        logits: str = "masked",
        mask_prob: float = 0.15,
        replace_prob: float = 0.8,
        random_prob: float = 0.1,
        head: str = "mlm",
        vocab_size: int = 30522,
        mask_token_id: int = 103,
        special_token_ids: Sequence[int] = (0, 101, 102),
        focus_words: Sequence[str] = (),
        focus_prob: float = 0.5,
        vocab: Mapping[str, int] | None = None,
        alpha: float | None = None,
    ):
        super().__init__(weight)
        self._set_alpha(alpha)
        if logits not in ("masked", "all"):
            raise ValueError(f"model.objectives.mlm.logits must be 'masked' or 'all', got {logits!r}")
        self.logits = logits
        if not 0.0 <= mask_prob <= 1.0 or replace_prob + random_prob > 1.0:
            raise ValueError(f"invalid MLM probabilities: mask {mask_prob}, replace {replace_prob}, random {random_prob}")
        self.mask_prob, self.replace_prob, self.random_prob = mask_prob, replace_prob, random_prob
        self.vocab_size = vocab_size
        self.mask_token_id = mask_token_id
        self.register_buffer("never_mask", torch.tensor(sorted(set(special_token_ids)), dtype=torch.long), persistent=False)
        self.head = head
        focus_words = list(focus_words or ())
        if focus_words and vocab is None:
            raise ValueError("model.objectives.mlm.focus_words needs the tokenizer's vocabulary (build the model with its tokenizer)")
        unknown = [w for w in focus_words if w not in (vocab or {})]
        if unknown:
            raise ValueError(f"model.objectives.mlm.focus_words: {unknown} are not tokens of the vocabulary (each must be one word piece)")
        if not 0.0 <= focus_prob <= 1.0:
            raise ValueError(f"model.objectives.mlm.focus_prob must be in [0, 1], got {focus_prob}")
        self.focus_prob = float(focus_prob)
        self.register_buffer("focus_ids", torch.tensor([vocab[w] for w in focus_words], dtype=torch.long), persistent=False)

    def heads_used(self) -> tuple[str, ...]:
        return (self.head,)

    def needs(self, distill: bool) -> frozenset[str]:
        return frozenset({"visual", "teacher_visual"} if distill else {"visual"})

    def forward(self, ctx: StepContext, alpha: float | torch.Tensor | None = None) -> torch.Tensor:
        ids, mask = ctx.batch["input_ids"], ctx.attention_mask
        masked_ids, labels = mask_tokens(
            ids, mask, self.mask_prob, self.mask_token_id, self.vocab_size, self.never_mask,
            positions=ctx.batch.get("mlm_positions"), replace_prob=self.replace_prob, random_prob=self.random_prob,
            focus_ids=self.focus_ids, focus_prob=self.focus_prob,
        )
        fused = ctx.fusion(ctx.text_encoder(masked_ids, mask), mask, ctx.visual)  # [B, L, H]
        chosen = labels != -100
        n = chosen.sum().clamp(min=1).float()
        if self.logits == "masked":  # only the chosen positions: [M, H] -> [M, V]
            sel = chosen.flatten().nonzero().squeeze(1)
            pick = lambda h: h.flatten(0, 1).index_select(0, sel)  # noqa: E731
            targets = labels.flatten().index_select(0, sel)
            weights = None
        else:  # every position [B*L, V], unchosen ones weighted 0 (official)
            pick = lambda h: h.flatten(0, 1)  # noqa: E731
            targets = labels.flatten()
            weights = chosen.flatten().float()
        logits = ctx.head(self.head)(pick(fused)).float()
        loss = F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum") / n
        if alpha is not None:  # the teacher's prediction on the same masked text and its own image tokens
            t = ctx.teacher
            with torch.no_grad():
                hidden_m = t.modules.fusion(t.modules.text_encoder(masked_ids, mask), mask, t.visual)
                soft = F.softmax(t.head(self.head)(pick(hidden_m)).float(), dim=-1)
            distill = -(soft * F.log_softmax(logits, dim=-1)).sum(dim=-1)  # [M] or [B*L]
            distill = distill.sum() if weights is None else (distill * weights).sum()
            loss = (1 - alpha) * loss + alpha * distill / n
        return loss
