"""A finished run, loaded for analysis: its config, model (with a checkpoint's weights) and evaluators.

The analysis scripts of the synthetic tasks (and ``projects/grounding``) read a run's
``config.yaml``; the model comes from :func:`albef.modeling.build.build_model_from_weights`
and the evaluators from the run's trainer class (its builder class methods: no trainer,
optimizer or training set is built).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig


@dataclass
class Run:
    """``cfg`` (the run's config, ``output_dir`` = ``<run>/analysis``), the ``model`` in eval
    mode on ``device``, its ``tokenizer`` and ``amp`` (bf16 autocast as the run had it)."""

    cfg: DictConfig
    model: torch.nn.Module
    tokenizer: Any
    device: torch.device
    amp: bool


def load_config_of_run(output_dir: str, analysis_dir: bool = True) -> DictConfig:
    """``<output_dir>/config.yaml``; with ``analysis_dir`` anything written goes to ``<output_dir>/analysis``."""
    from albef.config import load_config

    opts = [f"output_dir={os.path.join(output_dir, 'analysis')}"] if analysis_dir else []
    return load_config(os.path.join(output_dir, "config.yaml"), opts)


def load_run(cfg: DictConfig, weights: str, strict: bool = True) -> Run:
    """The model of ``cfg`` with ``weights`` (ours or official; ``strict=False`` loads the
    part that fits, e.g. a pretraining checkpoint into a grounding model). The run's data is
    prepared first, as training prepared it (generated only if missing)."""
    from albef.engine.defaults import seed_all, trainer_class
    from albef.modeling.build import build_model_from_weights

    os.makedirs(cfg.output_dir, exist_ok=True)
    trainer_class(cfg).prepare_data(cfg)
    seed_all(cfg.train.seed)  # what the checkpoint does not fill is initialised as the run was
    model, tok, device, amp = build_model_from_weights(cfg, weights, strict=strict)
    return Run(cfg, model, tok, device, amp)


def build_evaluators(run: Run) -> dict:
    """Every ``eval.<key>`` of the run whose split exists: ``{key: Evaluator}``, in config order."""
    from albef.engine.defaults import trainer_class

    return trainer_class(run.cfg).build_evaluators_for(run.cfg, run.model, run.tokenizer, run.device, run.amp)
