"""Initialisation from public weights saved locally in the test: BERT (save_pretrained
directory) split into text encoder / fusion / MLM head, and a timm ViT (torch.save and
safetensors files) with its positional embedding resampled. Missing or unfit weights are
errors, never a silent random initialisation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli, TINY
from albef.modeling import build_model
from albef.registry import ComponentError


def tiny_bert(tmp_path, tokenizer, layers: int = 3, hidden: int = 32):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(123)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64, max_position_embeddings=32)
    bert = BertForMaskedLM(cfg).eval()
    with torch.no_grad():  # make every tensor distinctive (transformers initialises biases/LN to 0/1)
        for p in bert.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    d = str(tmp_path / "bert")
    bert.save_pretrained(d)
    return bert, d


def test_bert_layers_split_between_text_encoder_fusion_and_mlm_head(tmp_path, tiny_cfg, tokenizer):
    bert, d = tiny_bert(tmp_path, tokenizer, layers=3)  # tiny.yaml: 1 text layer + 1 fusion layer
    model = build_model(tiny_cfg(f"model.text_encoder.pretrained={d}"), tokenizer)
    ref = bert.state_dict()
    txt = model.text_encoder.bert.state_dict()
    for k, v in txt.items():
        if k.endswith("position_ids"):
            continue
        assert torch.equal(v, ref[f"bert.{k}"]), k
    fus = model.fusion.layer[0].state_dict()
    n_loaded = 0
    for k, v in fus.items():
        if k.startswith("crossattention."):
            continue
        assert torch.equal(v, ref[f"bert.encoder.layer.1.{k}"]), k
        n_loaded += 1
    assert n_loaded == 16  # self-attention (q, k, v, out dense, LN) + intermediate + output, weights and biases
    # cross-attention keeps its fresh initialisation: BERT has nothing of its shape (key: [H, Dv]) ...
    assert fus["crossattention.self.key.weight"].shape[1] == model.vision_encoder.embed_dim
    # ... and is not a copy of any BERT layer's self-attention
    assert not any(torch.equal(fus["crossattention.self.query.weight"], ref[f"bert.encoder.layer.{i}.attention.self.query.weight"]) for i in range(3))
    head = model.heads["mlm"]
    assert torch.equal(head.transform.dense.weight, ref["cls.predictions.transform.dense.weight"])
    assert torch.equal(head.transform.LayerNorm.bias, ref["cls.predictions.transform.LayerNorm.bias"])
    assert torch.equal(head.bias, ref["cls.predictions.bias"])
    assert head.decoder.weight is model.text_encoder.get_input_embeddings().weight  # still tied
    # The momentum teacher starts as a copy of the initialised weights, not of random ones.
    sd = model.state_dict()
    assert torch.equal(sd["teacher.model.fusion.layer.0.attention.self.query.weight"], ref["bert.encoder.layer.1.attention.self.query.weight"])
    assert torch.equal(sd["teacher.model.text_encoder.bert.embeddings.word_embeddings.weight"], ref["bert.embeddings.word_embeddings.weight"])
    # The leftover is consumed, not kept on the module (it would be in every state dict).
    assert not hasattr(model.text_encoder, "pretrained_leftover")  # no side channel between constructors


def test_bert_init_errors(tmp_path, tiny_cfg, tokenizer):
    with pytest.raises(ComponentError, match=r"model.text_encoder.pretrained: BERT directory '.*nope' does not exist"):
        build_model(tiny_cfg(f"model.text_encoder.pretrained={tmp_path / 'nope'}"), tokenizer)
    _, d = tiny_bert(tmp_path / "one", tokenizer, layers=1)
    with pytest.raises(ComponentError, match="has 1 layers; the text encoder takes 1 and model.fusion.num_layers=1 needs 1 more"):
        build_model(tiny_cfg(f"model.text_encoder.pretrained={d}"), tokenizer)
    _, d = tiny_bert(tmp_path / "wide", tokenizer, layers=2, hidden=48)
    with pytest.raises(ComponentError, match="hidden_size: checkpoint 48 vs model 32"):
        build_model(tiny_cfg(f"model.text_encoder.pretrained={d}"), tokenizer)


def tiny_vit_file(tmp_path, img_size: int, fmt: str = "pth", depth: int = 1):
    import timm

    torch.manual_seed(7)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=img_size, patch_size=8, embed_dim=32, depth=depth, num_heads=2, num_classes=10)
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    sd = vit.state_dict()
    path = str(tmp_path / f"vit.{fmt}")
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        torch.save({"model": sd}, path)  # DeiT's release format: {'model': state_dict}
    return sd, path


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_vit_from_a_local_file_with_resampled_positions(tmp_path, tiny_cfg, tokenizer, fmt):
    sd, path = tiny_vit_file(tmp_path, img_size=16, fmt=fmt)  # a 2x2 patch grid; the model uses 32 px = 4x4
    model = build_model(tiny_cfg(f"model.vision_encoder.pretrained={path}"), tokenizer)
    vit = model.vision_encoder.vit.state_dict()
    for k in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc2.bias", "norm.weight", "cls_token"):
        assert torch.equal(vit[k], sd[k]), k
    pe_old, pe_new = sd["pos_embed"], vit["pos_embed"]
    assert pe_new.shape == (1, 17, 32)
    assert torch.equal(pe_new[:, 0], pe_old[:, 0])  # [CLS] position untouched
    grid = pe_old[:, 1:].reshape(1, 2, 2, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 16, 32)
    assert torch.allclose(pe_new[:, 1:], expected, atol=1e-6)
    assert "head.weight" not in vit  # the classifier was dropped


def test_vit_init_errors(tmp_path, tiny_cfg, tokenizer):
    with pytest.raises(ComponentError, match=r"model.vision_encoder.pretrained: weights file '.*missing.pth' does not exist"):
        build_model(tiny_cfg(f"model.vision_encoder.pretrained={tmp_path / 'missing.pth'}"), tokenizer)
    _, path = tiny_vit_file(tmp_path, img_size=32, depth=2)
    with pytest.raises(ComponentError, match=r"is not a checkpoint of this ViT: .*unexpected \['blocks.1"):
        build_model(tiny_cfg(f"model.vision_encoder.pretrained={path}"), tokenizer)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ComponentError, match="cannot read weights file"):
        build_model(tiny_cfg(f"model.vision_encoder.pretrained={junk}"), tokenizer)


@pytest.mark.slow
def test_cli_missing_init_file_is_a_clear_error(synthetic_root, tmp_path):
    r = run_cli(["--config-file", TINY, f"data.synthetic.root={synthetic_root}", f"output_dir={tmp_path / 'o'}", f"model.vision_encoder.pretrained={tmp_path / 'deit.pth'}"])
    assert r.returncode == 2
    assert "model.vision_encoder.pretrained" in r.stderr and "deit.pth' does not exist" in r.stderr and "Traceback" not in r.stderr


def test_public_init_is_skipped_when_model_weights_replace_everything(tmp_path, tiny_cfg, tokenizer):
    """Evaluating or fine-tuning from a checkpoint must not need the init files (or the network)."""
    missing = tmp_path / "not_here.pth"
    cfg = tiny_cfg(f"model.vision_encoder.pretrained={missing}", f"model.weights={tmp_path / 'ckpt.pth'}")
    model = build_model(cfg, tokenizer)  # no error: the init is skipped
    assert model.vision_encoder.embed_dim == 32
    with pytest.raises(ComponentError, match="does not exist"):
        build_model(cfg, tokenizer, public_init=True)
    # A partial load (weights_strict=false) keeps the public init for what the checkpoint lacks.
    with pytest.raises(ComponentError, match="does not exist"):
        build_model(tiny_cfg(f"model.vision_encoder.pretrained={missing}", f"model.weights={tmp_path / 'ckpt.pth'}", "model.weights_strict=false"), tokenizer)


def test_vit_pretrained_timm_goes_through_the_same_loading(monkeypatch, tmp_path, tiny_cfg, tokenizer):
    """pretrained=timm: timm's weights at their own resolution, resampled like a local file
    (bicubic, no antialiasing). timm's download is replaced by a local model here."""
    import timm

    sd, path = tiny_vit_file(tmp_path, img_size=16)
    real_create = timm.create_model
    calls = []

    def fake_create(name, pretrained=False, **kw):
        if not pretrained:
            return real_create(name, pretrained=False, **kw)
        calls.append(kw)
        src = real_create(name, pretrained=False, img_size=16, **kw)
        src.load_state_dict({k: v for k, v in sd.items() if not k.startswith("head")})
        return src

    monkeypatch.setattr(timm, "create_model", fake_create)
    via_timm = build_model(tiny_cfg("model.vision_encoder.pretrained=timm"), tokenizer).vision_encoder.vit.state_dict()
    via_file = build_model(tiny_cfg(f"model.vision_encoder.pretrained={path}"), tokenizer).vision_encoder.vit.state_dict()
    assert calls and "img_size" not in calls[0]  # timm's own resolution
    assert via_timm.keys() == via_file.keys()
    for k in via_file:
        assert torch.equal(via_timm[k], via_file[k]), k

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real_create(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ComponentError, match="pretrained=timm: could not get timm's weights .* give a local file instead"):
        build_model(tiny_cfg("model.vision_encoder.pretrained=timm"), tokenizer)
