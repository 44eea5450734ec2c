"""Dataset and loader builders from the ``data`` config node."""
from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from albef.data.datasets.base import DataError
from albef.data.samplers import InfiniteSampler
from albef.data.tokenization import PretrainCollator, eval_image_collate
from albef.registry import DATASET_REGISTRY, build_component
from albef.utils import comm

logger = logging.getLogger("albef.data")


def prepare_synthetic(cfg: DictConfig) -> None:
    """Generate the built-in synthetic data set if ``data.synthetic`` is set and it is missing."""
    node = cfg.data.synthetic
    if node is None:
        return
    from albef.data.synthetic.shapes import generate_synthetic
    from albef.registry import _accepted_kwargs, ComponentError

    kwargs = OmegaConf.to_container(node, resolve=True)
    accepted, _ = _accepted_kwargs(generate_synthetic)
    bad = [k for k in kwargs if k not in accepted]
    if bad:
        raise ComponentError(f"data.synthetic: unknown key(s) {bad}; valid keys: {', '.join(sorted(accepted))}")
    try:
        manifest = generate_synthetic(**kwargs)
    except ValueError as e:  # bad parameters, or a root generated with other ones
        raise DataError(f"data.synthetic: {e}") from e
    logger.info("Synthetic data at %s: %s", kwargs.get("root"), manifest.get("counts", {}))


def _dataset_extra(cfg: DictConfig) -> dict[str, Any]:
    return dict(
        transforms=OmegaConf.to_container(cfg.data.transforms, resolve=True),
        max_words=cfg.data.max_words,
        strict=cfg.data.strict,
        image_ids=cfg.data.image_ids,
        seed=cfg.train.seed,
    )


def build_train_dataset(cfg: DictConfig):
    return build_component(DATASET_REGISTRY, cfg.data.train, where="data.train", **_dataset_extra(cfg))


def build_test_dataset(cfg: DictConfig):
    if cfg.data.test is None:
        return None
    return build_component(DATASET_REGISTRY, cfg.data.test, where="data.test", **_dataset_extra(cfg))


def build_train_loader(cfg: DictConfig, dataset, tokenizer, start_iter: int = 0) -> DataLoader:
    ws, rank = comm.get_world_size(), comm.get_rank()
    b = cfg.train.batch_size
    sampler = InfiniteSampler(len(dataset), seed=cfg.train.seed, rank=rank, world_size=ws, start=start_iter * b * ws)
    nw = cfg.data.num_workers
    return DataLoader(
        dataset,
        batch_size=b,
        sampler=sampler,
        num_workers=nw,
        collate_fn=PretrainCollator(
            tokenizer, cfg.data.max_tokens, with_image_ids=getattr(dataset, "has_image_ids", False),
            tokenization=cfg.data.tokenization,
        ),
        pin_memory=False,
        drop_last=True,
        persistent_workers=False,
        prefetch_factor=4 if nw > 0 else None,
        # Its own generator: creating the iterator must not draw from the global RNG,
        # or a resumed run would diverge from an uninterrupted one.
        generator=torch.Generator().manual_seed(cfg.train.seed + rank),
    )


def build_eval_image_loader(cfg: DictConfig, dataset) -> DataLoader:
    # Every rank embeds every image (cheap next to re-ranking, which is split across ranks).
    return DataLoader(
        dataset, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=min(cfg.data.num_workers, 2),
        collate_fn=eval_image_collate, generator=torch.Generator().manual_seed(0),
    )
