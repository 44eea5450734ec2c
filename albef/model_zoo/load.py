"""``albef.load``: a trained model and its preprocessing in one call.

    model, preprocess = albef.load("output/synthetic/model_final.pth")   # ours: its config travels in the file
    model, preprocess = albef.load("albef-coco-retrieval")               # the paper's file, through the zoo
    model, preprocess = albef.load("hf-hub:org/repo")                     # a folder written by export_hub_folder

The model is built from the config that travels with the weights (a checkpoint written by
``tools/train_net.py``, the ``config.yaml`` of a Hub-layout folder), from ``config=``, or
from the zoo entry; official files without either get the paper config of their layout.
Weights go through the adaptation pass of ``model.weights`` (official layouts renamed,
every key accounted for), strictly: a checkpoint of another architecture is an error that
names the file and the keys.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

import torch

from albef.checkpoint.checkpointer import ALBEFCheckpointer, CheckpointMismatchError, read_checkpoint_file
from albef.checkpoint.detect import detect_official_task, is_official_state_dict
from albef.config import load_config
from albef.data.datasets.nlvr2 import NLVR2JSON
from albef.data.datasets.visual_entailment import VisualEntailmentJSON
from albef.data.preprocess import Preprocess
from albef.data.tokenization import TokenizerError, build_tokenizer
from albef.model_zoo.zoo import ModelZooError, ZooEntry, resolve
from albef.modeling.build import build_model

logger = logging.getLogger("albef.model_zoo")

#: the paper config of each official layout (official files loaded by path, without a config)
OFFICIAL_LAYOUT_CONFIGS = {
    "pretrain": "albef://pretrain/ALBEF-14M.yaml",
    "retrieval": "albef://retrieval/coco.yaml",
    "vqa": "albef://vqa/vqav2.yaml",
    "ve": "albef://ve/snli_ve.yaml",
    "nlvr": "albef://nlvr/nlvr2.yaml",
    "nlvr_ta": "albef://nlvr/ta_pretrain.yaml",
}

#: the head each ``task`` needs
TASK_HEADS = {"pretrain": "itm", "retrieval": "itm", "grounding": "itm", "vqa": "answer", "ve": "cls", "nlvr": "cls", "nlvr_ta": "ta"}

#: class names of the classifier heads, by task: the datasets' own label order
CLASS_NAMES = {"ve": VisualEntailmentJSON.class_names, "nlvr": NLVR2JSON.class_names}

HUB_WEIGHTS = "model.safetensors"
HUB_CONFIG = "config.yaml"


def _dtype(dtype: Any, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if str(dtype) not in names:
        raise ValueError(f"dtype must be one of {sorted(names)} or a torch.dtype, got {dtype!r}")
    return names[str(dtype)]


def _weights_of(path: str) -> tuple[str, str | None]:
    """(weight file, config.yaml beside it or None) of a file or a folder."""
    if os.path.isfile(path):
        side = os.path.join(os.path.dirname(path), HUB_CONFIG)
        return path, side if path.endswith(".safetensors") and os.path.isfile(side) else None
    for name in (HUB_WEIGHTS, "model_final.pth"):
        f = os.path.join(path, name)
        if os.path.isfile(f):
            cfg = os.path.join(path, HUB_CONFIG)
            return f, cfg if os.path.isfile(cfg) else None
    raise ModelZooError(f"{path}: a model folder holds {HUB_WEIGHTS} + {HUB_CONFIG} (albef.export_hub_folder) or "
                        f"model_final.pth (a training output directory); found neither")


def _tokenizer(cfg, weights: str, tokenizer: Any):
    """``tokenizer`` (an object or a name/path), else ``data.tokenizer``; a local vocabulary that
    moved is looked for beside the weights (``vocab.txt``, ``tokenizer/``)."""
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    here = os.path.dirname(os.path.abspath(weights))
    if tokenizer is None and os.path.isfile(os.path.join(here, HUB_CONFIG)) and os.path.isdir(os.path.join(here, "tokenizer")):
        return build_tokenizer(os.path.join(here, "tokenizer"))  # a Hub-layout folder carries its own
    name = os.fspath(tokenizer) if tokenizer is not None else str(cfg.data.tokenizer)
    try:
        return build_tokenizer(name)
    except TokenizerError as first:
        real = os.path.dirname(os.path.realpath(weights))  # beside a linked checkpoint's target too
        for d in dict.fromkeys((here, real)):
            for cand in (os.path.join(d, "tokenizer"), os.path.join(d, "vocab.txt")):
                if os.path.exists(cand):
                    return build_tokenizer(cand)
        raise TokenizerError(f"{first} (the checkpoint {weights} names data.tokenizer={name}; pass albef.load(..., tokenizer=PATH) "
                             f"if it moved)") from first


def _config(weights: str, side_config: str | None, entry: ZooEntry | None, config: str | None, overrides: Sequence[str], ckpt: dict):
    extra = list(overrides)
    if config is not None:
        return load_config(config, extra), config
    text = ckpt.get("config")
    if isinstance(text, str) and text.strip():
        return load_config(weights, extra, text=text), f"{weights} (its config)"
    if side_config:
        return load_config(side_config, extra), side_config
    if entry is not None and entry.config:
        return load_config(entry.config, extra), f"{entry.config} (zoo entry {entry.name!r})"
    sd = ckpt["model"]
    if is_official_state_dict(sd):
        layout = detect_official_task(sd)
        path = OFFICIAL_LAYOUT_CONFIGS[layout]
        logger.info("%s: an official %s file; building %s", weights, layout, path)
        return load_config(path, extra), f"{path} (official {layout} layout)"
    raise ModelZooError(f"{weights}: the file carries no config; pass albef.load(..., config=CONFIG_FILE)")


def load(name: str | os.PathLike, task: str | None = None, device: str | torch.device | None = None, dtype: Any = None, *,
         config: str | None = None, overrides: Sequence[str] = (), tokenizer: Any = None, download: bool = True):
    """``(model, preprocess)``: the model in eval mode on ``device`` (default: CUDA if there is
    one), and its :class:`~albef.data.preprocess.Preprocess`.

    Args:
        name: a checkpoint file (ours or official), a folder (Hub layout or a training output
            directory), ``hf-hub:org/repo``, a zoo name (``albef.model_zoo.zoo.entries()``) or a URL.
        task: ``pretrain``, ``retrieval``, ``grounding``, ``vqa``, ``ve``, ``nlvr`` or ``nlvr_ta``:
            the model must have that task's head (an error otherwise).
        dtype: autocast dtype of the inference methods: default bf16 on a CUDA device that has
            it, float32 otherwise.
        config, overrides: build from this config (and overrides) instead of the one that
            travels with the weights.
        tokenizer: a tokenizer object or a name/path, instead of the config's ``data.tokenizer``.
        download: allow downloading a zoo file that is not in the cache.
    """
    if task is not None and task not in TASK_HEADS:
        raise ValueError(f"task must be one of {sorted(TASK_HEADS)}, got {task!r}")
    res = resolve(name, download=download)
    weights, side = _weights_of(res.path)
    ckpt = read_checkpoint_file(weights)
    cfg, source = _config(weights, side, res.entry, config, overrides, ckpt)
    del ckpt  # load_weights reads the file again: do not hold two copies
    tok = _tokenizer(cfg, weights, tokenizer)
    try:
        model = build_model(cfg, tok, public_init=False)
    except Exception as e:
        raise ModelZooError(f"{weights}: the model of {source} cannot be built ({type(e).__name__}: {e})") from e
    try:
        ALBEFCheckpointer(model).load_weights(weights, strict=True)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"{weights} does not fit the model of {source} (albef.load loads strictly: give the "
                                      f"config the checkpoint was trained with, config=...):\n{e}") from e
    if task is not None and not model.has_head(TASK_HEADS[task]):
        raise ModelZooError(f"{weights}: task={task!r} needs the head model.heads.{TASK_HEADS[task]}; this model has "
                            f"{sorted(model.heads) or 'no heads'} (built from {source})")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    model.inference_dtype = _dtype(dtype, device)
    model.config = cfg
    model.source = source
    model.weights_path = os.path.abspath(weights)  # what albef.load(...) of this model again needs (indexes record it)
    if "cls" in model.heads:
        n = getattr(model.heads["cls"], "num_classes", None)
        for names in CLASS_NAMES.values():
            if n == len(names) and getattr(model.heads["cls"], "class_names", None) is None:
                model.heads["cls"].class_names = names
    pre = Preprocess.from_config(cfg, tok)
    pre.answer_list = _answer_list(cfg, weights)
    return model, pre


def _answer_list(cfg, weights: str) -> list[str] | None:
    """The VQA candidate answers of the config's test split (or ``answer_list.json`` beside the weights), if any."""
    cands = []
    for split in ("test", "val"):
        node = cfg.data.get(split)
        if node is not None and node.get("answer_list"):
            cands.append(str(node.get("answer_list")))
    cands.append(os.path.join(os.path.dirname(os.path.abspath(weights)), "answer_list.json"))
    for path in cands:
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if isinstance(data, list) and all(isinstance(a, str) for a in data):
                return data
    return None
