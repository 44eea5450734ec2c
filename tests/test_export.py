"""ONNX export (albef.inference.export_onnx, tools/export.py): onnxruntime reproduces the eager model.

A tiny model (tests/configs/tiny.yaml, random weights, saved as tools/train_net.py saves a
checkpoint) is exported once per module; the checks run the files with onnxruntime at batch
sizes and text lengths other than the export's example and compare with the model's own
inference methods (not with the export module's internal check).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnxruntime as ort  # noqa: E402

import albef  # noqa: E402
from albef.inference import export_onnx as ex  # noqa: E402
from tests.conftest import REPO, TINY  # noqa: E402

TOL = 1e-4  # float32


@pytest.fixture(scope="module")
def tiny_checkpoint(synthetic_root, tmp_path_factory) -> str:
    """A checkpoint of the tiny model with its resolved config, as tools/train_net.py writes one."""
    from albef.config import load_config
    from albef.data.tokenization import build_tokenizer
    from albef.modeling import build_model

    cfg = load_config(TINY, [f"data.synthetic.root={synthetic_root}"])
    torch.manual_seed(0)
    model = build_model(cfg, build_tokenizer(os.path.join(synthetic_root, "vocab.txt")))
    path = tmp_path_factory.mktemp("tiny_ckpt") / "model_final.pth"
    torch.save({"model": model.state_dict(), "iteration": 0, "config": OmegaConf.to_yaml(cfg, resolve=True)}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    """(model, preprocess, export dir, ExportResult) of the tiny model, all three graphs."""
    model, pre = albef.load(tiny_checkpoint, device="cpu", dtype="float32")
    out = str(tmp_path_factory.mktemp("onnx"))
    return model, pre, out, ex.export_onnx(model, pre, out, source=tiny_checkpoint)


def _session(out: str, file: str) -> ort.InferenceSession:
    return ort.InferenceSession(os.path.join(out, file), providers=["CPUExecutionProvider"])


def _images(n: int, res: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, res, res, generator=torch.Generator().manual_seed(seed))


def _texts(pre, n: int):
    words = ["red circle", "a blue square left of a green triangle", "big", "a small yellow square above a red circle", "two"]
    return pre.text(words[:n])


@pytest.mark.parametrize("batch", [1, 3])
def test_encoders_match_eager_through_one_file_at_any_batch(exported, batch):
    model, pre, out, _ = exported
    img = _images(batch, pre.image_res, batch)
    txt = _texts(pre, batch)
    ref = model.extract_features(img, txt, mode="multimodal")

    image_feat, image_embeds = _session(out, ex.IMAGE_FILE).run(["image_feat", "image_embeds"], {"pixel_values": img.numpy()})
    text_feat, text_embeds = _session(out, ex.TEXT_FILE).run(
        ["text_feat", "text_embeds"], {"input_ids": txt.input_ids.numpy(), "attention_mask": txt.attention_mask.numpy()})
    assert image_feat.shape == tuple(ref.image_feat.shape) and text_embeds.shape == tuple(ref.text_embeds.shape)
    for got, want in [(image_feat, ref.image_feat), (image_embeds, ref.image_embeds), (text_feat, ref.text_feat), (text_embeds, ref.text_embeds)]:
        assert np.abs(got - want.numpy()).max() < TOL
    np.testing.assert_allclose(np.linalg.norm(image_feat, axis=1), 1.0, atol=1e-5)  # L2-normalised in the graph


def test_the_onnx_pipeline_gives_the_models_similarity_and_itm_probability(exported):
    model, pre, out, result = exported
    assert {g.name for g in result.graphs} == {"image_encoder", "text_encoder", "itm_scorer"} and not result.skipped
    img, txt = _images(2, pre.image_res, 7), _texts(pre, 4)  # 2 images x 4 texts: 8 pairs through the dynamic batch
    scores = model.match(img, txt)
    image_feat, image_embeds = _session(out, ex.IMAGE_FILE).run(None, {"pixel_values": img.numpy()})
    text_feat, text_embeds = _session(out, ex.TEXT_FILE).run(
        None, {"input_ids": txt.input_ids.numpy(), "attention_mask": txt.attention_mask.numpy()})
    assert np.abs(image_feat @ text_feat.T - scores.similarity.numpy()).max() < TOL
    i_idx, t_idx = np.repeat(np.arange(2), 4), np.tile(np.arange(4), 2)
    logit, prob = _session(out, ex.ITM_FILE).run(["itm_logit", "itm_probability"], {
        "text_embeds": text_embeds[t_idx], "attention_mask": txt.attention_mask.numpy()[t_idx], "image_embeds": image_embeds[i_idx]})
    assert prob.shape == (8,)
    assert np.abs(prob - scores.itm_probability.numpy().reshape(-1)).max() < TOL
    assert logit.shape == (8,) and ((prob > 0) & (prob < 1)).all()


def test_manifest_describes_the_files_and_the_preprocessing(exported):
    model, pre, out, result = exported
    with open(os.path.join(out, ex.MANIFEST_FILE)) as f:
        m = json.load(f)
    assert set(m["graphs"]) == {"image_encoder", "text_encoder", "itm_scorer"}
    for name, g in m["graphs"].items():
        assert os.path.getsize(os.path.join(out, g["file"])) == g["bytes"] > 0
        for per_batch in g["max_abs_diff"].values():
            assert all(0 <= v < TOL for v in per_batch.values())
        assert set(g["max_abs_diff"]) == {"batch_1", "batch_5"}
    img = m["graphs"]["image_encoder"]
    assert img["inputs"] == [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, pre.image_res, pre.image_res]}]
    assert [o["name"] for o in img["outputs"]] == ["image_feat", "image_embeds"]
    assert img["outputs"][0]["shape"] == ["batch", model.embed_dim]
    txt = m["graphs"]["text_encoder"]["inputs"]
    assert [(i["name"], i["dtype"]) for i in txt] == [("input_ids", "int64"), ("attention_mask", "int64")]
    assert txt[0]["shape"][0] == "batch" and isinstance(txt[0]["shape"][1], str)  # dynamic length
    p = m["preprocess"]
    assert (p["image_res"], p["mean"], p["std"], p["max_tokens"]) == (pre.image_res, pre.transform.mean, pre.transform.std, pre.max_tokens)
    assert m["temperature"] == pytest.approx(float(model.temp.detach()))
    from albef.data.tokenization import build_tokenizer

    tok = build_tokenizer(os.path.join(out, p["tokenizer"]))
    t = _texts(pre, 3)
    again = tok(t.texts, padding="longest", truncation=True, max_length=p["max_tokens"], return_tensors="pt", return_token_type_ids=False)
    assert torch.equal(again["input_ids"], t.input_ids)


def _docs_example() -> str:
    with open(os.path.join(REPO, "docs", "export.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    return next(b for b in blocks if "onnxruntime" in b)


def test_the_docs_example_runs_and_agrees_with_the_model(exported, synthetic_root, capsys):
    model, pre, out, _ = exported
    image = sorted(os.listdir(os.path.join(synthetic_root, "images", "test")))[0]
    image = os.path.join(synthetic_root, "images", "test", image)
    code = _docs_example()
    code = re.sub(r'^export_dir = .*$', f"export_dir = {out!r}", code, count=1, flags=re.M)
    code = re.sub(r'^image_path = .*$', f"image_path = {image!r}", code, count=1, flags=re.M)
    ns: dict = {}
    exec(compile(code, "docs/export.md", "exec"), ns)
    scores = model.match(pre.image(image), pre.text(ns["captions"]))
    assert np.abs(ns["similarity"] - scores.similarity.numpy()).max() < TOL
    assert np.abs(ns["itm_probability"] - scores.itm_probability.numpy()[0]).max() < TOL
    assert len(capsys.readouterr().out.strip().splitlines()) == len(ns["captions"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "export.py"), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_cli_exports_the_encoders_and_prints_the_differences(tiny_checkpoint, tmp_path):
    out = tmp_path / "cli"
    # the legacy exporter here (the module's export above is the default dynamo one): both are covered, and it is ~20x faster
    r = _cli("--model", tiny_checkpoint, "--format", "onnx", "--out", str(out), "--no-itm", "--exporter", "torchscript")
    assert r.returncode == 0, r.stderr[-2000:]
    for file in (ex.IMAGE_FILE, ex.TEXT_FILE):
        line = next(ln for ln in r.stdout.splitlines() if file in ln)
        diffs = [float(v) for v in re.findall(r"(?:feat|embeds) ([0-9.e+-]+)", line)]
        assert len(diffs) == 4 and max(diffs) < TOL, line  # 2 outputs x batch 1 and 5
    assert not (out / ex.ITM_FILE).exists() and (out / ex.MANIFEST_FILE).is_file()
    manifest = json.loads((out / ex.MANIFEST_FILE).read_text())
    assert set(manifest["graphs"]) == {"image_encoder", "text_encoder"} and manifest["exporter"] == "torch.onnx.export(dynamo=False)"


def test_cli_refuses_another_format_in_one_line(tmp_path):
    r = _cli("--model", "whatever.pth", "--format", "tensorrt", "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: --format 'tensorrt'") and "onnx" in r.stderr
    assert not (tmp_path / "x").exists()


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(ImportError, match=r"onnxruntime is not installed: pip install 'albef\[export\]'"):
        ex.require_onnx()
