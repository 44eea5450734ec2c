"""Dataset, collator and loader builders from the ``data`` config node."""
from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

# The families the data is built from: importing them registers the built-ins, and
# albef.plugins discovers the installed plugins on the first lookup.
from albef import plugins  # noqa: F401
from albef.config import runtime
from albef.data import collate, compositional_negatives, datasets, loaders  # noqa: F401
from albef.data.files import DataError
from albef.data.samplers import InfiniteSampler
from albef.registry import COLLATOR_REGISTRY, DATASET_REGISTRY, LOADER_REGISTRY, TEXT_NEGATIVES_REGISTRY, ComponentError, build_component
from albef.utils import comm

logger = logging.getLogger("albef.data")

SPLITS = ("train", "val", "test")


def prepare_synthetic(cfg: DictConfig) -> None:
    """Generate the built-in synthetic data set if ``data.synthetic`` is set and it is missing,
    and the data of a downstream task if ``data.synthetic_task`` names one."""
    node = cfg.data.synthetic
    if node is None:
        if cfg.data.get("synthetic_task") is not None:
            raise ComponentError("data.synthetic_task needs data.synthetic (the task data is made from the same world and vocabulary)")
        return
    from albef.data.synthetic.shapes import generate_synthetic
    from albef.registry import _accepted_kwargs

    kwargs = OmegaConf.to_container(node, resolve=True)
    noise_node = kwargs.pop("noise", None)
    accepted, _ = _accepted_kwargs(generate_synthetic)
    bad = [k for k in kwargs if k not in accepted]
    if bad:
        raise ComponentError(f"data.synthetic: unknown key(s) {bad}; valid keys: {', '.join(sorted(accepted | {'noise'}))}")
    from albef.data.synthetic.noise import NoiseError, parse_noise

    try:
        noise = parse_noise(noise_node)
    except NoiseError as e:
        raise ComponentError(str(e)) from e
    try:
        manifest = generate_synthetic(**kwargs)
    except ValueError as e:  # bad parameters, or a root generated with other ones
        raise DataError(f"data.synthetic: {e}") from e
    logger.info("Synthetic data at %s: %s", kwargs.get("root"), manifest.get("counts", {}))
    if noise is not None:
        _use_noisy_train_split(cfg, kwargs["root"], noise)
    task = cfg.data.get("synthetic_task")
    if task is not None:
        from albef.data.synthetic.tasks.generate import generate_task_data

        t_kwargs = OmegaConf.to_container(task, resolve=True)
        accepted, _ = _accepted_kwargs(generate_task_data)
        bad = [k for k in t_kwargs if k not in accepted or k == "root"]
        if bad:
            raise ComponentError(f"data.synthetic_task: unknown key(s) {bad}; valid keys: {', '.join(sorted(accepted - {'root'}))}")
        try:
            tm = generate_task_data(kwargs["root"], **t_kwargs)
        except ValueError as e:
            raise DataError(f"data.synthetic_task: {e}") from e
        logger.info("Synthetic %s data at %s/%s: %s", t_kwargs.get("task"), kwargs["root"], t_kwargs.get("task"), tm.get("counts", {}))


def _use_noisy_train_split(cfg: DictConfig, root: str, noise: dict) -> None:
    """Point ``data.train.ann_files`` from the clean ``<root>/pretrain.json`` to its noisy
    copy (written once by :func:`albef.data.synthetic.noise.make_noisy_pretrain`); the
    test split stays clean."""
    import os

    from albef.data.synthetic.noise import make_noisy_pretrain
    from albef.data.synthetic.shapes import synthetic_paths

    from albef.data.synthetic.noise import noise_key

    train = cfg.data.get("train")
    norm = lambda f: os.path.normpath(os.path.abspath(f))  # noqa: E731
    clean = norm(synthetic_paths(root)["pretrain"])
    noisy = norm(os.path.join(root, "noisy", noise_key(noise), "pretrain.json"))
    files = list(train.get("ann_files") or []) if train is not None else []
    hits = [i for i, f in enumerate(files) if norm(f) in (clean, noisy)]  # noisy: prepared already
    if not hits:
        raise ComponentError(
            f"data.synthetic.noise is set, but data.train.ann_files ({files}) does not read the synthetic training "
            f"file {synthetic_paths(root)['pretrain']}: the noise applies to that file only"
        )
    try:
        paths = make_noisy_pretrain(root, noise)
    except ValueError as e:
        raise DataError(f"data.synthetic.noise: {e}") from e
    for i in hits:
        files[i] = paths["pretrain"]
    train.ann_files = files
    logger.info("data.synthetic.noise %s: training on %s (what was corrupted: %s)", noise, paths["pretrain"], paths["corruptions"])


def _dataset_extra(cfg: DictConfig, split: str) -> dict[str, Any]:
    return dict(
        transforms=OmegaConf.to_container(cfg.data.transforms, resolve=True),
        max_words=cfg.data.max_words,
        strict=cfg.data.strict,
        image_ids=cfg.data.image_ids,
        seed=cfg.train.seed,
        is_train=split == "train",
    )


def build_dataset(cfg: DictConfig, split: str) -> Dataset | None:
    """The dataset of ``data.<split>`` (train, val or test), or None when that node is null."""
    if split not in SPLITS:
        raise ValueError(f"unknown data split {split!r}; one of {', '.join(SPLITS)}")
    node = cfg.data.get(split)
    if node is None:
        return None
    return build_component(DATASET_REGISTRY, node, where=f"data.{split}", **_dataset_extra(cfg, split))


def build_train_dataset(cfg: DictConfig):
    return build_dataset(cfg, "train")


def build_test_dataset(cfg: DictConfig):
    return build_dataset(cfg, "test")


def _base_dataset(dataset: Dataset) -> Dataset:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def build_text_negatives(cfg: DictConfig):
    """The ``data.text_negatives`` generator (extra false captions for training batches), or None."""
    if cfg.data.get("text_negatives") is None:
        users = [k for k, o in (cfg.model.get("objectives") or {}).items() if o is not None and o.get("text_negatives")]
        if users:
            logger.warning("model.objectives.%s.text_negatives is true but data.text_negatives is null: the batches carry no "
                           "false captions, so the option does nothing", users[0])
        return None
    return build_component(TEXT_NEGATIVES_REGISTRY, cfg.data.get("text_negatives"), where="data.text_negatives", seed=cfg.train.seed)


def build_collator(cfg: DictConfig, dataset: Dataset, tokenizer: Any, pad_to_max: bool = False, text_negatives: Any = None):
    """``data.collator`` for ``dataset``: it tokenises the dataset's ``text_field``
    (``pad_to_max``: every batch ``data.max_tokens`` long) and, given a ``text_negatives``
    generator (training only), the false captions it makes beside them."""
    base = _base_dataset(dataset)
    extra = {"text_negatives": text_negatives} if text_negatives is not None else {}
    if extra:
        from albef.registry import _accepted_kwargs, get_component

        accepted, var_kw = _accepted_kwargs(get_component(COLLATOR_REGISTRY, cfg.data.collator.name, "data.collator"))
        if "text_negatives" not in accepted and not var_kw:
            raise ComponentError(f"data.text_negatives is set but data.collator ({cfg.data.collator.name}) takes no text_negatives "
                                 "argument: use a collator built on ImageTextCollator, or set data.text_negatives=null")
    return build_component(
        COLLATOR_REGISTRY, cfg.data.collator, where="data.collator",
        tokenizer=tokenizer, max_tokens=cfg.data.max_tokens, tokenization=cfg.data.tokenization,
        text_field=getattr(base, "text_field", "caption"), with_image_ids=getattr(base, "has_image_ids", True),
        pad_to_max=pad_to_max, **extra,
    )


def build_train_sampler(cfg: DictConfig, dataset: Dataset, start_iter: int = 0):
    """The dataset's own sampler (``dataset.build_sampler(...)``) if it has one, else an
    :class:`InfiniteSampler` over ``len(dataset)``. Either way rank-sharded and resumable
    from ``start`` (position in the global stream)."""
    ws, rank = comm.get_world_size(), comm.get_rank()
    start = start_iter * cfg.train.batch_size * int(cfg.train.get("grad_accum_steps", 1) or 1) * ws
    if hasattr(dataset, "build_sampler"):
        return dataset.build_sampler(seed=cfg.train.seed, rank=rank, world_size=ws, start=start)
    return InfiniteSampler(len(dataset), seed=cfg.train.seed, rank=rank, world_size=ws, start=start)


def build_train_loader(cfg: DictConfig, dataset, tokenizer, start_iter: int = 0):
    """The training loader of ``data.loader`` (a LOADER_REGISTRY class, see
    :mod:`albef.data.loaders`; ``name: auto`` = the dataset's ``loader`` attribute, else
    MapStyleLoader) over ``dataset``, positioned after ``start_iter`` iterations.

    The pieces are made here and handed over as objects (detectron2's
    ``build_detection_train_loader``): the collator with the text negatives, the sampler
    (none for an ``IterableDataset``, which splits its own stream), and the settings of
    ``data`` and ``train``; the loader class receives those its constructor names, plus the
    ``data.loader`` keys (``pin_memory`` auto resolved for this machine)."""
    node = OmegaConf.to_container(cfg.data.loader, resolve=True) if cfg.data.get("loader") is not None else {}
    node = dict(node or {})
    if node.get("name", "auto") in (None, "auto"):
        node["name"] = getattr(_base_dataset(dataset), "loader", "MapStyleLoader")
    if "pin_memory" in node:
        node["pin_memory"] = runtime.pin_memory(cfg)
    sampler = None if isinstance(dataset, IterableDataset) else build_train_sampler(cfg, dataset, start_iter)
    collate_fn = build_collator(cfg, dataset, tokenizer, pad_to_max=runtime.pad_to_max(cfg), text_negatives=build_text_negatives(cfg))
    return build_component(
        LOADER_REGISTRY, node, where="data.loader",
        dataset=dataset, collate_fn=collate_fn, sampler=sampler, batch_size=int(cfg.train.batch_size),
        num_workers=int(cfg.data.num_workers), seed=int(cfg.train.seed), rank=comm.get_rank(), world_size=comm.get_world_size(),
        start_iter=int(start_iter),
    )


def build_test_loader(cfg: DictConfig, dataset, tokenizer, batch_size: int) -> DataLoader:
    """In-order batches of an evaluation dataset, collated by ``data.collator``."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=min(cfg.data.num_workers, 2),
        collate_fn=build_collator(cfg, dataset, tokenizer), generator=torch.Generator().manual_seed(0),
    )


def build_eval_image_loader(cfg: DictConfig, dataset, batch_size: int = 64) -> DataLoader:
    """Images of a retrieval split in order (every rank embeds every image; re-ranking is split across ranks)."""
    return build_test_loader(cfg, dataset, None, batch_size)
