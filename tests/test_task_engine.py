"""The task layer's engine side: evaluators (accuracy against hand counts, the table, model_best),
every task through the real command line, zero-shot evaluation of a pretraining checkpoint,
trainers chosen by config, and the packaged configs a plugin can inherit."""
from __future__ import annotations


import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import REPO, TINY, run_cli
from albef.evaluation.base import format_metrics_table, shard_indices
from albef.evaluation.classification import ClassificationEvaluator


# its tests share module fixtures (a trained model, generated data): one xdist worker builds them once
pytestmark = pytest.mark.xdist_group("task_engine")


def read_metrics(path: str) -> dict:
    rows: dict = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            rows.setdefault(r["iteration"], {}).update(r)
    return rows


# --------------------------------------------------------------------------- evaluators
class _FakeClassifier(nn.Module):
    """The 'prediction' of each sample is carried by the batch: its 'image' holds the logits
    (the evaluator scores through the model's inference method ``classify_logits``)."""

    def classify_logits(self, image, text, head="cls"):
        assert head == "cls" and text.input_ids.shape[0] == image.shape[0]
        return image

    def has_head(self, key):
        return key == "cls"

    def head(self, key, teacher=False):
        return nn.Identity()


def test_classification_evaluator_counts_against_hand_values():
    labels = [0, 1, 2, 2, 1, 0, 2]
    preds = [0, 2, 2, 1, 1, 1, 2]  # correct: 0, 2, 4, 6 -> 4 of 7; per class: c0 1/2, c1 1/2, c2 2/3
    data = [{"label": y, "logits": torch.nn.functional.one_hot(torch.tensor(p), 3).float()} for y, p in zip(labels, preds)]

    def loader_fn(ds, bs):
        items = [ds[i] for i in range(len(ds))]
        for s in range(0, len(items), bs):
            chunk = items[s : s + bs]
            ids = torch.ones(len(chunk), 4, dtype=torch.long)
            yield {"label": torch.tensor([c["label"] for c in chunk]), "image": torch.stack([c["logits"] for c in chunk]),
                   "input_ids": ids, "attention_mask": ids}

    ev = ClassificationEvaluator(dataset=data, loader_fn=loader_fn, prefix="ve", batch_size=3, class_names=["c", "n", "e"])
    model = _FakeClassifier().train()
    res = ev.evaluate(model)
    assert model.training  # mode restored
    assert res["ve/acc"] == pytest.approx(100 * 4 / 7)
    assert res["ve/acc_c"] == pytest.approx(50.0) and res["ve/acc_n"] == pytest.approx(50.0) and res["ve/acc_e"] == pytest.approx(200 / 3)
    table = format_metrics_table(res)
    assert table.splitlines()[2].startswith("| ve ") and "57.14" in table and "66.67" in table
    with pytest.raises(ValueError, match="no classification head model.heads.ans"):
        ClassificationEvaluator(dataset=data, loader_fn=loader_fn, prefix="x", head="ans").check(model)


def test_shards_cover_every_index_once():
    for n in (0, 1, 7, 10):
        for world in (1, 2, 3, 4):
            got = [i for r in range(world) for i in shard_indices(n, r, world)]
            assert got == list(range(n))


def test_best_checkpointer_keeps_the_best_value(tmp_path):
    from albef.checkpoint import ALBEFCheckpointer
    from albef.engine.hooks import BestCheckpointer

    m = nn.Linear(2, 2)
    ck = ALBEFCheckpointer(m, str(tmp_path))
    best = BestCheckpointer(ck, "ve_val/acc", "max")
    for it, acc in [(9, 50.0), (19, 70.0), (29, 60.0)]:
        with torch.no_grad():
            m.weight.fill_(it)
        best({"ve_val/acc": acc, "ve/acc": 0.0}, it)
    saved = torch.load(str(tmp_path / "model_best.pth"), weights_only=True)
    assert saved["iteration"] == 19 and saved["best_value"] == 70.0 and saved["best_metric"] == "ve_val/acc"
    assert (saved["model"]["weight"] == 19).all()
    low = BestCheckpointer(ck, "loss", "min")
    low({"loss": 2.0}, 1)
    low({"loss": 3.0}, 2)
    assert low.best == 2.0
    with pytest.raises(KeyError, match="train.best_metric='ve_val/acc' is not among .*ve/acc"):
        best({"ve/acc": 1.0}, 3)
    with pytest.raises(ValueError, match="max or min"):
        BestCheckpointer(ck, "x", "largest")


# --------------------------------------------------------------------------- every task through the CLI
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, synthetic_root):
    """The tiny default job's checkpoint (what `model.weights=output/synthetic/model_final.pth` is at full size)."""
    out = str(tmp_path_factory.mktemp("pretrain"))
    r = run_cli(["--config-file", TINY, f"data.synthetic.root={synthetic_root}", f"output_dir={out}", "train.max_iter=2", "data.test=null"])
    assert r.returncode == 0, r.stderr[-2000:]
    return os.path.join(out, "model_final.pth")


def _task_args(task, root, out, *extra):
    return ["--config-file", os.path.join(REPO, "tests", "configs", f"tiny_{task}.yaml"), f"data.synthetic.root={root}", f"output_dir={out}", *extra]


@pytest.mark.parametrize("task,metrics,best", [
    ("retrieval", ["retrieval/r_mean", "retrieval_itc/r_mean", "retrieval_val/r_mean", "retrieval_val_itc/txt_r1"], "retrieval_val/r_mean"),
    ("ve", ["ve/acc", "ve_val/acc", "ve/acc_neutral"], "ve_val/acc"),
    ("nlvr", ["nlvr/acc", "nlvr_val/acc", "nlvr/acc_true"], "nlvr_val/acc"),
    ("vqa", ["vqa/acc", "vqa_val/acc"], "vqa_val/acc"),
    ("grounding", ["grounding/acc", "grounding/val_acc", "grounding/test_acc", "grounding_itc/val_acc"], "grounding/val_acc"),
])
@pytest.mark.slow
def test_task_trains_and_evaluates_through_the_cli(task, metrics, best, pretrained, synthetic_root, tmp_path):
    out = str(tmp_path / task)
    r = run_cli(_task_args(task, synthetic_root, out, f"model.weights={pretrained}"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"| {metrics[0].split('/')[0]} " in r.stdout  # the metric table is printed
    m = read_metrics(os.path.join(out, "metrics.json"))
    assert f"loss_{task if task in ('nlvr', 've', 'vqa') else 'itc'}" in m[0]
    for it in (1, 4):  # after 2 iterations (eval_period 2) and at the end: val and test each time
        for k in metrics:
            assert 0.0 <= m[it][k] <= 100.0, (it, k)
    saved = torch.load(os.path.join(out, "model_best.pth"), weights_only=True)
    assert saved["best_metric"] == best and saved["best_value"] == max(m[1][best], m[4][best])
    log = open(os.path.join(out, "log.txt")).read()
    assert "Checkpoint conversion checkpoint -> model" in log and "complete" in log
    if task == "vqa":  # the official result file: one answer per test question
        with open(os.path.join(out, "vqa_result.json")) as f:
            result = json.load(f)
        with open(os.path.join(synthetic_root, "vqa", "test.json")) as f:
            questions = json.load(f)
        assert sorted(r["question_id"] for r in result) == sorted(q["question_id"] for q in questions)
        assert all(set(r) == {"question_id", "answer"} and isinstance(r["answer"], str) for r in result)


@pytest.mark.slow
def test_ta_step_then_nlvr_from_it(pretrained, synthetic_root, tmp_path):
    ta = str(tmp_path / "ta")
    r = run_cli(_task_args("ta", synthetic_root, ta, f"model.weights={pretrained}"))
    assert r.returncode == 0, r.stderr[-3000:]
    m = read_metrics(os.path.join(ta, "metrics.json"))
    assert "loss_ta" in m[0] and "dropped_ta_rows" in m[0]
    r = run_cli(_task_args("nlvr", synthetic_root, str(tmp_path / "nlvr"), f"model.weights={ta}/model_final.pth", "train.max_iter=2"))
    assert r.returncode == 0, r.stderr[-3000:]
    log = open(os.path.join(tmp_path, "nlvr", "log.txt")).read()
    assert "head 'ta' is not part of this model" in log and "head 'cls' is not in the checkpoint" in log

    # the per-sentence-form analysis of that run agrees with its evaluator on the whole split
    a = subprocess.run([sys.executable, os.path.join(REPO, "projects", "synthetic_tasks", "analyze_synthetic_nlvr.py"), "--output-dir", str(tmp_path / "nlvr")],
                       cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert a.returncode == 0, a.stderr[-3000:]
    m = read_metrics(os.path.join(tmp_path, "nlvr", "metrics.json"))
    acc = m[max(m)]["nlvr/acc"]  # the final model's test accuracy
    row = next(line for line in a.stdout.splitlines() if line.startswith("| all |"))
    assert abs(float(row.split("|")[4].strip().rstrip("%")) - acc) < 0.01, (row, acc)
    forms = [line for line in a.stdout.splitlines() if line.startswith("| ") and not line.startswith(("| form", "| all"))]
    assert sum(int(line.split("|")[5]) for line in forms) == 10  # num_test of tests/configs/tiny_nlvr.yaml


@pytest.mark.slow
def test_zero_shot_retrieval_of_a_pretraining_checkpoint(pretrained, synthetic_root, tmp_path):
    out = str(tmp_path / "zs")
    r = run_cli(["--eval-only", *_task_args("retrieval", synthetic_root, out, f"model.weights={pretrained}")])
    assert r.returncode == 0, r.stderr[-3000:]
    log = open(os.path.join(out, "log.txt")).read()
    assert "head 'mlm' is not part of this model" in log  # the pretraining-only MLM head, reported unused
    row = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))][-1]
    assert {"retrieval/r_mean", "retrieval_val/r_mean", "retrieval_itc/r_mean"} <= set(row)
    assert not os.path.exists(os.path.join(out, "model_final.pth"))  # nothing trained


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_is_an_error_naming_what(pretrained, synthetic_root, tmp_path):
    r = run_cli(_task_args("ve", synthetic_root, str(tmp_path / "x"), f"model.weights={pretrained}", "model.text_encoder.config.hidden_size=48"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "shape mismatch" in r.stderr and "model.weights_strict=false" in r.stderr


# --------------------------------------------------------------------------- trainers and configs by name
def test_trainer_is_chosen_by_config(tiny_cfg):
    from albef.engine import DefaultTrainer, trainer_class
    from albef.registry import TRAINER_REGISTRY, ComponentError

    class _MyTrainer(DefaultTrainer):
        @classmethod
        def build_lr_scheduler(cls, cfg):
            from fvcore.common.param_scheduler import ConstantParamScheduler

            return ConstantParamScheduler(0.5)

    TRAINER_REGISTRY.register(_MyTrainer)
    try:
        cfg = tiny_cfg("train.trainer=_MyTrainer", "data.test=null")
        cls = trainer_class(cfg)
        assert cls is _MyTrainer
        t = cls(cfg)
        t.train()
        m = read_metrics(os.path.join(cfg.output_dir, "metrics.json"))
        assert all(m[i]["lr"] == 0.5 for i in range(4))
    finally:
        TRAINER_REGISTRY.unregister("_MyTrainer")
    with pytest.raises(ComponentError, match="Unknown TRAINER component 'Nope' .*DefaultTrainer"):
        trainer_class(tiny_cfg("train.trainer=Nope"))


def test_a_plugin_config_inherits_the_shipped_configs(tmp_path):
    from albef.config import ConfigError, load_config
    from albef.config.paths import core_config_file

    p = tmp_path / "mine.yaml"
    p.write_text("_base_: albef://ve/synthetic.yaml\ntrain: {max_iter: 7}\n")
    cfg = load_config(str(p))
    assert cfg.train.max_iter == 7 and cfg.model.heads.cls.num_classes == 3 and cfg.model.vision_encoder.img_size == 64
    assert core_config_file("pretrain/synthetic.yaml") == os.path.join(REPO, "configs", "pretrain", "synthetic.yaml") or \
        os.path.samefile(core_config_file("pretrain/synthetic.yaml"), os.path.join(REPO, "configs", "pretrain", "synthetic.yaml"))
    p.write_text("_base_: albef://vqa/nothing.yaml\n")
    with pytest.raises(ConfigError, match="albef://vqa/nothing.yaml: no such config shipped with albef"):
        load_config(str(p))


def test_the_built_package_ships_the_configs(tmp_path):
    """A wheel (what a non-editable install unpacks) carries configs/ as albef/model_zoo/configs."""
    import zipfile

    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (f.startswith(("albef/", "configs/")) or f in ("setup.py", "README.md")) and os.path.isfile(os.path.join(REPO, f)):
            os.makedirs(os.path.dirname(src / f) or ".", exist_ok=True)
            shutil.copy(os.path.join(REPO, f), src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("albef-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for cfg in ("Base-ALBEF.yaml", "pretrain/synthetic.yaml", "ve/synthetic.yaml", "nlvr/nlvr2.yaml", "retrieval/coco.yaml"):
        assert f"albef/model_zoo/configs/{cfg}" in names, cfg
