"""Official-checkpoint interop: the load report, other official layouts, position-embedding
interpolation, safe loading, ``model.weights`` with official / safetensors files, and the
conversion tool (in-process and as a subprocess)."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, official_meta_state

from albef.checkpoint import ALBEFCheckpointer, CheckpointFormatError, CheckpointMismatchError, read_checkpoint_file
from albef.checkpoint.detect import detect_official_task, is_official_state_dict
from albef.checkpoint.official import convert_official_to_ours, convert_ours_to_official
from albef.checkpoint.pos_embed import interpolate_pos_embed
from albef.checkpoint.report import format_report

# its tests share module fixtures (a trained model, generated data): one xdist worker builds them once
pytestmark = pytest.mark.xdist_group("official_checkpoint")


FIXTURE = os.path.join(REPO, "tests", "fixtures", "official_tiny")
OFFICIAL = os.path.join(FIXTURE, "albef_tiny_official.pth")
CONFIG = os.path.join(REPO, "tests", "configs", "official_tiny.yaml")
TOOL = os.path.join(REPO, "tools", "convert_albef_checkpoint.py")


def build_tiny(*overrides: str):
    from albef.config import load_config
    from albef.modeling import build_model

    torch.manual_seed(0)
    return build_model(load_config(CONFIG, list(overrides)))


@pytest.fixture(scope="module")
def official_sd():
    return torch.load(OFFICIAL, map_location="cpu", weights_only=True)["model"]


def retrieval_layout(official_sd: dict) -> dict:
    """The fixture as the official retrieval model would hold it: no ``bert.``, no MLM head, an ``idx_queue``."""
    out = {k.replace(".bert.", ".", 1): v for k, v in official_sd.items() if ".cls." not in k}
    out["idx_queue"] = torch.arange(64).view(1, 64)
    return out


# --------------------------------------------------------------------------- the report
def test_report_lists_missing_unexpected_and_mismatched_keys(official_sd):
    sd = dict(official_sd)
    del sd["itm_head.bias"]  # -> our ITM bias is missing
    sd["foo.bar"] = torch.zeros(3)  # no counterpart
    sd["vision_proj.weight"] = torch.zeros(31, 64)  # wrong shape
    m = build_tiny()
    before = m.state_dict()["vision_proj.weight"].clone()
    out, rep = convert_official_to_ours({"model": sd}, m, source="broken.pth")
    assert not rep.complete
    assert rep.missing == ["heads.itm.linear.bias"]
    assert rep.unexpected == ["foo.bar"]
    assert rep.mismatched == [("vision_proj.weight", "vision_proj.weight", (31, 64), (32, 64))]
    assert "vision_proj.weight" not in out and "heads.itm.linear.bias" not in out
    text = format_report(rep)
    for needle in ("broken.pth", "INCOMPLETE", "heads.itm.linear.bias", "foo.bar",
                   "vision_proj.weight -> vision_proj.weight: official [31, 64] vs ours [32, 64]",
                   "position-id buffer", "tied: the same tensor as cls.predictions.bias"):
        assert needle in text, needle
    d = rep.to_dict()
    assert d["missing"] == rep.missing and d["unexpected"] == ["foo.bar"] and d["complete"] is False
    assert d["mismatched"] == [["vision_proj.weight", "vision_proj.weight", [31, 64], [32, 64]]]
    m.load_state_dict(out, strict=False)
    assert torch.equal(m.state_dict()["vision_proj.weight"], before)


def test_retrieval_checkpoint_maps_encoders_and_idx_queue(official_sd):
    sd = retrieval_layout(official_sd)
    assert detect_official_task(sd) == "retrieval" and is_official_state_dict(sd)
    m = build_tiny()
    out, rep = convert_official_to_ours(sd, m)
    assert rep.task == "retrieval" and not rep.unexpected and not rep.mismatched
    assert torch.equal(out["teacher.queue.idx_queue"], torch.arange(64))
    assert torch.equal(out["fusion.layer.0.attention.self.query.weight"],
                       official_sd["text_encoder.bert.encoder.layer.2.attention.self.query.weight"])
    # no MLM head in a retrieval checkpoint: ours stays as it is (reported as a fresh head, its EMA
    # copy from it); the tied decoder follows the loaded word embeddings
    before = m.state_dict()
    mlm = [f"heads.mlm.{k}" for k in ("bias", "transform.dense.weight", "transform.dense.bias",
                                       "transform.LayerNorm.weight", "transform.LayerNorm.bias")]
    filled = dict(rep.filled)
    assert not rep.missing and rep.complete
    for k in mlm:
        assert filled[k].startswith("head 'mlm' is not in the checkpoint: initialised fresh") and torch.equal(out[k], before[k])
        assert filled["teacher.model." + k].startswith("no momentum copy in the checkpoint") and torch.equal(out["teacher.model." + k], before[k])
    assert torch.equal(out["heads.mlm.decoder.weight"], official_sd["text_encoder.bert.embeddings.word_embeddings.weight"])
    # ours -> official retrieval layout -> ours keeps what that layout holds
    m.load_state_dict(out, strict=False)
    back, rep_out = convert_ours_to_official(m, task="retrieval")
    assert "idx_queue" in back and back["idx_queue"].shape == (1, 64)
    assert "text_encoder.embeddings.word_embeddings.weight" in back and not any(".cls." in k for k in back)
    assert set(back) == set(sd) | {"text_encoder.embeddings.position_ids", "text_encoder_m.embeddings.position_ids"}
    assert [k for k, _ in rep_out.dropped] == [k for k in m.state_dict() if "heads.mlm." in k]
    assert all("has no MLM head" in why for _, why in rep_out.dropped)


def test_heads_this_model_lacks_are_dropped_with_reasons(official_sd):
    base = retrieval_layout(official_sd)
    vqa = {k: v for k, v in base.items() if not k.startswith(("vision_proj", "text_proj", "itm_head", "temp", "image_", "text_queue", "queue_ptr", "idx_"))}
    vqa["text_decoder.bert.encoder.layer.0.crossattention.self.key.weight"] = torch.zeros(48, 48)
    vqa["text_decoder.cls.predictions.bias"] = torch.zeros(1000)
    _, rep = convert_official_to_ours(vqa, build_tiny())
    assert rep.task == "vqa"
    reasons = dict(rep.dropped)
    assert reasons["text_decoder.cls.predictions.bias"] == ("VQA answer decoder (text_decoder): head 'answer' is not part of this model "
                                                            "(no objective of this task uses it)")
    assert "vision_proj.weight" in rep.missing and not rep.unexpected

    ve = dict(base)
    ve["cls_head.0.weight"], ve["cls_head.2.weight"] = torch.zeros(48, 48), torch.zeros(3, 48)
    _, rep = convert_official_to_ours(ve, build_tiny())
    assert rep.task == "ve" and "SNLI-VE classification head" in dict(rep.dropped)["cls_head.2.weight"]
    assert "is not part of this model" in dict(rep.dropped)["cls_head.0.weight"] and rep.complete

    # an NLVR2 file (its 2 fusion layers per pretrained one: here BERT layers 2-5) in a
    # one-image model with 2 fusion layers: the extra layers have no place, which is reported
    nlvr = dict(base)
    for k, v in base.items():
        m = re.match(r"^(text_encoder(?:_m)?)\.encoder\.layer\.([23])\.(.*)$", k)
        if m:
            nlvr[f"{m.group(1)}.encoder.layer.{int(m.group(2)) + 2}.{m.group(3)}"] = v.clone()
    nlvr["cls_head.0.weight"], nlvr["cls_head.2.weight"] = torch.zeros(48, 48), torch.zeros(2, 48)
    _, rep = convert_official_to_ours(nlvr, build_tiny())
    assert rep.task == "nlvr" and "NLVR2 classification head" in dict(rep.dropped)["cls_head.2.weight"]
    assert "text_encoder.encoder.layer.5.crossattention.self.key.weight" in rep.unexpected and not rep.complete
    assert any("6 layers with cross-attention from layer 2; this model has 2 text + 2 fusion layers" in w for w in rep.warnings)

    for task in ("nlvr", "ve", "nlvr_ta"):
        with pytest.raises(ValueError, match="this model does not have"):
            convert_ours_to_official(build_tiny(), task=task)
    with pytest.raises(ValueError, match="writing that layout is not supported"):  # read-only layout
        convert_ours_to_official(build_tiny(), task="vqa")


def test_no_teacher_model_drops_momentum_copies_and_writes_them_back(official_sd):
    m = build_tiny("model.teacher={name: NoTeacher}")
    out, rep = convert_official_to_ours(official_sd, m)
    assert rep.complete, format_report(rep)
    assert dict(rep.dropped)["visual_encoder_m.cls_token"].startswith("this model has no momentum teacher")
    assert dict(rep.dropped)["image_queue"].startswith("this model has no momentum teacher or queue")
    back, rep_out = convert_ours_to_official(out)
    assert rep_out.missing == ["image_queue", "text_queue", "queue_ptr"]
    assert torch.equal(back["text_encoder_m.bert.encoder.layer.3.output.dense.weight"],
                       official_sd["text_encoder.bert.encoder.layer.3.output.dense.weight"])


def test_queue_of_another_size_is_not_converted_with_its_pointer(official_sd):
    m = build_tiny("model.teacher.queue_size=32")
    fresh = m.state_dict()
    out, rep = convert_official_to_ours(official_sd, m)
    reasons = dict(rep.dropped)
    assert reasons["image_queue"].startswith("feature queue of another size [64, 32]") and "text_queue" in reasons
    assert reasons["queue_ptr"].startswith("its feature queues were not loaded")
    assert "queue_ptr" not in [s for s, _ in rep.mapped] and not rep.mismatched
    filled = dict(rep.filled)  # the model's own (fresh) queue, pointer and ids stay
    for k in ("teacher.queue.image_queue", "teacher.queue.ptr", "teacher.queue.idx_queue"):
        assert filled[k].startswith("fresh feature queue") and torch.equal(out[k], fresh[k])
    assert rep.complete


def test_architecture_mismatch_is_reported(official_sd):
    m = build_tiny("model.text_encoder.num_layers=1", "model.fusion.num_layers=3")
    _, rep = convert_official_to_ours(official_sd, m)
    assert any("4 layers with cross-attention from layer 2" in w for w in rep.warnings)
    assert not rep.complete


def _released_layout_on_meta() -> dict:
    """Every key of the released ALBEF.pth / ALBEF_4M.pth with its shape (no data: meta tensors)."""
    return official_meta_state("official_keys_base.txt")


@pytest.mark.parametrize("img_size", [256, 384])
def test_released_base_checkpoint_layout_maps_completely(img_size):
    """The 844 keys of the released base checkpoints against the ALBEF-4M model (ViT-B/16 + BERT-base)."""
    from albef.config import load_config
    from albef.modeling import build_model

    cfg = load_config(os.path.join(REPO, "configs", "pretrain", "ALBEF-4M.yaml"), [
        "model.text_encoder.config.vocab_size=30522", "model.vision_encoder.pretrained=null",
        "model.text_encoder.pretrained=null", f"model.vision_encoder.img_size={img_size}"])
    with torch.device("meta"):
        model = build_model(cfg)
    official = _released_layout_on_meta()
    assert len(official) == 844
    ours, rep = convert_official_to_ours({"model": official}, model)
    assert rep.complete and not rep.warnings, format_report(rep)
    # dropped: position_ids and the tied MLM decoder weight / bias (x2: online and momentum);
    # the decoder weights are filled from the word embeddings they are tied to
    assert len(rep.mapped) == 838 and len(rep.dropped) == 6
    assert sorted(t for t, _ in rep.filled) == ["heads.mlm.decoder.weight", "teacher.model.heads.mlm.decoder.weight",
                                               "teacher.queue.idx_queue"]  # the pretraining queue keeps no ids: -100
    assert ours["teacher.queue.image_queue"].shape == (65536, 256)
    assert ours["fusion.layer.5.crossattention.self.key.weight"].shape == (768, 768)
    if img_size == 384:  # fine-tuning resolution: 16 x 16 -> 24 x 24 patches
        assert [x[2] for x in rep.interpolated] == [(1, 577, 768), (1, 577, 768)]
    else:
        back, rep_out = convert_ours_to_official(ours)
        assert list(back) == list(official) and rep_out.complete
        assert all(back[k].shape == v.shape and back[k].dtype == v.dtype for k, v in official.items())
    # the same weights as a COCO/Flickr retrieval checkpoint (mscoco.pth layout)
    retrieval = {k.replace(".bert.", ".", 1): v for k, v in official.items() if ".cls." not in k}
    retrieval["idx_queue"] = torch.empty(1, 65536, dtype=torch.long, device="meta")
    _, rep = convert_official_to_ours(retrieval, model)
    assert rep.task == "retrieval" and not rep.unexpected and not rep.mismatched and rep.complete
    # the pretraining model's MLM head is not in it: initialised fresh (5 keys + tied decoder, and their EMA copies)
    mlm = [t for t, _ in rep.filled if "heads.mlm." in t]
    assert len(mlm) == 12 and all(t.startswith(("heads.mlm.", "teacher.model.heads.mlm.")) for t in mlm)


# --------------------------------------------------------------------------- position embeddings
def test_interpolate_pos_embed_hand_computed_2x2_to_4x4():
    # PyTorch bicubic (A = -0.75, align_corners=False, border-clamped taps) upsampling a
    # length-2 signal [a, b] by 2: output sample x reads source 0.5x - 0.25 -> -0.25, 0.25,
    # 0.75, 1.25. Cubic-convolution weights worked out by hand for t = 0.75 and t = 0.25:
    # w(1.75) = -0.03515625, w(0.75) = 0.26171875, w(0.25) = 0.87890625, w(1.25) = -0.10546875;
    # the clamped taps fold onto a or b:
    k = torch.tensor([
        [1.10546875, -0.10546875],
        [0.7734375, 0.2265625],
        [0.2265625, 0.7734375],
        [-0.10546875, 1.10546875],
    ], dtype=torch.float64)
    grid = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[5.0, -1.0], [0.5, 4.0]]], dtype=torch.float64)  # [D=2, 2, 2]
    cls = torch.tensor([[7.0, -7.0]], dtype=torch.float64)
    pos = torch.cat([cls, grid.permute(1, 2, 0).reshape(4, 2)]).unsqueeze(0)  # [1, 1 + 4, 2], row-major grid
    out = interpolate_pos_embed(pos, 16)
    assert out.shape == (1, 17, 2)
    assert torch.equal(out[0, 0], cls[0])  # [CLS] untouched
    expected = torch.stack([k @ grid[c] @ k.t() for c in range(2)])  # separable: K G K^T per channel
    torch.testing.assert_close(out[0, 1:].reshape(4, 4, 2).permute(2, 0, 1), expected, rtol=0, atol=1e-12)
    # spot values: top-left corner of channel 0 = sum_ij k0i k0j g_ij
    assert abs(out[0, 1, 0].item() - (1.10546875 * (-0.10546875) * 1 + (-0.10546875) * 1.10546875 * 2
                                      + (-0.10546875) ** 2 * 3)) < 1e-12


def test_interpolate_pos_embed_matches_f_interpolate_and_identity():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 1 + 9, 5, generator=g)
    out = interpolate_pos_embed(pos, 25)
    ref = F.interpolate(pos[:, 1:].reshape(1, 3, 3, 5).permute(0, 3, 1, 2), size=(5, 5), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 25, 5), rtol=0, atol=0)
    assert torch.equal(out[:, 0], pos[:, 0])
    assert interpolate_pos_embed(pos, 9) is pos  # same size: unchanged
    with pytest.raises(ValueError, match="square"):
        interpolate_pos_embed(pos, 10)


def test_conversion_interpolates_to_the_model_resolution(official_sd):
    m = build_tiny("model.vision_encoder.img_size=128")  # 8 x 8 patches instead of 4 x 4
    out, rep = convert_official_to_ours(official_sd, m)
    assert rep.complete
    assert [(k, a, b) for k, a, b in rep.interpolated] == [
        ("visual_encoder.pos_embed", (1, 17, 64), (1, 65, 64)), ("visual_encoder_m.pos_embed", (1, 17, 64), (1, 65, 64))]
    expected = interpolate_pos_embed(official_sd["visual_encoder.pos_embed"], 64)
    assert torch.equal(out["vision_encoder.vit.pos_embed"], expected)
    assert "interpolated visual_encoder.pos_embed: [1, 17, 64] -> [1, 65, 64]" in format_report(rep)
    m.load_state_dict(out, strict=True)


# --------------------------------------------------------------------------- safe loading
class _RunsCodeOnUnpickling:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_checkpoint_that_runs_code_on_unpickling_is_refused(tmp_path):
    bad, marker = str(tmp_path / "evil.pth"), str(tmp_path / "pwned")
    torch.save({"model": {"temp": torch.tensor(0.07)}, "payload": _RunsCodeOnUnpickling(marker)}, bad)
    m = build_tiny()
    with pytest.raises(CheckpointFormatError) as ei:
        ALBEFCheckpointer(m).load(bad, checkpointables=[])
    assert bad in str(ei.value) and "weights-only" in str(ei.value)
    with pytest.raises(CheckpointFormatError):
        read_checkpoint_file(bad)
    r = subprocess.run([sys.executable, TOOL, bad, str(tmp_path / "out.pth")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and bad in r.stderr
    assert not os.path.exists(marker) and not os.path.exists(tmp_path / "out.pth")
    # the control: the file really does run code when unpickled without weights_only
    control, marker2 = str(tmp_path / "evil2.pth"), str(tmp_path / "pwned2")
    torch.save(_RunsCodeOnUnpickling(marker2), control)
    torch.load(control, weights_only=False)
    assert os.path.exists(marker2)


def test_bad_input_files_name_the_file(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointFormatError, match="junk.pth"):
        read_checkpoint_file(str(junk))
    lst = tmp_path / "list.pth"
    torch.save([1, 2, 3], str(lst))
    with pytest.raises(CheckpointFormatError, match="list.pth: not a model checkpoint"):
        read_checkpoint_file(str(lst))
    with pytest.raises(CheckpointFormatError, match="missing.pth: checkpoint file not found"):
        ALBEFCheckpointer(build_tiny()).load(str(tmp_path / "missing.pth"))
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(CheckpointFormatError, match="bad.safetensors"):
        read_checkpoint_file(str(bad_st))


# --------------------------------------------------------------------------- model.weights
@pytest.fixture()
def albef_log(caplog):
    """caplog for the ``albef`` loggers even after setup_logger() stopped their propagation."""
    lg = logging.getLogger("albef")
    level = lg.level
    lg.addHandler(caplog.handler)
    lg.setLevel(logging.INFO)
    caplog.handler.setLevel(logging.INFO)
    yield caplog
    lg.removeHandler(caplog.handler)
    lg.setLevel(level)


def _load_weights(model, path: str, strict: bool = True) -> ALBEFCheckpointer:
    """What Trainer._load_weights does, without building data: model.weights / model.weights_strict."""
    from albef.engine.defaults import Trainer

    ck = ALBEFCheckpointer(model)
    cfg = SimpleNamespace(model=SimpleNamespace(weights=path, weights_strict=strict))
    Trainer._load_weights(SimpleNamespace(cfg=cfg, checkpointer=ck))
    assert ck.strict is True  # restored: --resume stays strict
    return ck


def test_model_weights_converts_an_official_checkpoint_on_the_fly(official_sd, albef_log):
    m = build_tiny()
    ck = _load_weights(m, OFFICIAL)
    assert ck.last_conversion_report.complete
    assert "Checkpoint conversion official -> ours" in albef_log.text and "complete" in albef_log.text
    sd = m.state_dict()
    assert torch.equal(sd["fusion.layer.1.output.dense.weight"], official_sd["text_encoder.bert.encoder.layer.3.output.dense.weight"])
    assert torch.equal(sd["teacher.queue.text_queue"], official_sd["text_queue"].t())


def test_partial_official_load_needs_weights_strict_false(official_sd, tmp_path, albef_log):
    path = str(tmp_path / "mscoco_like.pth")
    partial = retrieval_layout(official_sd)
    del partial["text_encoder.encoder.layer.3.output.dense.bias"]  # a weight that is not there
    torch.save({"model": partial}, path)
    m = build_tiny()
    kept = m.state_dict()["fusion.layer.1.output.dense.bias"].clone()
    with pytest.raises(CheckpointMismatchError) as ei:
        _load_weights(m, path, strict=True)
    assert "model.weights_strict=false" in str(ei.value) and "fusion.layer.1.output.dense.bias" in str(ei.value)
    _load_weights(m, path, strict=False)
    assert "INCOMPLETE" in albef_log.text and "fusion.layer.1.output.dense.bias" in albef_log.text
    sd = m.state_dict()
    assert torch.equal(sd["fusion.layer.1.output.dense.bias"], kept)  # kept
    assert torch.equal(sd["teacher.queue.text_queue"], official_sd["text_queue"].t())
    # the file's image ids name its own data set: model.weights resets them
    assert (sd["teacher.queue.idx_queue"] == -100).all()


def test_own_checkpoints_stay_strict_and_safetensors_load(tmp_path, albef_log):
    from albef.checkpoint import write_safetensors

    src = build_tiny()
    with torch.no_grad():
        src.temp.fill_(0.05)
    sd = src.state_dict()
    st = str(tmp_path / "ours.safetensors")
    write_safetensors(sd, st)
    m = build_tiny()
    _load_weights(m, st)
    for k, v in sd.items():
        assert torch.equal(m.state_dict()[k], v), k
    # one key short: refused by default, loaded with weights_strict=false and reported
    partial = {k: v for k, v in sd.items() if k != "vision_proj.bias"}
    p = str(tmp_path / "partial.pth")
    torch.save({"model": partial}, p)
    with pytest.raises(CheckpointMismatchError, match="vision_proj.bias"):
        _load_weights(build_tiny(), p)
    _load_weights(build_tiny(), p, strict=False)
    assert "vision_proj.bias" in albef_log.text and "INCOMPLETE" in albef_log.text


def test_weights_strict_is_a_config_key():
    from albef.config import load_config
    from albef.modeling import build_model

    cfg = load_config(CONFIG, ["model.weights_strict=false", "model.weights=/x.pth"])
    assert cfg.model.weights_strict is False
    build_model(cfg)  # the model builder ignores both keys


# --------------------------------------------------------------------------- the tool
def test_tool_safetensors_round_trip(tmp_path, official_sd):
    """The tool's conversion (albef.checkpoint.convert), in-process: .safetensors and .pth agree, and back."""
    from albef.checkpoint.convert import convert_checkpoint_file

    st, pt = str(tmp_path / "ours.safetensors"), str(tmp_path / "ours.pth")
    assert convert_checkpoint_file(OFFICIAL, st, config_file=CONFIG).written
    assert convert_checkpoint_file(OFFICIAL, pt, config_file=CONFIG, fmt="pt").written
    a, b = read_checkpoint_file(st), torch.load(pt, weights_only=True)
    assert a["safetensors_metadata"]["format"] == "albef" and b["task"] == "pretrain" and b["conversion_report"]["complete"]
    assert set(a["model"]) == set(b["model"])  # safetensors stores keys sorted
    for k, v in b["model"].items():
        assert torch.equal(a["model"][k], v), k
    back = str(tmp_path / "official.safetensors")
    res = convert_checkpoint_file(st, back, to_official=True, config_file=CONFIG)
    assert res.written and res.format == "safetensors"
    off = read_checkpoint_file(back)["model"]
    assert set(off) == set(official_sd)
    for k, v in official_sd.items():
        assert torch.equal(off[k], v), k
    # the converted file is a model.weights for strict loading
    m = build_tiny()
    _load_weights(m, st)
    assert torch.equal(m.state_dict()["temp"], official_sd["temp"])


@pytest.mark.slow
def test_tool_cli_on_the_fixture(tmp_path, official_sd):
    out, official_out = str(tmp_path / "ours.pth"), str(tmp_path / "official.pth")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, TOOL, OFFICIAL, out, "--task", "pretrain", "--config-file", CONFIG, "model.temp=0.07"],
                       capture_output=True, text=True, timeout=180, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mapped 262, dropped 6, filled 3, missing 0, unexpected 0, shape mismatches 0" in r.stdout
    assert f"wrote {out}" in r.stdout
    ck = torch.load(out, weights_only=True)
    assert set(ck) == {"model", "conversion_report", "source", "task"} and len(ck["model"]) == 265
    r = subprocess.run([sys.executable, TOOL, out, official_out, "--to-official"],
                       capture_output=True, text=True, timeout=180, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    back = torch.load(official_out, weights_only=True)["model"]
    assert list(back) == list(official_sd) and all(torch.equal(back[k], v) for k, v in official_sd.items())
    # wrong direction and --strict failures are clear
    r = subprocess.run([sys.executable, TOOL, out, str(tmp_path / "x.pth"), "--config-file", CONFIG],
                       capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 2 and "not an official ALBEF checkpoint" in r.stderr and out in r.stderr
    r = subprocess.run([sys.executable, TOOL, OFFICIAL, str(tmp_path / "y.pth"), "--strict", "--config-file", CONFIG,
                        "model.text_encoder.num_layers=1", "model.fusion.num_layers=3"],
                       capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 1 and "INCOMPLETE" in r.stdout and not os.path.exists(tmp_path / "y.pth")


@pytest.mark.slow
def test_eval_only_with_an_official_layout_checkpoint(synthetic_root, tmp_path):
    """train_net.py --eval-only model.weights=<official file>: converted on the fly, same numbers as our checkpoint."""
    import json

    from conftest import TINY, run_cli

    out = str(tmp_path / "run")
    args = ["--config-file", TINY, f"data.synthetic.root={synthetic_root}"]
    r = run_cli([*args, f"output_dir={out}", "train.max_iter=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    ours = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]
    official, rep = convert_ours_to_official(ours)
    assert rep.complete
    path = str(tmp_path / "official_layout.pth")
    torch.save({"model": official}, path)
    r = run_cli(["--eval-only", *args, f"output_dir={tmp_path / 'ev'}", f"model.weights={path}"])
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "ev" / "log.txt").read_text()
    assert "Checkpoint conversion official -> ours" in log and "-> complete" in log
    with open(os.path.join(out, "metrics.json")) as f:
        trained = [json.loads(line) for line in f][-1]
    with open(tmp_path / "ev" / "metrics.json") as f:
        row = json.loads(f.readlines()[-1])
    for k in ("retrieval/r_mean", "retrieval_itc/r_mean", "retrieval/txt_r1"):
        assert row[k] == pytest.approx(trained[k])
