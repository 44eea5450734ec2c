"""A checkpoint of ours as a folder in the Hugging Face Hub layout, loadable offline.

``export_hub_folder("output/synthetic/model_final.pth", "hub/albef-synthetic")`` writes

- ``model.safetensors``: the weights (online and EMA), no pickle;
- ``config.yaml``: the resolved config that builds the model;
- ``tokenizer/``: the tokenizer files, so the folder needs nothing outside it;
- ``answer_list.json``: the VQA candidates, when the config has them;
- ``README.md``: a model card (Hub front matter, how to load, what it was trained on).

``albef.load(folder)`` loads it back; uploaded (``huggingface-cli upload org/repo folder``)
it is ``albef.load("hf-hub:org/repo")``.
"""
from __future__ import annotations

import json
import os
import shutil

from omegaconf import OmegaConf

from albef.checkpoint.checkpointer import read_checkpoint_file, write_safetensors
from albef.model_zoo.load import HUB_CONFIG, HUB_WEIGHTS, _answer_list, _tokenizer
from albef.model_zoo.zoo import ModelZooError, sha256_of

CARD = """---
library_name: albef
tags:
- vision-language
- albef
- image-text-retrieval
---
# {name}

ALBEF (Align before Fuse) weights exported by `albef.model_zoo.hub.export_hub_folder` from `{source}`
(iteration {iteration}).

```python
import albef
model, preprocess = albef.load("{load_name}")
```

- heads: {heads}
- image resolution: {res}; text length: {max_tokens} tokens ({tokenization} tokenization)
- `model.safetensors` sha256: `{sha}`

The resolved training config is `config.yaml`; the tokenizer is in `tokenizer/`.
"""


def export_hub_folder(checkpoint: str, out_dir: str, name: str | None = None, repo_id: str | None = None) -> str:
    """Write ``checkpoint`` (ours, written by ``tools/train_net.py``) as a Hub-layout folder ``out_dir``.
    Returns the sha256 of ``model.safetensors``."""
    from albef.config import load_config

    ckpt = read_checkpoint_file(checkpoint)
    text = ckpt.get("config")
    if not isinstance(text, str) or not text.strip():
        raise ModelZooError(f"{checkpoint}: carries no config (only checkpoints written by tools/train_net.py can be exported)")
    cfg = load_config(checkpoint, text=text)
    tok = _tokenizer(cfg, checkpoint, None)
    os.makedirs(out_dir, exist_ok=True)
    write_safetensors(ckpt["model"], os.path.join(out_dir, HUB_WEIGHTS), metadata={"format": "pt", "albef": "1"})
    tok_dir = os.path.join(out_dir, "tokenizer")
    if os.path.isdir(tok_dir):
        shutil.rmtree(tok_dir)
    tok.save_pretrained(tok_dir)
    answers = _answer_list(cfg, checkpoint)
    if answers is not None:
        with open(os.path.join(out_dir, "answer_list.json"), "w", encoding="utf-8") as f:
            json.dump(answers, f)
    with open(os.path.join(out_dir, HUB_CONFIG), "w", encoding="utf-8") as f:
        f.write(OmegaConf.to_yaml(cfg, resolve=True))
    sha = sha256_of(os.path.join(out_dir, HUB_WEIGHTS))
    heads = sorted((cfg.model.get("heads") or {}).keys())
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(CARD.format(
            name=name or os.path.basename(os.path.abspath(out_dir)), source=os.path.basename(checkpoint), iteration=ckpt.get("iteration", "?"),
            load_name=f"hf-hub:{repo_id}" if repo_id else out_dir, heads=", ".join(heads) or "none",
            res=cfg.data.transforms.image_res, max_tokens=cfg.data.max_tokens, tokenization=cfg.data.tokenization, sha=sha,
        ))
    return sha
