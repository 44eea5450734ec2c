"""The built-in components, registered through the same hooks as any plugin.

Imports happen inside the hooks so that importing :mod:`albef.registry` (which every
component module does) never imports the components themselves.
"""
from __future__ import annotations

from albef.plugins.hookspecs import hookimpl


@hookimpl
def albef_register_meta_archs(register):
    from albef.modeling.meta_arch.albef import ALBEF

    register(ALBEF)


@hookimpl
def albef_register_vision_encoders(register):
    from albef.modeling.encoders.timm_vit import TimmViT

    register(TimmViT)


@hookimpl
def albef_register_text_encoders(register):
    from albef.modeling.encoders.bert_text import BertTextEncoder

    register(BertTextEncoder)


@hookimpl
def albef_register_fusion_blocks(register):
    from albef.modeling.fusion.cross_attention import CrossAttentionFusion

    register(CrossAttentionFusion)


@hookimpl
def albef_register_objectives(register):
    from albef.modeling.objectives.itc import ITCLoss
    from albef.modeling.objectives.itm import ITMLoss
    from albef.modeling.objectives.mlm import MLMLoss
    from albef.modeling.objectives.classification import ClassificationLoss
    from albef.modeling.objectives.text_assignment import TextAssignmentLoss
    from albef.modeling.objectives.answer_generation import AnswerGenerationLoss

    for cls in (ITCLoss, ITMLoss, MLMLoss, ClassificationLoss, TextAssignmentLoss, AnswerGenerationLoss):
        register(cls)


@hookimpl
def albef_register_miners(register):
    from albef.modeling.miners.contrastive_hard import ContrastiveHardNegativeMiner
    from albef.modeling.miners.hardest_negative import HardestNegativeMiner
    from albef.modeling.miners.random_negative import RandomNegativeMiner

    for cls in (ContrastiveHardNegativeMiner, HardestNegativeMiner, RandomNegativeMiner):
        register(cls)


@hookimpl
def albef_register_teachers(register):
    from albef.modeling.teachers.momentum import MomentumTeacher
    from albef.modeling.teachers.none import NoTeacher

    register(MomentumTeacher)
    register(NoTeacher)


@hookimpl
def albef_register_datasets(register):
    from albef.data.datasets.pretrain_json import PretrainJSON
    from albef.data.datasets.retrieval_eval import RetrievalEvalJSON
    from albef.data.datasets.visual_entailment import VisualEntailmentJSON
    from albef.data.datasets.nlvr2 import NLVR2JSON
    from albef.data.datasets.vqa import VQAJSON
    from albef.data.datasets.grounding import GroundingEvalJSON
    from albef.data.datasets.webdataset_pretrain import WebDatasetPretrain

    for cls in (PretrainJSON, WebDatasetPretrain, RetrievalEvalJSON, VisualEntailmentJSON, NLVR2JSON, VQAJSON, GroundingEvalJSON):
        register(cls)


@hookimpl
def albef_register_heads(register):
    from albef.modeling.heads.itm_head import ITMHead
    from albef.modeling.heads.mlm_head import MLMHead
    from albef.modeling.heads.classifier import LinearClassifierHead, MLPClassifierHead
    from albef.modeling.heads.answer_decoder import AnswerDecoder

    for cls in (ITMHead, MLMHead, MLPClassifierHead, LinearClassifierHead, AnswerDecoder):
        register(cls)


@hookimpl
def albef_register_collators(register):
    from albef.data.collate import ImageTextCollator, VQACollator

    register(ImageTextCollator)
    register(VQACollator)


@hookimpl
def albef_register_loaders(register):
    from albef.data.loaders import MapStyleLoader, StreamingLoader

    register(MapStyleLoader)
    register(StreamingLoader)


@hookimpl
def albef_register_text_negatives(register):
    from albef.data.compositional_negatives import CompositionalNegatives

    register(CompositionalNegatives)


@hookimpl
def albef_register_evaluators(register):
    from albef.evaluation.classification import ClassificationEvaluator
    from albef.evaluation.retrieval import RetrievalEvaluator
    from albef.evaluation.vqa import VQAEvaluator
    from albef.evaluation.grounding import GroundingEvaluator
    from albef.evaluation.composition import CompositionEvaluator

    for cls in (RetrievalEvaluator, ClassificationEvaluator, VQAEvaluator, GroundingEvaluator, CompositionEvaluator):
        register(cls)


@hookimpl
def albef_register_trainers(register):
    from albef.engine.defaults import DefaultTrainer

    register(DefaultTrainer)
