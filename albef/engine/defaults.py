"""The pieces ``tools/train_net.py`` is made of: argument parser, setup, and the
:class:`DefaultTrainer` that assembles data, model, optimizer, hooks and evaluation from a
config. Every piece is built by an overridable class method (``build_model``,
``build_train_loader``, ``build_test_loader``, ``build_evaluator``, ``build_optimizer``,
``build_lr_scheduler``, ``build_hooks``), detectron2's way: a task that needs another
piece registers a subclass in ``TRAINER_REGISTRY`` and names it in ``train.trainer``."""
from __future__ import annotations

import argparse
import logging
import math
import os
import random
from typing import Any

import numpy as np
import torch
from fvcore.common.param_scheduler import CompositeParamScheduler, CosineParamScheduler, LinearParamScheduler, ParamScheduler
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

# The evaluators are built here (their package registers the built-ins on import), and
# albef.plugins discovers the installed plugins on the first lookup.
from albef import evaluation, plugins  # noqa: F401
from albef.checkpoint import ALBEFCheckpointer, set_rng_state
from albef.config import config_to_dict, dump_config, load_config, runtime
from albef.data import build as data_build
from albef.data.loaders import epoch_size
from albef.data.tokenization import build_tokenizer
from albef.engine import hooks as H
from albef.engine.train_loop import AccumulatingTrainer, SimpleTrainer
from albef.evaluation.base import Evaluator, format_metrics_table
from albef.modeling import build_model
from albef.registry import EVALUATOR_REGISTRY, TRAINER_REGISTRY, build_component, get_component
from albef.utils import comm
from albef.utils.events import CommonMetricPrinter, JSONWriter, TensorboardWriter
from albef.utils.logger import setup_logger

logger = logging.getLogger("albef")


def default_argument_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="ALBEF training and evaluation",
        epilog="Overrides: KEY=VALUE pairs after the flags, e.g. train.max_iter=100 model.objectives.mlm=null",
    )
    p.add_argument("--config-file", metavar="FILE", help="path to a YAML config (required unless --list-components)")
    p.add_argument("--list-components", action="store_true", help="print every registered component per family, with the plugin or module that provided it, and exit")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    p.add_argument("--eval-only", action="store_true", help="only evaluate (weights from --resume or model.weights)")
    p.add_argument("--num-gpus", type=int, default=1, help="processes to launch (one per GPU; CPU processes with gloo when no GPU)")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY=VALUE", help="config overrides")
    return p


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup(args: argparse.Namespace) -> DictConfig:
    """Load the config, create ``output_dir``, set up logging and write ``config.yaml``."""
    cfg = load_config(args.config_file, args.opts)
    rank = comm.get_rank()
    out = cfg.output_dir
    os.makedirs(out, exist_ok=True)
    setup_logger(out, rank)
    logger.info("Rank %d of %d; config file %s; overrides %s", rank, comm.get_world_size(), args.config_file, args.opts)
    if comm.is_main_process():
        dump_config(cfg, os.path.join(out, "config.yaml"))
        logger.info("Full config written to %s", os.path.join(out, "config.yaml"))
    return cfg


def resolve_device(cfg: DictConfig) -> torch.device:
    """``train.device`` resolved (:func:`albef.config.runtime.train_device_type`), on this rank's GPU under DDP."""
    kind = runtime.train_device_type(cfg)
    if kind == "cuda" and comm.is_dist():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(kind if cfg.train.device == "auto" else cfg.train.device)


def resolve_amp(cfg: DictConfig, device: torch.device) -> bool:
    a = cfg.train.amp
    if a == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    if a in ("bf16", True):
        return True
    if a in ("off", False, None):
        return False
    raise ValueError(f"train.amp must be auto, bf16 or off, got {a!r}")


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, 0/1-d tensors, positional embeddings, [CLS] token or temp.
    Parameters named by ``train.frozen`` (prefixes) are switched to ``requires_grad=False`` first."""
    frozen = tuple(str(f).rstrip(".") for f in (cfg.train.get("frozen") or ()))
    if frozen:
        names = [n for n, _ in model.named_parameters()]
        for f in frozen:
            if not any(n == f or n.startswith(f + ".") for n in names):
                raise ValueError(f"train.frozen: {f!r} names no parameter of the model (e.g. vision_encoder, text_encoder, fusion, heads.itm)")
        for name, p in model.named_parameters():
            if any(name == f or name.startswith(f + ".") for f in frozen):
                p.requires_grad_(False)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue  # the teacher's EMA weights, and the frozen ones
        skip = p.ndim <= 1 or name.endswith(".bias") or name.endswith("pos_embed") or name.endswith("cls_token")
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = next(model.parameters()).is_cuda
    kwargs = dict(lr=cfg.train.lr, betas=tuple(cfg.train.betas), eps=cfg.train.eps, fused=fused or None)
    sharding = cfg.train.get("optimizer_sharding", "none")
    if sharding in (None, "none"):
        return torch.optim.AdamW(groups, **kwargs)
    if sharding != "zero":
        raise ValueError(f"train.optimizer_sharding must be none or zero, got {sharding!r}")
    if comm.get_world_size() == 1:
        logger.info("train.optimizer_sharding=zero on one process: nothing to shard, plain AdamW")
        return torch.optim.AdamW(groups, **kwargs)
    from torch.distributed.optim import ZeroRedundancyOptimizer

    # Each rank keeps the AdamW moments of its own share of the parameters and updates that
    # share; the new values are broadcast after the step. Checkpoints hold the consolidated
    # state (ALBEFCheckpointer.save gathers it on rank 0), so a run resumes with or without it.
    groups = [g for g in groups if g["params"]]
    return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, **kwargs)


def build_lr_scheduler(cfg: DictConfig) -> ParamScheduler:
    """Linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup_iters``, then cosine to ``min_lr`` (per iteration)."""
    t = cfg.train
    w = max(t.warmup_iters, 0) / max(t.max_iter, 1)
    cosine = CosineParamScheduler(t.lr, t.min_lr)
    if w <= 0:
        return cosine
    if w >= 1:  # the run ends inside the warm-up: follow the same ramp and stop part-way
        return LinearParamScheduler(t.warmup_lr, t.warmup_lr + (t.lr - t.warmup_lr) / w)
    warm = LinearParamScheduler(t.warmup_lr, t.lr)
    return CompositeParamScheduler([warm, cosine], lengths=[w, 1 - w], interval_scaling=["rescaled", "rescaled"])


def _default_objectives(cfg: DictConfig) -> bool:
    objs = {k: v for k, v in cfg.model.objectives.items() if v is not None}
    names = {k: v.name for k, v in objs.items()}
    return names == {"itc": "ITCLoss", "itm": "ITMLoss", "mlm": "MLMLoss"}


@TRAINER_REGISTRY.register()
class DefaultTrainer:
    """Builds everything a run needs from ``cfg`` and runs it: pretraining or any task.

    ``eval_only``: build the model and the evaluation splits only; the training data (and
    its files) are not needed, e.g. to evaluate a released checkpoint.
    """

    def __init__(self, cfg: DictConfig, eval_only: bool = False):
        self.cfg = cfg
        os.makedirs(cfg.output_dir, exist_ok=True)
        self.device = resolve_device(cfg)
        self.amp = resolve_amp(cfg, self.device)
        self.prepare_data(cfg)
        self.tokenizer = self.build_tokenizer(cfg)
        if comm.is_main_process() and not eval_only:
            # the checkpoints of this directory then load with nothing else (albef.load looks here
            # when the config's data.tokenizer has moved)
            self.tokenizer.save_pretrained(os.path.join(cfg.output_dir, "tokenizer"))
        self.eval_only = eval_only
        self.train_set = None if eval_only else self.build_train_dataset(cfg)
        seed_all(cfg.train.seed)  # identical initial weights on every rank
        self.model = self.build_model(cfg, self.tokenizer).to(self.device)
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        logger.info("Model: %.2fM trainable parameters; device %s; bf16 autocast %s", n_train / 1e6, self.device, "on" if self.amp else "off")
        self.evaluators = self.build_evaluators()
        self.optimizer = self.build_optimizer(cfg, self.model)
        self.checkpointer = ALBEFCheckpointer(self.model, cfg.output_dir, optimizer=self.optimizer)
        seed_all(cfg.train.seed + comm.get_rank())
        self.start_iter = 0
        self.grad_accum_steps = int(cfg.train.grad_accum_steps)
        if self.grad_accum_steps < 1:
            raise ValueError(f"train.grad_accum_steps must be >= 1, got {cfg.train.grad_accum_steps!r}")
        # pairs per optimizer step over all processes (the micro-batches of an accumulated step)
        self.global_batch = cfg.train.batch_size * self.grad_accum_steps * comm.get_world_size()
        self.loader_state: list | None = None  # every rank's streaming-loader position, from --resume
        self.trainer_state: list | None = None  # every rank's SimpleTrainer.state_dict(), from --resume
        ramp = cfg.train.alpha_warmup_iters
        if ramp is not None:
            self.alpha_ramp_iters = int(ramp)
        elif self.train_set is None:
            self.alpha_ramp_iters = 0
        elif epoch_size(self.train_set) is not None:  # one epoch
            self.alpha_ramp_iters = math.ceil(epoch_size(self.train_set) / self.global_batch)
        else:
            raise ValueError("train.alpha_warmup_iters must be set: the training set does not know its size "
                             "(a streaming dataset without an index), so the ramp cannot be one epoch")

    # ------------------------------------------------------------------ builders (override in a task's trainer)
    @classmethod
    def prepare_data(cls, cfg: DictConfig) -> None:
        """Generate built-in synthetic data when the config asks for it."""
        data_build.prepare_synthetic(cfg)

    @classmethod
    def build_tokenizer(cls, cfg: DictConfig):
        return build_tokenizer(cfg.data.tokenizer)

    @classmethod
    def build_model(cls, cfg: DictConfig, tokenizer: Any) -> torch.nn.Module:
        return build_model(cfg, tokenizer)

    @classmethod
    def build_train_dataset(cls, cfg: DictConfig):
        return data_build.build_dataset(cfg, "train")

    @classmethod
    def build_test_dataset(cls, cfg: DictConfig, split: str):
        """The dataset of ``data.<split>`` (val or test), or None when it is null."""
        return data_build.build_dataset(cfg, split)

    @classmethod
    def build_train_loader(cls, cfg: DictConfig, dataset, tokenizer, start_iter: int = 0):
        """The ``data.loader`` builder's loader (LOADER_REGISTRY) over ``dataset``, positioned
        after ``start_iter`` iterations."""
        return data_build.build_train_loader(cfg, dataset, tokenizer, start_iter=start_iter)

    @classmethod
    def build_test_loader(cls, cfg: DictConfig, dataset, tokenizer, batch_size: int):
        return data_build.build_test_loader(cfg, dataset, tokenizer, batch_size)

    @classmethod
    def build_evaluator(cls, cfg: DictConfig, key: str, dataset, tokenizer, device: torch.device, amp: bool) -> Evaluator:
        """The evaluator ``eval.<key>`` over ``dataset``."""
        node = OmegaConf.to_container(cfg.eval[key], resolve=True)
        node.setdefault("prefix", key)
        return build_component(
            EVALUATOR_REGISTRY, node, where=f"eval.{key}", dataset=dataset, tokenizer=tokenizer, device=device, amp=amp,
            output_dir=cfg.output_dir,
            tokenization=cfg.data.tokenization, loader_fn=lambda ds, bs: cls.build_test_loader(cfg, ds, tokenizer, bs),
        )

    @classmethod
    def build_optimizer(cls, cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: DictConfig) -> ParamScheduler:
        return build_lr_scheduler(cfg)

    def build_evaluators(self) -> dict[str, Evaluator]:
        """Every ``eval.<key>`` whose split exists, checked against the model before any training."""
        return self.build_evaluators_for(self.cfg, self.model, self.tokenizer, self.device, self.amp)

    @classmethod
    def build_evaluators_for(cls, cfg: DictConfig, model: torch.nn.Module, tokenizer: Any, device: torch.device, amp: bool) -> dict[str, Evaluator]:
        """:meth:`build_evaluators` for a model built outside a trainer (analysis scripts)."""
        out: dict[str, Evaluator] = {}
        datasets: dict[str, Any] = {}
        for key, node in (cfg.eval or {}).items():
            if node is None:
                continue
            split = node.get("split", "test")
            if split not in datasets:
                datasets[split] = cls.build_test_dataset(cfg, split)
            if datasets[split] is None:
                logger.info("eval.%s: data.%s is null, nothing to evaluate", key, split)
                continue
            ev = cls.build_evaluator(cfg, key, datasets[split], tokenizer, device, amp)
            ev.check(model)  # e.g. re-ranking without an ITM head: say so now, not after training
            out[key] = ev
        return out

    @property
    def test_set(self):
        """The dataset of the first evaluator (``data.test`` in the default configs)."""
        return next(iter(self.evaluators.values())).dataset if self.evaluators else None

    # ------------------------------------------------------------------ state
    def resume_or_load(self, resume: bool = True) -> int:
        """``--resume``: continue from the newest complete checkpoint of ``output_dir`` (model,
        optimizer, iteration, RNG, data position; a half-written or unreadable file is skipped
        with a warning, see :meth:`ALBEFCheckpointer.load_newest_complete`). Otherwise
        ``model.weights`` (if set) initialises the model."""
        found = self.checkpointer.load_newest_complete(checkpointables=["optimizer"]) if resume else None
        if found is not None:
            path, extra = found
            self.start_iter = int(extra.get("iteration", -1)) + 1
            self.loader_state = extra.get("loader_state")
            self.trainer_state = extra.get("trainer_state")
            rngs = extra.get("rng")
            if rngs and len(rngs) == comm.get_world_size():
                set_rng_state(rngs[comm.get_rank()])
            elif rngs:
                logger.warning("Checkpoint has RNG states for %d ranks, running %d: re-seeding", len(rngs), comm.get_world_size())
                seed_all(self.cfg.train.seed + comm.get_rank() + self.start_iter)
            logger.info("Resumed from %s at iteration %d", path, self.start_iter)
        elif resume:
            logger.info("--resume: no checkpoint in %s, starting from scratch", self.cfg.output_dir)
            self._load_weights()
        else:
            self._load_weights()
        return self.start_iter

    def _load_weights(self) -> None:
        """``model.weights``: a checkpoint of this or another task (ours, ``.safetensors`` or an
        official ALBEF file), fitted to this model with its report logged
        (:meth:`ALBEFCheckpointer.load_weights`). Strict unless ``model.weights_strict=false``."""
        w = self.cfg.model.weights
        if w:
            self.checkpointer.load_weights(w, strict=bool(self.cfg.model.weights_strict))
            logger.info("Initialised the model from %s", w)

    def checkpoint_extra(self, iteration: int) -> dict[str, Any]:
        """Saved beside model/optimizer/iteration/rng: the config, the samples consumed so far and,
        for a loader with a position of its own (streaming shards), every rank's position
        (collective: every rank calls it)."""
        extra = {
            "config": OmegaConf.to_yaml(OmegaConf.create(config_to_dict(self.cfg))),
            "data_position": (iteration + 1) * self.global_batch,
        }
        loader = getattr(self, "train_loader", None)
        if loader is not None and hasattr(loader, "state_dict"):
            extra["loader_state"] = comm.all_gather_object(loader.state_dict())
        return extra

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Run every evaluator; a flat ``{<prefix>/<metric>: value}`` dict (also printed as a table)."""
        if not self.evaluators:
            logger.info("No evaluation: no evaluator has data (eval.* with data.<split> set)")
            return {}
        model = H.unwrap(self.model)
        results: dict[str, float] = {}
        for key, ev in self.evaluators.items():
            res = ev.evaluate(model)
            results.update(res)
            if comm.is_main_process():
                logger.info("eval.%s: %s:\n%s", key, ev.describe(), format_metrics_table(res))
        return results

    # ------------------------------------------------------------------ training
    def build_hooks(self) -> list[H.HookBase]:
        cfg = self.cfg
        out = cfg.output_dir
        writers = []
        if comm.is_main_process():
            writers = [CommonMetricPrinter(cfg.train.max_iter), JSONWriter(os.path.join(out, "metrics.json"), truncate=self.start_iter == 0), TensorboardWriter(out)]
        best = None
        if cfg.train.best_metric:
            best = H.BestCheckpointer(self.checkpointer, cfg.train.best_metric, cfg.train.best_metric_mode)
        return [
            H.IterationTimer(),
            H.LRScheduler(self.build_lr_scheduler(cfg)),
            H.AlphaRamp(self.alpha_ramp_iters),
            H.PeriodicCheckpointer(self.checkpointer, cfg.train.checkpoint_period, cfg.train.max_to_keep, self.checkpoint_extra,
                                   minutes=cfg.train.checkpoint_minutes, signals=H.PreemptionSignals(cfg.train.preemption_signals or [])),
            H.EvalHook(cfg.train.eval_period, self.evaluate, on_results=[best] if best else []) if self.evaluators else None,
            H.PeriodicWriter(writers, cfg.train.log_period),
        ]

    def build_trainer(self, loader) -> SimpleTrainer:
        """The step runner over ``loader`` with this run's hooks registered: what
        :meth:`train` runs, and what ``tools/benchmark.py`` times (same step, same hooks). A
        :class:`SimpleTrainer`, or an :class:`AccumulatingTrainer` for ``train.grad_accum_steps`` > 1."""
        cfg = self.cfg
        model = self.model
        if comm.get_world_size() > 1:
            fup = cfg.train.find_unused_parameters
            fup = (not _default_objectives(cfg)) if fup == "auto" else bool(fup)
            model = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False, find_unused_parameters=fup,
            )
        compile_kwargs = None
        if runtime.compile_enabled(cfg):
            compile_kwargs = {"backend": cfg.train.compile_backend, "mode": cfg.train.compile_mode}
            logger.info("train.compile: the training forward and backward are compiled (%s)", compile_kwargs)
        kwargs = dict(device=self.device, amp=self.amp, clip_grad=cfg.train.clip_grad, global_batch=self.global_batch,
                      compile=compile_kwargs, nonfinite=cfg.train.nonfinite)
        if self.grad_accum_steps > 1:
            trainer = AccumulatingTrainer(model, loader, self.optimizer, grad_accum_steps=self.grad_accum_steps, **kwargs)
        else:
            trainer = SimpleTrainer(model, loader, self.optimizer, **kwargs)
        trainer.register_hooks(self.build_hooks())
        return trainer

    def train(self) -> dict[str, float] | None:
        cfg = self.cfg
        if self.train_set is None:
            raise RuntimeError("this trainer was built with eval_only=True: it has no training data")
        loader = self.build_train_loader(cfg, self.train_set, self.tokenizer, start_iter=self.start_iter)
        if self.start_iter > 0 and hasattr(loader, "load_state_dict"):
            states = self.loader_state
            ok = isinstance(states, list) and len(states) == comm.get_world_size()
            loader.load_state_dict(states[comm.get_rank()] if ok else None, start_iter=self.start_iter)
        self.train_loader = loader
        trainer = self.build_trainer(loader)
        if self.start_iter > 0 and self.trainer_state:  # counts of the resumed run (skipped steps and samples)
            states = self.trainer_state
            trainer.load_state_dict(states[comm.get_rank()] if len(states) == comm.get_world_size() else states[0])
        try:
            trainer.train(self.start_iter, cfg.train.max_iter)
        finally:
            for h in trainer.hooks:
                if isinstance(h, H.PeriodicCheckpointer):
                    h.restore_signals()
        ev = [h for h in trainer.hooks if isinstance(h, H.EvalHook)]
        return ev[0].latest if ev else None


Trainer = DefaultTrainer  # the name of earlier releases


def trainer_class(cfg: DictConfig) -> type[DefaultTrainer]:
    """The trainer named by ``train.trainer`` (TRAINER_REGISTRY)."""
    cls = get_component(TRAINER_REGISTRY, cfg.train.trainer, where="train.trainer")
    if not (isinstance(cls, type) and issubclass(cls, DefaultTrainer)):
        raise ValueError(f"train.trainer: {cfg.train.trainer} is not a subclass of albef.engine.DefaultTrainer")
    return cls
