"""The VQA answer decoder: a causal BERT with cross-attention to the fused question states.

ALBEF answers a question by *generating* the answer (paper §4.3, official
``models/model_vqa.py``): the question is encoded by the text encoder and fused with the
image; a 6-layer decoder, whose every layer cross-attends to those fused question states
(not to the image), then models ``p(answer | question, image)`` token by token, starting
from ``[CLS]`` (the BOS token) and ending with ``[SEP]`` (EOS).

Parameter layout (mirrors the official ``text_decoder``, so its checkpoints map one to one)::

    embeddings.*          its own BERT embeddings    (official text_decoder.bert.embeddings.*)
    encoder.layer.i.*     causal self-attention + cross-attention + FFN
                                                     (official text_decoder.bert.encoder.layer.i.*)
    lm.*                  LM head, decoder tied to its own word embeddings
                                                     (official text_decoder.cls.predictions.*)

Initialisation from a pretraining checkpoint (the official ``VQA.py``): embeddings from the
text encoder's embeddings, layer i from fusion layer i (pretrained BERT layer 6 + i), the
LM head from the pretraining MLM head. The head declares this in :attr:`init_from`; the
checkpoint adaptation pass (:mod:`albef.checkpoint.adapt`) applies it when the checkpoint
has no decoder of its own.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from albef.modeling.fusion.cross_attention import CrossAttentionFusion
from albef.modeling.fusion.visual import VisualInput
from albef.modeling.heads.mlm_head import MLMHead
from albef.registry import HEAD_REGISTRY

#: official initialisation: decoder part -> where it comes from in a pretraining checkpoint
OFFICIAL_INIT = {"embeddings": "text_encoder.bert.embeddings", "encoder": "fusion", "lm": "heads.mlm"}


@HEAD_REGISTRY.register()
class AnswerDecoder(nn.Module):
    """``forward(ids [A, La], mask [A, La], states [A, Lq, H], states_mask [A, Lq]) -> logits [A, La, V]``.

    Position t of the logits predicts token t + 1; position t sees tokens <= t only
    (causal self-attention) and every question state (cross-attention, padding masked).

    Args:
        num_layers: decoder layers (official: 6, every one with cross-attention).
        momentum: keep an EMA copy in the momentum teacher (official ``text_decoder_m``):
            its token distributions are the distillation targets of the answer loss.
        attn_implementation: ``sdpa`` or ``explicit`` (see :class:`CrossAttentionFusion`).
        init_from: ``{embeddings, encoder, lm}`` -> module path in a checkpoint of this
            codebase to initialise that part from when the checkpoint has no decoder;
            default :data:`OFFICIAL_INIT`; null entries stay freshly initialised.
        hidden_size, text_config, layer_norm_eps, initializer_range: supplied by the model
            builder (the text encoder's BERT config: vocabulary, positions, dropout).
    """

    def __init__(
        self,
        num_layers: int = 6,
        momentum: bool = True,
        attn_implementation: str = "sdpa",
        init_from: Mapping[str, str | None] | None = None,
        hidden_size: int = 768,
        text_config: Any = None,
        layer_norm_eps: float = 1e-12,
        initializer_range: float | None = None,
    ):
        super().__init__()
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertEmbeddings

        if text_config is None:
            raise ValueError("AnswerDecoder needs the text encoder's BERT config (supplied by the model builder)")
        if num_layers < 1:
            raise ValueError(f"AnswerDecoder.num_layers must be >= 1, got {num_layers}")
        cfg: BertConfig = copy.deepcopy(text_config)
        self.config = cfg
        self.momentum = bool(momentum)
        std = initializer_range if initializer_range is not None else getattr(cfg, "initializer_range", 0.02)
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = CrossAttentionFusion(
            num_layers=num_layers, hidden_size=hidden_size, encoder_width=hidden_size, text_config=cfg,
            causal=True, attn_implementation=attn_implementation, initializer_range=std,
        )
        self.lm = MLMHead(word_embeddings=self.embeddings.word_embeddings.weight, layer_norm_eps=layer_norm_eps,
                          initializer_range=std, momentum=False)
        with torch.no_grad():  # BERT's initialisation for the embeddings
            for emb in (self.embeddings.word_embeddings, self.embeddings.position_embeddings, self.embeddings.token_type_embeddings):
                emb.weight.normal_(0.0, std)
            if cfg.pad_token_id is not None:
                self.embeddings.word_embeddings.weight[cfg.pad_token_id].zero_()
        unknown = set(init_from or {}) - set(OFFICIAL_INIT)
        if unknown:
            raise ValueError(f"AnswerDecoder.init_from: unknown part(s) {sorted(unknown)}; parts: {', '.join(OFFICIAL_INIT)}")
        self.init_from = {**OFFICIAL_INIT, **dict(init_from or {})}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, states: torch.Tensor, states_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids=input_ids)
        x = self.encoder(x, attention_mask, VisualInput.of(states, [states_mask]))
        return self.lm(x)

    def source_map(self, own_keys, available) -> dict[str, str]:
        """{own key: checkpoint key} for the parts :attr:`init_from` names (keys relative to
        this head; sources are model-level keys). Only sources present in ``available``."""
        avail = set(available)
        out = {}
        for key in own_keys:
            part, _, rest = key.partition(".")
            src = self.init_from.get(part)
            if src and f"{src}.{rest}" in avail:
                out[key] = f"{src}.{rest}"
        return out

    # ------------------------------------------------------------------ scoring answers
    def answer_nll(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, states: torch.Tensor, states_mask: torch.Tensor) -> torch.Tensor:
        """[A]: -log p(answer) summed over its tokens after [CLS] ([SEP] included, padding not)."""
        logits = self(input_ids, attention_mask, states, states_mask).float()
        return token_nll(logits, input_ids, attention_mask).sum(dim=1)

    @torch.no_grad()
    def generate(self, states: torch.Tensor, states_mask: torch.Tensor, bos_id: int, eos_id: int, pad_id: int, max_len: int = 10) -> torch.Tensor:
        """Greedy decoding, batched over questions: ids [B, <= max_len] starting with
        ``bos_id``; after ``eos_id`` a row is padded with ``pad_id``."""
        b = states.shape[0]
        ids = torch.full((b, 1), bos_id, dtype=torch.long, device=states.device)
        done = torch.zeros(b, dtype=torch.bool, device=states.device)
        for _ in range(max_len - 1):
            mask = torch.ones_like(ids)
            nxt = self(ids, mask, states, states_mask)[:, -1].argmax(dim=-1)
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == eos_id
            if bool(done.all()):  # one sync per generated token, not per question
                break
        return ids


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[A, La - 1]: -log p(token t | tokens < t) for t >= 1, zero at padding.

    logits [A, La, V] (position t predicts token t + 1), ids and mask [A, La]."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return nll * attention_mask[:, 1:].to(nll.dtype)


@torch.no_grad()
def rank_answers(
    decoder: AnswerDecoder,
    states: torch.Tensor,
    states_mask: torch.Tensor,
    answer_ids: torch.Tensor,
    answer_mask: torch.Tensor,
    k: int = 128,
    double_count_first_token: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank a candidate answer list for every question (official ``rank_answer``, batched).

    1. One decoding step from ``[CLS]``: p(first answer token) for every candidate; keep the
       top-k candidates per question.
    2. Teacher-force those k answers: their full log-likelihood
       ``sum_t log p(token t | < t)``, in which the first token counts once.

    The official code adds ``log p(first token)`` from step 1 to that sum once more
    (``double_count_first_token=True`` reproduces it, for parity); the default scores each
    answer by its log-likelihood.

    states [B, Lq, H], states_mask [B, Lq]; answer_ids / answer_mask [N, La] (``[CLS] ans
    [SEP]``, padded). Returns (candidate indices [B, k'] best first, their scores [B, k']),
    k' = min(k, N).
    """
    b, n = states.shape[0], answer_ids.shape[0]
    k = min(int(k), n)
    start = answer_ids[:1, :1].expand(b, 1)  # [CLS] for every question
    first_logits = decoder(start, torch.ones_like(start), states, states_mask)[:, 0].float()  # [B, V]
    first_lp = F.log_softmax(first_logits, dim=-1).index_select(1, answer_ids[:, 1])  # [B, N]
    top_lp, top_idx = first_lp.topk(k, dim=1)  # [B, k]
    flat = top_idx.reshape(-1)
    ids, mask = answer_ids.index_select(0, flat), answer_mask.index_select(0, flat)  # [B*k, La]
    rep = torch.arange(b, device=states.device).repeat_interleave(k)
    loglik = -decoder.answer_nll(ids, mask, states.index_select(0, rep), states_mask.index_select(0, rep)).view(b, k)
    if double_count_first_token:
        loglik = loglik + top_lp
    scores, order = loglik.sort(dim=1, descending=True)
    return top_idx.gather(1, order), scores
