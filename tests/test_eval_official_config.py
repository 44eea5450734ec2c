"""configs/eval/official-mscoco-retrieval.yaml, the README's recipe for evaluating the
released mscoco.pth, exercised end to end at toy scale: a checkpoint in the official
*retrieval* layout (BertModel text encoder, no MLM head, idx_queue, plus the non-weight
entries the official code saves) is evaluated with the config (sizes and data paths
overridden to the tiny synthetic set), and gives exactly the numbers of the same weights
loaded from our own checkpoint."""
from __future__ import annotations

import pytest

import json
import os

import torch

from conftest import REPO, TINY, run_cli
from albef.checkpoint.official import convert_ours_to_official

CONFIG = os.path.join(REPO, "configs", "eval", "official-mscoco-retrieval.yaml")


def toy_overrides(root: str) -> list[str]:
    """The tiny model of tests/configs/tiny.yaml and the synthetic test split, on top of CONFIG."""
    return [
        "model.embed_dim=16",
        "model.vision_encoder={name: TimmViT, model_name: vit_base_patch16_224, img_size: 32, model_kwargs: {patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}}",
        "model.text_encoder.num_layers=1",
        "model.text_encoder.config={hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, max_position_embeddings: 32}",
        "model.fusion.num_layers=1", "model.teacher.queue_size=24",
        f"data.tokenizer={root}/vocab.txt", f"data.test.ann_file={root}/test.json", f"data.test.image_root={root}",
        "data.num_workers=0", "eval.retrieval.k_test=4", "eval.retrieval.max_tokens=16", "eval.retrieval.batch_size=8",
    ]


@pytest.mark.slow
def test_official_retrieval_checkpoint_evaluates_with_the_readme_config(synthetic_root, tmp_path):
    out = str(tmp_path / "train")
    # A retrieval-shaped model of ours (ITC + ITM, no MLM), briefly trained.
    r = run_cli(["--config-file", TINY, f"data.synthetic.root={synthetic_root}", f"output_dir={out}", "train.max_iter=2", "model.objectives.mlm=null", "data.test=null"])
    assert r.returncode == 0, r.stderr[-3000:]
    ours = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]
    official, rep = convert_ours_to_official(ours, task="retrieval")
    assert rep.complete and "idx_queue" in official and not any(".cls." in k for k in official)
    assert any(k.startswith("text_encoder.embeddings.") for k in official)  # BertModel layout, no 'bert.'
    path = str(tmp_path / "mscoco.pth")
    # what Retrieval.py saves beside the weights (plain containers)
    torch.save({"model": official, "config": {"image_res": 32, "k_test": 4}, "epoch": 4, "optimizer": {"state": {}, "param_groups": []}}, path)

    results = {}
    for name, weights in (("official", path), ("ours", os.path.join(out, "model_final.pth"))):
        ev = str(tmp_path / f"eval_{name}")
        r = run_cli(["--eval-only", "--config-file", CONFIG, *toy_overrides(synthetic_root), f"model.weights={weights}", f"output_dir={ev}"])
        assert r.returncode == 0, r.stderr[-3000:]
        with open(os.path.join(ev, "metrics.json")) as f:
            results[name] = json.loads(f.readlines()[-1])
        log = open(os.path.join(ev, "log.txt")).read()
        if name == "official":
            assert "Checkpoint conversion official -> ours" in log and "-> complete" in log
    for k in ("retrieval/txt_r1", "retrieval/img_r1", "retrieval/r_mean", "retrieval_itc/r_mean"):
        assert results["official"][k] == results["ours"][k], k
