"""VQA: the answer decoder's language-model loss on weighted answers, with momentum distillation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from albef.modeling.context import StepContext
from albef.modeling.heads.answer_decoder import token_nll
from albef.modeling.objectives.base import Objective
from albef.registry import OBJECTIVE_REGISTRY


@OBJECTIVE_REGISTRY.register()
class AnswerGenerationLoss(Objective):
    """Weighted answer likelihood given the fused question (paper §4.3, official ``model_vqa``).

    The question (``input_ids`` / ``attention_mask`` [B, Lq]) is fused with its image; every
    answer of every question is decoded with teacher forcing from the fused states of its
    own question, all answers of the batch in one pass (the question states are gathered by
    ``answer_question``, not repeated in a Python loop as in the official code)::

        loss_a = sum_t [(1 - alpha) * CE(p_t, y_t) - alpha * sum_v q_t(v) log p_t(v)]
        loss   = sum_a weight_a * loss_a / B

    where ``q_t`` is the momentum teacher's decoder distribution on the same answer and
    the teacher's fused question states (distillation only when the teacher keeps an EMA
    copy of the decoder and alpha > 0), and t runs over the answer tokens after ``[CLS]``.

    Batch entries (from :class:`~albef.data.collate.VQACollator`): ``answer_input_ids`` /
    ``answer_attention_mask`` [A, La] (``[CLS] answer [SEP]``), ``answer_weight`` [A]
    (VQA: count / annotators; VG: a fixed weight), ``answer_question`` [A] (row of its
    question in the batch).

    Args:
        head: key of the :class:`~albef.modeling.heads.answer_decoder.AnswerDecoder`.
        alpha: this objective's own distillation weight (null: the teacher's).
    """

    def __init__(self, weight: float = 1.0, head: str = "answer", alpha: float | None = None):
        super().__init__(weight)
        self.head = head
        self._set_alpha(alpha)

    def heads_used(self) -> tuple[str, ...]:
        return (self.head,)

    def needs(self, distill: bool) -> frozenset[str]:
        return frozenset({"fused", "teacher_fused"} if distill else {"fused"})

    def forward(self, ctx: StepContext, alpha: float | torch.Tensor | None = None) -> torch.Tensor:
        b = ctx.batch
        ids, mask = b["answer_input_ids"], b["answer_attention_mask"]
        weight, owner = b["answer_weight"].float(), b["answer_question"]
        q_mask = ctx.attention_mask.index_select(0, owner)
        logits = ctx.head(self.head)(ids, mask, ctx.fused.index_select(0, owner), q_mask).float()  # [A, La, V]
        nll = token_nll(logits, ids, mask)  # [A, La-1]
        if alpha is not None:
            dec_m = ctx.teacher.head(self.head)
            with torch.no_grad():
                soft = F.softmax(dec_m(ids, mask, ctx.teacher.fused.index_select(0, owner), q_mask).float()[:, :-1], dim=-1)
            distill = -(soft * F.log_softmax(logits[:, :-1], dim=-1)).sum(-1) * mask[:, 1:].to(soft.dtype)
            nll = (1 - alpha) * nll + alpha * distill
        return (weight * nll.sum(dim=1)).sum() / ctx.batch_size
