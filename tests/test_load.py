"""albef.load: every checkpoint kind we write or read, the zoo's resolution and checks, the Hub folder."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
import yaml
from omegaconf import OmegaConf

import albef
from albef.checkpoint.checkpointer import CheckpointMismatchError
from albef.config import load_config
from albef.model_zoo import zoo
from albef.model_zoo.zoo import ModelZooError
from albef.modeling import build_model
from tests.conftest import REPO
from tests.test_official_task_layouts import LAYOUTS, tiny_official

TASK_CONFIGS = {  # our task -> (tiny config, the head it must come back with)
    "pretrain": ("tests/configs/tiny.yaml", {"itm", "mlm"}),
    "retrieval": ("tests/configs/tiny_retrieval.yaml", {"itm"}),
    "ve": ("tests/configs/tiny_ve.yaml", {"cls"}),
    "nlvr": ("tests/configs/tiny_nlvr.yaml", {"cls"}),
    "vqa": ("tests/configs/tiny_vqa.yaml", {"answer"}),
    "grounding": ("tests/configs/tiny_grounding.yaml", {"itm"}),
}


def our_checkpoint(path, config: str, root: str, tokenizer, seed: int = 0):
    """A checkpoint as tools/train_net.py writes it: the model's state and the resolved config (YAML text)."""
    cfg = load_config(os.path.join(REPO, config), [f"data.synthetic.root={root}"])
    torch.manual_seed(seed)
    model = build_model(cfg, tokenizer)
    torch.save({"model": model.state_dict(), "iteration": 3, "config": OmegaConf.to_yaml(cfg, resolve=True)}, str(path))
    return model


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("task", sorted(TASK_CONFIGS))
def test_our_checkpoints_load_with_their_heads_and_weights(task, synthetic_root, tokenizer, tmp_path):
    config, heads = TASK_CONFIGS[task]
    ref = our_checkpoint(tmp_path / "model_final.pth", config, synthetic_root, tokenizer)
    model, pre = albef.load(str(tmp_path / "model_final.pth"), task=task, device="cpu")
    assert set(model.heads) == heads
    assert same_weights(model, ref)
    assert not model.training and model.inference_dtype == torch.float32
    res = int(model.config.data.transforms.image_res)
    assert pre.image_res == res and pre.image(torch.zeros(3, res, res)).shape == (1, 3, res, res)
    assert pre.max_tokens == int(model.config.data.max_tokens)
    # a training output directory loads through its model_final.pth
    assert same_weights(albef.load(str(tmp_path), device="cpu")[0], ref)


@pytest.mark.parametrize("layout", sorted(LAYOUTS) + ["pretrain"])
def test_official_layouts_load_onto_their_configs(layout, synthetic_root, tokenizer, tmp_path):
    """Tiny files in the official layouts (keys of ../shared/reference/official_task_keys/) load through
    the conversion pass, strictly, and come back with the right heads."""
    config = LAYOUTS[layout][2] if layout in LAYOUTS else "tests/configs/tiny.yaml"
    official = tiny_official(layout, len(tokenizer))
    path = tmp_path / f"{layout}.pth"
    torch.save({"model": official}, str(path))
    model, _ = albef.load(str(path), config=os.path.join(REPO, config), overrides=[f"data.synthetic.root={synthetic_root}"], device="cpu")
    expect = {"retrieval": {"itm"}, "ve": {"cls"}, "nlvr": {"cls"}, "nlvr_ta": {"ta"}, "pretrain": {"itm", "mlm"}}[layout]
    assert set(model.heads) == expect
    sd = model.state_dict()
    assert torch.equal(sd["vision_encoder.vit.cls_token"] if "vision_encoder.vit.cls_token" in sd else sd["vision_encoder.cls_token"],
                       official["visual_encoder.cls_token"])


def test_ve_head_names_its_classes(synthetic_root, tokenizer, tmp_path):
    our_checkpoint(tmp_path / "ve.pth", "tests/configs/tiny_ve.yaml", synthetic_root, tokenizer)
    model, pre = albef.load(str(tmp_path / "ve.pth"), device="cpu")
    img = torch.zeros(2, 3, pre.image_res, pre.image_res)
    pred = model.classify(img, pre.text(["a red circle", "two squares"]))
    assert pred.probs.shape == (2, 3) and torch.allclose(pred.probs.sum(1), torch.ones(2))
    assert set(pred.labels) <= {"contradiction", "neutral", "entailment"}


# --------------------------------------------------------------------------- errors
def test_a_missing_file_an_unknown_name_and_another_architecture(synthetic_root, tokenizer, tmp_path):
    with pytest.raises(ModelZooError, match="nope.pth: checkpoint file not found"):
        albef.load(str(tmp_path / "nope.pth"))
    with pytest.raises(ModelZooError, match=r"unknown model 'albef-14n'.*Did you mean 'albef-14m'"):
        albef.load("albef-14n")
    with pytest.raises(ModelZooError, match=r"albef-vqa2.*Did you mean 'albef-vqa'"):
        albef.load("albef-vqa2")
    our_checkpoint(tmp_path / "ve.pth", "tests/configs/tiny_ve.yaml", synthetic_root, tokenizer)
    with pytest.raises(CheckpointMismatchError, match=r"ve\.pth does not fit the model of .*tiny\.yaml"):
        albef.load(str(tmp_path / "ve.pth"), config=os.path.join(REPO, "tests/configs/tiny.yaml"),
                   overrides=[f"data.synthetic.root={synthetic_root}"])
    with pytest.raises(ModelZooError, match=r"task='vqa' needs the head model.heads.answer; this model has \['cls'\]"):
        albef.load(str(tmp_path / "ve.pth"), task="vqa")
    with pytest.raises(ValueError, match="task must be one of"):
        albef.load(str(tmp_path / "ve.pth"), task="captioning")
    torch.save({"model": torch.load(str(tmp_path / "ve.pth"), weights_only=True)["model"]}, str(tmp_path / "bare.pth"))
    with pytest.raises(ModelZooError, match=r"bare\.pth: the file carries no config; pass albef.load\(\.\.\., config="):
        albef.load(str(tmp_path / "bare.pth"))


def test_a_moved_vocabulary_is_named_and_found_beside_the_weights(synthetic_root, tokenizer, tmp_path):
    from albef.data.tokenization import TokenizerError

    ref = our_checkpoint(tmp_path / "m.pth", "tests/configs/tiny.yaml", synthetic_root, tokenizer)
    ck = torch.load(str(tmp_path / "m.pth"), weights_only=True)
    ck["config"] = ck["config"].replace(os.path.join(synthetic_root, "vocab.txt"), str(tmp_path / "gone" / "vocab.txt"))
    (tmp_path / "moved").mkdir()
    torch.save(ck, str(tmp_path / "moved" / "m.pth"))
    with pytest.raises(TokenizerError, match=r"gone/vocab.txt does not exist.*albef.load\(\.\.\., tokenizer=PATH\)"):
        albef.load(str(tmp_path / "moved" / "m.pth"))
    with open(os.path.join(synthetic_root, "vocab.txt"), "rb") as src, open(tmp_path / "moved" / "vocab.txt", "wb") as dst:
        dst.write(src.read())
    assert same_weights(albef.load(str(tmp_path / "moved" / "m.pth"))[0], ref)


# --------------------------------------------------------------------------- the zoo: cache, URL, sha256
def _zoo_file(tmp_path, **entry) -> str:
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump({"entries": {"mine": entry}}))
    return str(path)


def test_zoo_entry_from_cache_and_url_with_checksums(synthetic_root, tokenizer, tmp_path, monkeypatch, capsys):
    src = tmp_path / "published" / "mine.pth"
    src.parent.mkdir()
    ref = our_checkpoint(src, "tests/configs/tiny.yaml", synthetic_root, tokenizer)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    monkeypatch.setenv("ALBEF_CACHE", str(cache))
    # no checksum known: the first download records and prints it, later loads verify it
    monkeypatch.setenv("ALBEF_MODEL_ZOO", _zoo_file(tmp_path, file="mine.pth", url=f"file://{src}", sha256=None))
    assert same_weights(albef.load("mine")[0], ref)
    out = capsys.readouterr().out
    assert f"sha256 {digest}" in out and "downloading" in out
    assert json.loads((cache / "sha256.json").read_text()) == {"mine.pth": digest}
    assert same_weights(albef.load("mine")[0], ref)  # from the cache now
    assert "downloading" not in capsys.readouterr().out
    with open(cache / "mine.pth", "r+b") as f:  # corrupt the cached copy: refused, named
        f.seek(200)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ModelZooError, match=r"model zoo entry 'mine': .*mine.pth has sha256 [0-9a-f]{64}, expected " + digest):
        albef.load("mine")
    # a wrong checksum in the entry itself: the download is refused before use, nothing lands in the cache
    os.remove(cache / "mine.pth")
    monkeypatch.setenv("ALBEF_MODEL_ZOO", _zoo_file(tmp_path, file="mine.pth", url=f"file://{src}", sha256="0" * 64))
    with pytest.raises(ModelZooError, match="expected " + "0" * 64):
        albef.load("mine")
    assert not (cache / "mine.pth").exists()
    monkeypatch.setenv("ALBEF_MODEL_ZOO", _zoo_file(tmp_path, file="mine.pth", url=f"file://{src}", sha256=digest))
    assert same_weights(albef.load("mine")[0], ref)
    os.remove(cache / "mine.pth")
    monkeypatch.setenv("ALBEF_OFFLINE", "1")
    with pytest.raises(ModelZooError, match="ALBEF_OFFLINE=1 forbids downloading"):
        albef.load("mine")


def test_zoo_table_is_well_formed_and_the_paper_entries_build_on_meta():
    table = zoo.entries()
    for name in ("albef-14m", "albef-4m", "albef-coco-retrieval", "albef-flickr30k-retrieval", "albef-vqa", "albef-refcoco+",
                 "albef-nlvr2-ta", "synthetic"):
        assert name in table, name
    for e in table.values():
        if e.config:
            cfg = load_config(e.config, ["model.text_encoder.config.vocab_size=30522", "model.vision_encoder.pretrained=null",
                                         "model.text_encoder.pretrained=null"])
            assert int(cfg.data.transforms.image_res) == e.resolution, e.name
        else:
            assert e.path == "output/synthetic/model_final.pth"
        assert e.url is None or e.url.startswith("https://")


def test_a_bad_zoo_table_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("ALBEF_MODEL_ZOO", _zoo_file(tmp_path, file="x.pth", colour="red"))
    with pytest.raises(ModelZooError, match=r"zoo.yaml: entry 'mine' has unknown key\(s\) \['colour'\]"):
        zoo.entries()


# --------------------------------------------------------------------------- Hub layout
def test_hub_folder_round_trip_and_hf_hub_offline(synthetic_root, tokenizer, tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    ref = our_checkpoint(tmp_path / "model_final.pth", "tests/configs/tiny_vqa.yaml", synthetic_root, tokenizer)
    folder = tmp_path / "hub"
    sha = albef.export_hub_folder(str(tmp_path / "model_final.pth"), str(folder), repo_id="org/albef-tiny")
    assert sorted(os.listdir(folder)) == sorted(["README.md", "config.yaml", "model.safetensors", "tokenizer"] +
                                                (["answer_list.json"] if os.path.isfile(os.path.join(synthetic_root, "vqa", "answer_list.json")) else []))
    assert sha == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() and sha in (folder / "README.md").read_text()
    assert "hf-hub:org/albef-tiny" in (folder / "README.md").read_text()
    os.remove(tmp_path / "model_final.pth")  # the folder needs nothing outside it, the vocabulary neither
    model, pre = albef.load(str(folder))
    assert same_weights(model, ref) and set(model.heads) == {"answer"}
    assert pre.tokenizer.get_vocab() == tokenizer.get_vocab()
    # the same folder as a snapshot in a Hugging Face cache, loaded with no network
    hub_cache = tmp_path / "hf"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = hub_cache / "models--org--albef-tiny" / "snapshots" / commit
    snap.parent.mkdir(parents=True)
    os.rename(folder, snap)
    (hub_cache / "models--org--albef-tiny" / "refs").mkdir()
    (hub_cache / "models--org--albef-tiny" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    model, _ = albef.load("hf-hub:org/albef-tiny")
    assert same_weights(model, ref)
    with pytest.raises(ModelZooError, match="hf-hub:org/missing: could not find org/missing in the local Hugging Face cache"):
        albef.load("hf-hub:org/missing")


def test_urls_with_the_same_file_name_do_not_share_a_cache_entry(synthetic_root, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("ALBEF_CACHE", str(tmp_path / "cache"))
    refs = []
    for i, d in enumerate(("a", "b")):
        (tmp_path / d).mkdir()
        refs.append(our_checkpoint(tmp_path / d / "model.pth", "tests/configs/tiny.yaml", synthetic_root, tokenizer, seed=i))
    for d, ref in zip(("a", "b"), refs):
        assert same_weights(albef.load(f"file://{tmp_path / d / 'model.pth'}")[0], ref)
    assert same_weights(albef.load(f"file://{tmp_path / 'a' / 'model.pth'}")[0], refs[0])  # from the cache, still a's
    recorded = json.loads((tmp_path / "cache" / "sha256.json").read_text())
    assert len(recorded) == 2 and all(k.startswith("urls/") and k.endswith("/model.pth") for k in recorded)
