"""The ALBEF task model: the base model plus heads, objectives and a teacher.

Every task of the paper is this model with other heads and objectives:

============================  ===================================  ==============================
task                          heads (``model.heads``)              objectives
============================  ===================================  ==============================
pretraining                   itm: ITMHead, mlm: MLMHead           ITCLoss, ITMLoss, MLMLoss
retrieval fine-tuning         itm: ITMHead                         ITCLoss, ITMLoss
SNLI-VE                       cls: MLPClassifierHead(3)            ClassificationLoss
NLVR2 (two images)            cls: MLPClassifierHead(2)            ClassificationLoss
NLVR2 text assignment         ta: LinearClassifierHead(3)          TextAssignmentLoss
VQA                           answer: AnswerDecoder                AnswerGenerationLoss
weakly supervised grounding   itm: ITMHead                         ITCLoss, ITMLoss
============================  ===================================  ==============================

``forward(batch)`` computes the losses and nothing else; the state changes of a step
(teacher EMA, feature queue, temperature clamp) happen in :meth:`ALBEF.after_step`,
which the trainer calls once after the optimizer step.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from albef.modeling import encoding
from albef.modeling.context import MissingHeadError, StepContext, TextNegatives, find_head
from albef.modeling.meta_arch.base import ALBEFModel, build_base_components
from albef.modeling.objectives.base import Objective
from albef.registry import HEAD_REGISTRY, META_ARCH_REGISTRY, OBJECTIVE_REGISTRY, TEACHER_REGISTRY, ComponentError, build_component

logger = logging.getLogger("albef.modeling")


@META_ARCH_REGISTRY.register()
class ALBEF(ALBEFModel):
    """Components are injected; :meth:`from_config` builds them from the ``model`` config node.

    Training ``forward(batch)`` takes ``image`` [B, 3, H, W] (or [B, K, 3, H, W] for
    K images per text), ``input_ids`` and ``attention_mask`` [B, L], and whatever the
    objectives read (``image_id`` [B], ``label`` [B], ...); it returns a dict of weighted
    scalar losses ``loss_<objective key>``, non-loss counts (``dropped_*``, the collator's ``batch["stats"]``) that the
    trainer logs but does not optimise, and ``state``: what :meth:`after_step` needs
    (the momentum features to enqueue).
    """

    def __init__(
        self,
        *,
        vision_encoder: nn.Module,
        text_encoder: nn.Module,
        fusion: nn.Module,
        teacher: nn.Module,
        objectives: Mapping[str, Objective],
        heads: Mapping[str, nn.Module] | None = None,
        embed_dim: int | None = 256,
        temp: float = 0.07,
        temp_min: float = 0.001,
        temp_max: float = 0.5,
    ):
        super().__init__(
            vision_encoder=vision_encoder, text_encoder=text_encoder, fusion=fusion,
            embed_dim=embed_dim, temp=temp, temp_min=temp_min, temp_max=temp_max,
        )
        self.heads = nn.ModuleDict(dict(heads or {}))
        self.objectives = nn.ModuleDict(dict(objectives))
        missing = sorted({k for o in self.objectives.values() for k in o.heads_used()} - set(self.heads))
        if missing:
            raise MissingHeadError(
                f"the objectives use head(s) {missing} but model.heads has no such key(s) "
                f"(configured heads: {sorted(self.heads) or 'none'})"
            )
        for key, obj in self.objectives.items():  # the calling convention: forward(ctx, alpha)
            params = inspect.signature(obj.forward).parameters.values()
            if sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params) < 2:
                raise ComponentError(
                    f"model.objectives.{key}: {type(obj).__name__}.forward takes no alpha; objectives are called as "
                    f"forward(ctx, alpha) (alpha: this step's distillation weight, None = do not distil) and name what they "
                    f"read of the StepContext in needs(distill) (see albef.modeling.objectives.base.NEEDS)"
                )
        self.teacher = teacher
        self.teacher.attach(self, self.momentum_paths())
        for key, obj in self.objectives.items():  # an objective's own alpha > 0 must have something to distil from
            a = getattr(obj, "alpha", None)
            if not a:
                continue
            if self.teacher.model is None:  # e.g. NoTeacher
                raise ComponentError(
                    f"model.objectives.{key}.alpha={a} asks for distillation, but model.teacher "
                    f"({type(self.teacher).__name__}) keeps no momentum model; use MomentumTeacher or set alpha: 0"
                )
            no_copy = [h for h in obj.heads_used() if not self.teacher.has(f"heads.{h}")]
            if no_copy:
                raise ComponentError(
                    f"model.objectives.{key}.alpha={a} asks for distillation, but the teacher keeps no EMA copy of "
                    f"model.heads.{no_copy[0]} (a head built with momentum: false); set alpha: 0 or null"
                )

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(
        cls,
        *,
        vision_encoder: dict,
        text_encoder: dict,
        fusion: dict,
        teacher: dict,
        objectives: dict,
        heads: dict | None = None,
        embed_dim: int | None = 256,
        temp: float = 0.07,
        temp_min: float = 0.001,
        temp_max: float = 0.5,
        vocab_size: int | None = None,
        pad_token_id: int = 0,
        mask_token_id: int = 103,
        special_token_ids: Sequence[int] = (0, 101, 102),
        vocab: Mapping[str, int] | None = None,
    ) -> "ALBEF":
        base = build_base_components(vision_encoder, text_encoder, fusion, vocab_size=vocab_size, pad_token_id=pad_token_id)
        txt = base["text_encoder"]
        word_emb = txt.get_input_embeddings().weight
        objs = {}
        for key, node in (objectives or {}).items():
            if node is None:
                continue  # switched off with model.objectives.<key>=null
            try:
                objs[key] = build_component(
                    OBJECTIVE_REGISTRY, node, where=f"model.objectives.{key}",
                    vocab_size=word_emb.shape[0], mask_token_id=mask_token_id, pad_token_id=pad_token_id,
                    special_token_ids=tuple(special_token_ids), hidden_size=txt.hidden_size, embed_dim=embed_dim, vocab=vocab,
                )
            except ValueError as e:  # a bad value: name the objective's key if the message does not
                msg = str(e)
                raise ComponentError(msg if f"model.objectives.{key}" in msg else f"model.objectives.{key}: {msg}") from e
        if not objs:
            raise ValueError("model.objectives: every objective is switched off; nothing to train")
        used = {k for o in objs.values() for k in o.heads_used()}
        built: dict[str, nn.Module] = {}
        for key, node in (heads or {}).items():
            if node is None:
                continue
            if key not in used:  # e.g. the MLM head of a model trained without MLM
                logger.info("model.heads.%s (%s) is not built: no objective uses it", key, node.get("name"))
                continue
            built[key] = build_component(
                HEAD_REGISTRY, node, where=f"model.heads.{key}",
                hidden_size=txt.hidden_size, word_embeddings=word_emb, vocab_size=word_emb.shape[0],
                layer_norm_eps=getattr(getattr(txt, "config", None), "layer_norm_eps", 1e-12),
                text_config=getattr(txt, "config", None),
            )
        tch = build_component(TEACHER_REGISTRY, teacher, where="model.teacher", embed_dim=embed_dim)
        return cls(
            **base, teacher=tch, objectives=objs, heads=built,
            embed_dim=embed_dim, temp=temp, temp_min=temp_min, temp_max=temp_max,
        )

    def momentum_paths(self) -> list[str]:
        """The modules the momentum teacher mirrors: the encoders, projections and fusion
        (official: ViT, the whole BERT, projections) and every head built with
        ``momentum: true`` (the MLM head, task classifiers; not the ITM head)."""
        paths = [p for p in ("vision_encoder", "vision_proj", "text_encoder", "text_proj", "fusion") if self._modules.get(p) is not None]
        return paths + [f"heads.{k}" for k, h in self.heads.items() if getattr(h, "momentum", False)]

    def student_modules(self) -> nn.ModuleDict:
        """The student's modules the teacher mirrors, in the teacher's layout (no copy)."""
        tree: dict[str, Any] = {}
        for path in self.momentum_paths():
            *parents, name = path.split(".")
            node = tree
            for p in parents:
                node = node.setdefault(p, {})
            mod: nn.Module = self
            for p in path.split("."):
                mod = mod._modules[p]
            node[name] = mod

        def as_module(node):
            return nn.ModuleDict({k: as_module(v) if isinstance(v, dict) else v for k, v in node.items()})

        return as_module(tree)

    def weight_map(self, available) -> dict[str, str]:
        """Heads initialised from other parts of a checkpoint that has none of their own
        (the VQA answer decoder from the text embeddings, the fusion layers and the MLM
        head: a head's ``source_map``). Their EMA copies come from the checkpoint's EMA
        copies of the same sources when it has them (official ``text_decoder_m`` from
        ``text_encoder_m``), otherwise from the loaded online weights (adaptation pass)."""
        avail = set(available)
        out: dict[str, str] = {}
        for key, head in self.heads.items():
            fn = getattr(head, "source_map", None)
            own = f"heads.{key}."
            if not callable(fn) or any(a.startswith(own) for a in avail):
                continue
            keys = list(head.state_dict())
            for rel, src in fn(keys, avail).items():
                out[own + rel] = src
            if self.teacher.has(f"heads.{key}"):
                t_avail = {a[len("teacher.model."):] for a in avail if a.startswith("teacher.model.")}
                for rel, src in fn(keys, t_avail).items():
                    out["teacher.model." + own + rel] = "teacher.model." + src
        return out

    # ------------------------------------------------------------------ heads
    def head(self, key: str, teacher: bool = False) -> nn.Module | None:
        """The head ``model.heads.<key>``; raises :class:`MissingHeadError` if there is none.
        ``teacher=True``: its EMA copy, or None when the teacher keeps none."""
        head = find_head(self.heads, key)
        if teacher:
            path = f"heads.{key}"
            return self.teacher.module(path) if self.teacher.has(path) else None
        return head

    def has_head(self, key: str) -> bool:
        return key in self.heads

    # ------------------------------------------------------------------ training
    def objective_alphas(self) -> dict[str, torch.Tensor | None]:
        """This step's distillation weight of each objective (None: it does not distil)."""
        return {key: self.teacher.objective_alpha(obj.alpha, obj.heads_used()) for key, obj in self.objectives.items()}

    def objective_needs(self, alphas: Mapping[str, Any]) -> frozenset[str]:
        """What this step's objectives read beyond the batch's encodings (given their ``alphas``)."""
        return frozenset().union(*(obj.needs(alphas[key] is not None) for key, obj in self.objectives.items()))

    def context(self, batch: dict[str, Any], needs: frozenset[str] | set[str] | None = None) -> StepContext:
        """Encode ``batch`` once: the :class:`StepContext` every objective reads (also for evaluation).

        ``needs`` (see :data:`albef.modeling.objectives.base.NEEDS`): what to compute beyond
        the student's encodings of the batch's texts and images; default: what this step's
        objectives need. The encoders run in the order the objectives used to call them in,
        so dropout draws its masks in the same order: with contrast (ITC/ITM) student image,
        teacher, student text; for the fused-state objectives (VE, NLVR2, VQA) student text,
        image and fused states, then the teacher's.
        """
        if needs is None:
            needs = self.objective_needs(self.objective_alphas())
        image, ids, mask = batch.get("image"), batch["input_ids"], batch["attention_mask"]
        contrast = "contrastive" in needs
        teacher_needs = dict(contrastive=contrast, visual="teacher_visual" in needs, fused="teacher_fused" in needs)
        teacher = text_embeds = text_feat = None
        if "fused" in needs and not contrast:  # the fused-state objectives read the text first
            text_embeds, text_feat = encoding.encode_text(self, ids, mask)
        visual, image_embeds, image_feat = encoding.encode_images(self, image) if image is not None else (None, None, None)
        if contrast:
            if image_feat is None:
                raise ValueError("contrastive objectives need one image per text ([B, 3, H, W]) and projections (model.embed_dim)")
            if self.teacher.model is None:  # no EMA model: the teacher contrasts against the online text feature
                text_embeds, text_feat = encoding.encode_text(self, ids, mask)
            teacher = self.teacher.encode(batch, **teacher_needs, image_feat=image_feat, text_feat=text_feat)
        if text_embeds is None:
            text_embeds, text_feat = encoding.encode_text(self, ids, mask)
        if visual is not None and needs & {"visual", "fused"}:
            visual = encoding.prepare_visual(self.fusion, visual)
        fused = self.fusion(text_embeds, mask, visual) if "fused" in needs else None
        if teacher is None and (teacher_needs["visual"] or teacher_needs["fused"]):
            teacher = self.teacher.encode(batch, **teacher_needs)
        negatives = None
        neg_ids = batch.get("text_neg_input_ids")
        if neg_ids is not None and "text_negatives" in needs:
            if neg_ids.shape != ids.shape:
                raise ValueError(f"text_neg_input_ids {tuple(neg_ids.shape)} must have the shape of input_ids {tuple(ids.shape)} "
                                 "(the collator tokenises texts and their negatives together)")
            neg_mask = batch["text_neg_attention_mask"]
            neg_hidden, neg_feat = encoding.encode_text(self, neg_ids, neg_mask)
            negatives = TextNegatives(neg_hidden, neg_mask, neg_feat, batch["text_neg_valid"].bool())
        return StepContext(
            batch, text_embeds=text_embeds, text_feat=text_feat, image_embeds=image_embeds, image_feat=image_feat, visual=visual,
            fused=fused,
            temp=self.temp, teacher=teacher, text_negatives=negatives,
            text_encoder=self.text_encoder, fusion=self.fusion, heads=self.heads,
        )

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        alphas = self.objective_alphas()
        ctx = self.context(batch, self.objective_needs(alphas))
        out: dict[str, Any] = {}
        for key, obj in self.objectives.items():
            res = obj(ctx, alphas[key])
            if isinstance(res, dict):
                for name, value in res.items():
                    out[f"loss_{key}_{name}"] = obj.weight * value
            else:
                out[f"loss_{key}"] = obj.weight * res
        out.update(ctx.stats)
        out.update(batch.get("stats") or {})  # the data side's counts (e.g. captions without a false text)
        t = ctx.teacher
        if t is not None and t.image_feat_m is not None:
            out["state"] = {"image_feat_m": t.image_feat_m, "text_feat_m": t.text_feat_m}
            if ctx.image_ids is not None:
                out["state"]["image_id"] = ctx.image_ids
        return out

    @torch.no_grad()
    def after_step(self, state: dict[str, torch.Tensor] | list[dict[str, torch.Tensor] | None] | None = None) -> None:
        """The state changes of one training step, after the optimizer step: the teacher's
        EMA update, the feature queue (this step's momentum features, gathered across
        ranks) and the temperature clamp to [temp_min, temp_max]. ``state`` may be a list:
        the states of a step's micro-batches (gradient accumulation), enqueued in order
        after the one EMA update."""
        self.teacher.update(self)
        for s in state if isinstance(state, list) else [state]:
            if s:
                self.teacher.enqueue(s)
        self.clamp_temperature()

    def set_distillation_scale(self, scale: float) -> None:
        """alpha = teacher.alpha * scale (the trainer's ramp)."""
        self.teacher.set_alpha_scale(scale)

    @property
    def distillation_alpha(self) -> float:
        return self.teacher.current_alpha
