"""The ALBEF model: align (ITC) unimodal features, then fuse (ITM, MLM) with cross-attention."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from albef.modeling.context import StepContext
from albef.modeling.objectives.base import Objective
from albef.registry import (
    FUSION_REGISTRY,
    OBJECTIVE_REGISTRY,
    TEACHER_REGISTRY,
    TEXT_ENCODER_REGISTRY,
    VISION_ENCODER_REGISTRY,
    build_component,
)


class ALBEF(nn.Module):
    """Components are injected; :meth:`from_config` builds them from the ``model`` config node.

    Training ``forward(batch)`` takes ``image`` [B, 3, H, W], ``input_ids`` and
    ``attention_mask`` [B, L], optionally ``image_id`` [B], and returns a dict of
    weighted scalar losses ``loss_<objective key>`` plus non-loss statistics
    (``dropped_*``) that the trainer logs but does not optimise.
    """

    def __init__(
        self,
        *,
        vision_encoder: nn.Module,
        text_encoder: nn.Module,
        fusion: nn.Module,
        teacher: nn.Module,
        objectives: Mapping[str, Objective],
        embed_dim: int = 256,
        temp: float = 0.07,
        temp_min: float = 0.001,
        temp_max: float = 0.5,
    ):
        super().__init__()
        self.vision_encoder = vision_encoder
        self.text_encoder = text_encoder
        self.fusion = fusion
        self.vision_proj = nn.Linear(vision_encoder.embed_dim, embed_dim)
        self.text_proj = nn.Linear(text_encoder.hidden_size, embed_dim)
        self.temp = nn.Parameter(torch.tensor(float(temp)))
        self.temp_min, self.temp_max = float(temp_min), float(temp_max)
        self.objectives = nn.ModuleDict(dict(objectives))
        self.teacher = teacher
        self.teacher.attach(self.student_modules())

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
        embed_dim: int = 256,
        temp: float = 0.07,
        temp_min: float = 0.001,
        temp_max: float = 0.5,
        vocab_size: int | None = None,
        pad_token_id: int = 0,
        mask_token_id: int = 103,
        special_token_ids: Sequence[int] = (0, 101, 102),
    ) -> "ALBEF":
        vis = build_component(VISION_ENCODER_REGISTRY, vision_encoder, where="model.vision_encoder")
        txt = build_component(
            TEXT_ENCODER_REGISTRY, text_encoder, where="model.text_encoder", vocab_size=vocab_size, pad_token_id=pad_token_id
        )
        fus = build_component(
            FUSION_REGISTRY, fusion, where="model.fusion",
            hidden_size=txt.hidden_size, encoder_width=vis.embed_dim, text_config=getattr(txt, "config", None),
        )
        word_emb = txt.get_input_embeddings().weight
        common: dict[str, Any] = dict(
            hidden_size=txt.hidden_size,
            embed_dim=embed_dim,
            word_embeddings=word_emb,
            vocab_size=word_emb.shape[0],
            mask_token_id=mask_token_id,
            pad_token_id=pad_token_id,
            special_token_ids=tuple(special_token_ids),
            layer_norm_eps=getattr(getattr(txt, "config", None), "layer_norm_eps", 1e-12),
        )
        objs = {}
        for key, node in (objectives or {}).items():
            if node is None:
                continue  # switched off with model.objectives.<key>=null
            objs[key] = build_component(OBJECTIVE_REGISTRY, node, where=f"model.objectives.{key}", **common)
        if not objs:
            raise ValueError("model.objectives: every objective is switched off; nothing to train")
        leftover = getattr(txt, "pretrained_leftover", None)
        if leftover:  # BERT init (paper): remaining layers -> fusion, cls.predictions -> MLM head
            from albef.modeling.pretrained import init_fusion_from_bert, init_mlm_head_from_bert

            init_fusion_from_bert(fus, leftover)
            for obj in objs.values():
                if isinstance(getattr(obj, "mlm_head", None), nn.Module):
                    init_mlm_head_from_bert(obj.mlm_head, leftover)
            txt.pretrained_leftover = None
        tch = build_component(TEACHER_REGISTRY, teacher, where="model.teacher", embed_dim=embed_dim)
        return cls(
            vision_encoder=vis, text_encoder=txt, fusion=fus, teacher=tch, objectives=objs,
            embed_dim=embed_dim, temp=temp, temp_min=temp_min, temp_max=temp_max,
        )

    def student_modules(self) -> nn.ModuleDict:
        """The modules the momentum teacher mirrors (official: ViT, BERT with MLM head, projections)."""
        mods: dict[str, nn.Module] = {
            "vision_encoder": self.vision_encoder,
            "vision_proj": self.vision_proj,
            "text_encoder": self.text_encoder,
            "text_proj": self.text_proj,
            "fusion": self.fusion,
        }
        for obj in self.objectives.values():
            mods.update(obj.teacher_modules())
        return nn.ModuleDict(mods)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """EMA step of the teacher towards the current weights (call after optimizer.step)."""
        self.teacher.update(self.student_modules())

    # ------------------------------------------------------------------ encoders
    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image [B, 3, H, W] -> (tokens [B, 1+N, Dv], normalised feature [B, E])."""
        embeds = self.vision_encoder(image)
        return embeds, F.normalize(self.vision_proj(embeds[:, 0]).float(), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids, mask [B, L] -> (hidden [B, L, H], normalised feature [B, E])."""
        embeds = self.text_encoder(input_ids, attention_mask)
        return embeds, F.normalize(self.text_proj(embeds[:, 0]).float(), dim=-1)

    @property
    def itm_head(self) -> nn.Module | None:
        for obj in self.objectives.values():
            head = getattr(obj, "itm_head", None)
            if head is not None:
                return head
        return None

    def itm_scores(self, text_embeds: torch.Tensor, text_mask: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """Matched-class ITM logit [N] for N (text, image) pairs."""
        head = self.itm_head
        if head is None:
            raise RuntimeError("this model has no ITM objective, so it has no ITM head to score pairs")
        return head(self.fusion(text_embeds, text_mask, image_embeds)[:, 0])[:, 1].float()

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            self.temp.clamp_(self.temp_min, self.temp_max)
        image_embeds, image_feat = self.encode_image(batch["image"])
        text_embeds, text_feat = self.encode_text(batch["input_ids"], batch["attention_mask"])
        teacher_out = self.teacher(batch, image_feat, text_feat)
        ctx = StepContext(
            model=self, batch=batch, image_embeds=image_embeds, text_embeds=text_embeds,
            image_feat=image_feat, text_feat=text_feat, temp=self.temp, teacher=teacher_out,
        )
        out: dict[str, torch.Tensor] = {}
        for key, obj in self.objectives.items():
            res = obj(ctx)
            if isinstance(res, dict):
                for name, value in res.items():
                    out[f"loss_{key}_{name}"] = obj.weight * value
            else:
                out[f"loss_{key}"] = obj.weight * res
        self.teacher.enqueue(teacher_out, batch.get("image_id"))
        out.update(ctx.stats)
        return out
