"""The official fine-tuned layouts (retrieval, SNLI-VE, NLVR2, NLVR2 text assignment):
conversion onto the paper task configs, back to the official layout, the CLI, and
numerical parity of the task heads with the computation written against the official keys.

* Full size, no data: every key of ``tests/fixtures/official_task_keys/*.txt`` (from the
  official ``models/``) as meta tensors, converted onto models built on the meta device from
  ``configs/retrieval/coco.yaml``, ``configs/ve/snli_ve.yaml``, ``configs/nlvr/nlvr2.yaml`` and
  ``configs/nlvr/ta_pretrain.yaml``, and written back in the official order.
* Tiny, with data: official-layout files at the sizes of ``tests/configs/tiny_*.yaml`` with a
  distinct random value in every tensor, built by :func:`official_layout` (checked against
  the full-size key lists first), converted by the CLI and loaded strictly, and evaluated
  both by our model and by a small functional BERT + the official heads that read the
  official keys (relative error < 1e-5).
"""
from __future__ import annotations

from types import SimpleNamespace

import math
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, official_meta_state

from albef.checkpoint import ALBEFCheckpointer
from albef.checkpoint.detect import detect_official_task, detect_our_task
from albef.checkpoint.official import convert_official_to_ours, convert_ours_to_official, official_to_ours_keys
from albef.checkpoint.report import format_report

KEYS = os.path.join(REPO, "tests", "fixtures", "official_task_keys")
TOOL = os.path.join(REPO, "tools", "convert_albef_checkpoint.py")
TOL = 1e-5

# layout -> (key list, paper config, tiny config)
LAYOUTS = {
    "retrieval": ("retrieval_mscoco_384.txt", "configs/retrieval/coco.yaml", "tests/configs/tiny_retrieval.yaml"),
    "ve": ("ve_snli_384.txt", "configs/ve/snli_ve.yaml", "tests/configs/tiny_ve.yaml"),
    "nlvr": ("nlvr_384.txt", "configs/nlvr/nlvr2.yaml", "tests/configs/tiny_nlvr.yaml"),
    "nlvr_ta": ("nlvr_ta_pretrain_256.txt", "configs/nlvr/ta_pretrain.yaml", "tests/configs/tiny_ta.yaml"),
}
# the sizes of the official base models and of tests/configs/tiny_*.yaml
PAPER = dict(vocab=30522, hidden=768, ffn=3072, heads=12, max_pos=512, n_text=6, vision_width=768, patch=16,
             depth=12, vision_heads=12, embed=256, queue=65536)
TINY = dict(hidden=32, ffn=64, heads=2, max_pos=32, n_text=1, vision_width=32, img=32, patch=8, depth=1,
            vision_heads=2, embed=16, queue=24)
TINY_FUSION = {"pretrain": 1, "retrieval": 1, "ve": 1, "nlvr": 2, "nlvr_ta": 2}


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    a, b = ours.detach().double(), ref.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# --------------------------------------------------------------------------- official layouts
def read_key_list(name: str) -> dict[str, torch.Tensor]:
    """A key-list fixture as meta tensors, in the file's (the official) order."""
    out = {}
    with open(os.path.join(KEYS, name)) as f:
        for line in f:
            key, shape = line.rstrip("\n").split("\t")
            dtype = torch.long if key.endswith(("position_ids", "queue_ptr", "idx_queue")) else torch.float32
            out[key] = torch.empty(eval(shape), dtype=dtype, device="meta")
    return out


def official_layout(task: str, *, vocab: int, img: int, n_fusion: int, meta: bool = False, seed: int = 0, **dims) -> dict[str, torch.Tensor]:
    """A state dict in the official layout of ``task`` (pretrain, retrieval, ve, nlvr, nlvr_ta),
    in the official key order, written from the official model classes' structure (not from
    our conversion). Every tensor has its own random values (LayerNorm weights around 1);
    the official ties are kept: the MLM decoder is the word embeddings and its bias, and in
    NLVR2 models the cross-attention key/value of BERT layers n+2k and n+2k+1 are one tensor."""
    import timm

    d = dict(TINY, **dims)
    H, FF, n_text, E = d["hidden"], d["ffn"], d["n_text"], d["embed"]
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def put(key: str, shape, kind: str = "w") -> None:
        if meta:
            sd[key] = torch.empty(shape, device="meta", dtype=torch.long if kind == "long" else torch.float32)
        elif kind == "ln":
            sd[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif kind == "b":
            sd[key] = 0.1 * torch.randn(shape, generator=g)
        else:
            sd[key] = 0.2 * torch.randn(shape, generator=g)

    def linear(p: str, out_f: int, in_f: int) -> None:
        put(p + ".weight", (out_f, in_f))
        put(p + ".bias", (out_f,), "b")

    def layer_norm(p: str, n: int) -> None:
        put(p + ".weight", (n,), "ln")
        put(p + ".bias", (n,), "b")

    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=img, num_classes=0, global_pool="",
                                patch_size=d["patch"], embed_dim=d["vision_width"], depth=d["depth"], num_heads=d["vision_heads"])
    vit_shapes = {k: tuple(v.shape) for k, v in vit.state_dict().items()}

    def visual(p: str) -> None:
        for k, shape in vit_shapes.items():
            put(f"{p}.{k}", shape, "ln" if re.search(r"norm\d?\.weight$", k) else "b" if k.endswith("bias") else "w")

    def bert(p: str, n_layers: int, mlm: bool) -> None:
        b = f"{p}.bert" if task == "pretrain" else p
        if meta:
            put(f"{b}.embeddings.position_ids", (1, d["max_pos"]), "long")
        else:
            sd[f"{b}.embeddings.position_ids"] = torch.arange(d["max_pos"]).unsqueeze(0)
        put(f"{b}.embeddings.word_embeddings.weight", (vocab, H))
        put(f"{b}.embeddings.position_embeddings.weight", (d["max_pos"], H))
        put(f"{b}.embeddings.token_type_embeddings.weight", (2, H))
        layer_norm(f"{b}.embeddings.LayerNorm", H)
        for i in range(n_layers):
            lp = f"{b}.encoder.layer.{i}"
            for att, width in (("attention", H), ("crossattention", d["vision_width"])):
                if att == "crossattention" and i < n_text:
                    continue
                linear(f"{lp}.{att}.self.query", H, H)
                linear(f"{lp}.{att}.self.key", H, width)
                linear(f"{lp}.{att}.self.value", H, width)
                linear(f"{lp}.{att}.output.dense", H, H)
                layer_norm(f"{lp}.{att}.output.LayerNorm", H)
            linear(f"{lp}.intermediate.dense", FF, H)
            linear(f"{lp}.output.dense", H, FF)
            layer_norm(f"{lp}.output.LayerNorm", H)
        if task in ("nlvr", "nlvr_ta"):  # share_cross_attention: layer n+2k takes layer n+2k+1's key/value
            for i in range(n_text, n_layers, 2):
                for w in ("key.weight", "key.bias", "value.weight", "value.bias"):
                    sd[f"{b}.encoder.layer.{i}.crossattention.self.{w}"] = sd[f"{b}.encoder.layer.{i + 1}.crossattention.self.{w}"]
        if mlm:
            c = f"{p}.cls.predictions"
            put(f"{c}.bias", (vocab,), "b")
            linear(f"{c}.transform.dense", H, H)
            layer_norm(f"{c}.transform.LayerNorm", H)
            sd[f"{c}.decoder.weight"] = sd[f"{b}.embeddings.word_embeddings.weight"]
            sd[f"{c}.decoder.bias"] = sd[f"{c}.bias"]

    def cls_head(p: str, n: int) -> None:
        linear(f"{p}.0", H, H)
        linear(f"{p}.2", n, H)

    n_layers = n_text + n_fusion
    if task in ("pretrain", "retrieval", "nlvr_ta"):
        put("temp", (), "w")
        if not meta:
            sd["temp"] = torch.tensor(0.07)
    if task in ("pretrain", "retrieval"):
        put("image_queue", (E, d["queue"]))
        put("text_queue", (E, d["queue"]))
        if task == "retrieval":
            if meta:
                put("idx_queue", (1, d["queue"]), "long")
            else:
                sd["idx_queue"] = torch.randint(0, 1000, (1, d["queue"]), generator=g)
        if meta:
            put("queue_ptr", (1,), "long")
        else:
            sd["queue_ptr"] = torch.tensor([8])
    visual("visual_encoder")
    bert("text_encoder", n_layers, mlm=task == "pretrain")
    if task in ("ve", "nlvr"):
        cls_head("cls_head", 3 if task == "ve" else 2)
        visual("visual_encoder_m")
        bert("text_encoder_m", n_layers, mlm=False)
        cls_head("cls_head_m", 3 if task == "ve" else 2)
        return sd
    linear("vision_proj", E, d["vision_width"])
    linear("text_proj", E, H)
    if task == "nlvr_ta":
        linear("ta_head", 3, H)
        return sd
    linear("itm_head", 2, H)
    visual("visual_encoder_m")
    linear("vision_proj_m", E, d["vision_width"])
    bert("text_encoder_m", n_layers, mlm=task == "pretrain")
    linear("text_proj_m", E, H)
    return sd


def tiny_official(task: str, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    return official_layout(task, vocab=vocab, img=TINY["img"], n_fusion=TINY_FUSION[task], seed=seed)


def paper_model(config: str, *overrides: str):
    from albef.config import load_config
    from albef.modeling import build_model

    cfg = load_config(os.path.join(REPO, config), ["model.text_encoder.config.vocab_size=30522",
                                                    "model.vision_encoder.pretrained=null", "model.text_encoder.pretrained=null",
                                                    *overrides])
    with torch.device("meta"):
        return build_model(cfg)


def tiny_model(task: str, root: str, tokenizer):
    from albef.config import load_config
    from albef.modeling import build_model

    torch.manual_seed(0)
    return build_model(load_config(os.path.join(REPO, LAYOUTS[task][2]), [f"data.synthetic.root={root}"]), tokenizer)


# --------------------------------------------------------------------------- full size, meta tensors
@pytest.mark.parametrize("task", ["retrieval", "ve", "nlvr", "nlvr_ta"])
def test_builder_writes_the_official_key_lists(task):
    """The builder of the tiny files writes exactly the official structure (checked at full size)."""
    ref = read_key_list(LAYOUTS[task][0])
    img = 256 if task == "nlvr_ta" else 384
    built = official_layout(task, img=img, n_fusion=12 if task in ("nlvr", "nlvr_ta") else 6, meta=True, **PAPER)
    assert [(k, tuple(v.shape), v.dtype) for k, v in built.items()] == [(k, tuple(v.shape), v.dtype) for k, v in ref.items()]


# (keys, mapped, dropped position_ids)
COUNTS = {"retrieval": (831, 829, 2), "ve": (824, 822, 2), "nlvr": (1136, 1134, 2), "nlvr_ta": (571, 570, 1)}


@pytest.mark.parametrize("task", ["retrieval", "ve", "nlvr", "nlvr_ta"])
def test_paper_layouts_convert_completely_and_back_in_order(task):
    keyfile, config, _ = LAYOUTS[task]
    official = read_key_list(keyfile)
    assert detect_official_task(official) == task
    model = paper_model(config)
    ours, rep = convert_official_to_ours({"model": official}, model)
    n, mapped, dropped = COUNTS[task]
    assert rep.task == task and rep.complete and not rep.warnings, format_report(rep)
    assert not rep.missing and not rep.unexpected and not rep.mismatched and not rep.interpolated and not rep.filled
    assert (len(official), len(rep.mapped), len(rep.dropped)) == (n, mapped, dropped)
    assert {why for _, why in rep.dropped} == {"position-id buffer (0..max_len-1), not a weight: transformers rebuilds it"}
    assert list(ours) == list(model.state_dict())
    if task == "nlvr":  # BERT layers 6-17 -> fusion 0-11, the head and its EMA copy
        assert ("text_encoder.encoder.layer.17.crossattention.self.key.weight", "fusion.layer.11.crossattention.self.key.weight") in rep.mapped
        assert ("cls_head_m.2.weight", "teacher.model.heads.cls.2.weight") in rep.mapped
    # ... and back: every key of the official list, in its order, with its shape and dtype
    assert detect_our_task(ours) == task
    back, rep_out = convert_ours_to_official(ours, task=task)
    assert rep_out.complete and not rep_out.dropped and not rep_out.warnings, format_report(rep_out)
    assert list(back) == list(official)
    assert all(tuple(back[k].shape) == tuple(v.shape) and back[k].dtype == v.dtype for k, v in official.items())
    assert sorted(k for k, _ in rep_out.filled) == sorted(k for k, _ in rep.dropped)  # position_ids rebuilt


@pytest.mark.parametrize("task,config", [("nlvr_ta", "configs/nlvr/ta_pretrain.yaml"), ("ve", "configs/ve/snli_ve.yaml")])
def test_released_pretraining_layout_onto_task_configs(task, config):
    """ALBEF.pth (844 keys) as the start of the TA step and of SNLI-VE: what the official
    Pretrain_nlvr.py / VE.py load, and the rest explained."""
    official = official_meta_state()
    model = paper_model(config)
    _, rep = convert_official_to_ours(official, model, task="pretrain")
    assert rep.complete and not rep.warnings, format_report(rep)
    mapped, reasons, filled = dict(rep.mapped), dict(rep.dropped), dict(rep.filled)
    assert len(rep.mapped) + len(rep.dropped) == 844 + (len(rep.mapped) - len({s for s, _ in rep.mapped}))
    head = "ta" if task == "nlvr_ta" else "cls"
    assert {t for t, why in rep.filled if "initialised fresh" in why} == {k for k in model.state_dict() if k.startswith(f"heads.{head}.")}
    assert reasons["text_encoder.cls.predictions.bias"].startswith("MLM head (text_encoder.cls.predictions): head 'mlm' is not part of this model")
    assert reasons["itm_head.weight"].startswith("ITM head (itm_head): head 'itm' is not part of this model")
    assert reasons["text_encoder_m.cls.predictions.bias"].startswith("MLM head (text_encoder_m.cls.predictions): ")
    if task == "nlvr_ta":  # 6 pretrained fusion layers -> 12, each twice; no teacher, no queue
        srcs = [s for s, t in rep.mapped if t.startswith("fusion.layer.") and t.endswith("crossattention.self.query.weight")]
        assert srcs == [f"text_encoder.bert.encoder.layer.{6 + j // 2}.crossattention.self.query.weight" for j in range(12)]
        assert mapped["temp"] == "temp" and "vision_proj.weight" in mapped
        assert reasons["visual_encoder_m.cls_token"].startswith("this model has no momentum teacher")
        assert reasons["image_queue"].startswith("this model has no momentum teacher or queue")
        assert not rep.interpolated
    else:  # VE: no projections, temperature or queue; EMA copies from the loaded weights; 256 -> 384 px
        assert reasons["vision_proj.weight"].startswith("this model has no projections")
        assert reasons["temp"].startswith("this model has no projections or temperature")
        assert reasons["vision_proj_m.weight"].startswith("this model has no projections")
        assert reasons["image_queue"].startswith("this model keeps no feature queue")
        assert filled["teacher.model.heads.cls.2.weight"].startswith("no momentum copy in the checkpoint")
        assert [x[0] for x in rep.interpolated] == ["visual_encoder.pos_embed", "visual_encoder_m.pos_embed"]


def test_vqa_layout_decoder_becomes_the_answer_head():
    official = read_key_list("vqa_384.txt")
    assert detect_official_task(official) == "vqa"
    ours, dropped, unexpected = official_to_ours_keys(official)
    assert not unexpected
    assert {why for _, why in dropped} == {"position-id buffer (0..max_len-1), not a weight: transformers rebuilds it",
                                           "tied: the same tensor as the word embeddings", "tied: the same tensor as cls.predictions.bias"}
    assert "heads.answer.encoder.layer.5.crossattention.self.key.weight" in ours and "teacher.model.heads.answer.lm.bias" in ours
    assert "fusion.layer.5.crossattention.self.key.weight" in ours and "teacher.model.fusion.layer.5.output.dense.bias" in ours
    with pytest.raises(ValueError, match="writing that layout is not supported"):
        convert_ours_to_official(ours, task="vqa")


# --------------------------------------------------------------------------- tiny: CLI, strict loads, ours -> official
@pytest.mark.slow
def test_cli_converts_tiny_official_task_files_strictly(synthetic_root, tokenizer, tmp_path):
    """tools/convert_albef_checkpoint.py IN OUT --task T --strict --config-file tiny_X.yaml for all
    four layouts, and OUT loads completely through model.weights. The four command lines
    run as four subprocesses at once; each run's exit status is its own."""
    files, procs = {}, {}
    for i, task in enumerate(LAYOUTS):
        src, out = str(tmp_path / f"{task}_official.pth"), str(tmp_path / f"{task}_ours.pth")
        official = tiny_official(task, len(tokenizer), seed=10 + i)
        torch.save({"model": official, "epoch": 4, "config": {"image_res": 32}}, src)
        files[task] = (official, out)
        procs[task] = subprocess.Popen(
            [sys.executable, TOOL, src, out, "--task", task, "--strict", "--config-file", os.path.join(REPO, LAYOUTS[task][2]),
             f"data.synthetic.root={synthetic_root}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=str(tmp_path))
    stdout = ""
    for task, proc in procs.items():
        out_text, err_text = proc.communicate(timeout=300)
        assert proc.returncode == 0, (task, err_text[-3000:])
        stdout += out_text
    r = SimpleNamespace(stdout=stdout)
    for task in LAYOUTS:
        assert f"({task} layout)" in r.stdout
    assert r.stdout.count("-> complete") == 4 and "INCOMPLETE" not in r.stdout
    for task, (official, out) in files.items():
        model = tiny_model(task, synthetic_root, tokenizer)
        rep = ALBEFCheckpointer(model).load_weights(out)
        assert rep.complete and not rep.dropped, format_report(rep)
        sd = model.state_dict()
        assert torch.equal(sd["fusion.layer.0.crossattention.self.value.weight"],
                           official["text_encoder.encoder.layer.1.crossattention.self.value.weight"])
        head = {"retrieval": ("heads.itm.linear.weight", "itm_head.weight"), "ve": ("heads.cls.2.weight", "cls_head.2.weight"),
                "nlvr": ("teacher.model.heads.cls.0.bias", "cls_head_m.0.bias"), "nlvr_ta": ("heads.ta.weight", "ta_head.weight")}[task]
        assert torch.equal(sd[head[0]], official[head[1]]), task


@pytest.mark.parametrize("task", ["retrieval", "ve", "nlvr", "nlvr_ta"])
def test_tiny_round_trips_and_our_task_models_write_the_official_layout(task, synthetic_root, tokenizer):
    official = tiny_official(task, len(tokenizer))
    model = tiny_model(task, synthetic_root, tokenizer)
    ours, rep = convert_official_to_ours(official, model)
    assert rep.complete and not rep.warnings, format_report(rep)
    model.load_state_dict(ours, strict=True)
    back, rep_out = convert_ours_to_official(model, task=task)
    assert rep_out.complete and not rep_out.dropped and not rep_out.unexpected
    assert list(back) == list(official)  # the official order
    for k, v in official.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    # a freshly built model of ours for this task: its heads name the layout, which has the official structure
    fresh = tiny_model(task, synthetic_root, tokenizer).state_dict()
    assert detect_our_task(fresh) == ("pretrain" if task == "retrieval" and any(k.startswith("heads.mlm.") for k in fresh) else task)
    out, rep_fresh = convert_ours_to_official(fresh, task=task)
    assert rep_fresh.complete and [(k, v.shape) for k, v in out.items()] == [(k, v.shape) for k, v in official.items()]


def test_pretraining_file_starts_the_ta_step_and_ve(synthetic_root, tokenizer):
    """An official pretraining file (ALBEF.pth layout) onto the tiny TA model (fusion layers
    duplicated) and the tiny VE model (fresh head, the rest of pretraining dropped)."""
    pre = tiny_official("pretrain", len(tokenizer), seed=3)
    ta = tiny_model("nlvr_ta", synthetic_root, tokenizer)
    fresh_head = ta.state_dict()["heads.ta.weight"].clone()
    ours, rep = convert_official_to_ours(pre, ta)
    assert rep.complete and not rep.warnings, format_report(rep)
    ta.load_state_dict(ours, strict=True)
    sd = ta.state_dict()
    for k in [k for k in sd if k.startswith("fusion.layer.0.")]:
        rest = k[len("fusion.layer.0."):]
        src = pre[f"text_encoder.bert.encoder.layer.1.{rest}"]  # the pretrained fusion layer 0 (BERT layer 1)
        assert torch.equal(sd[k], src) and torch.equal(sd[f"fusion.layer.1.{rest}"], src), rest
    assert torch.equal(sd["heads.ta.weight"], fresh_head)
    assert ta.fusion.layer[0].crossattention.self.key.weight is ta.fusion.layer[1].crossattention.self.key.weight

    ve = tiny_model("ve", synthetic_root, tokenizer)
    fresh = {k: v.clone() for k, v in ve.state_dict().items() if "heads.cls." in k}
    ours, rep = convert_official_to_ours(pre, ve)
    assert rep.complete and not rep.warnings, format_report(rep)
    reasons = dict(rep.dropped)
    for k in ("text_encoder.cls.predictions.bias", "text_encoder_m.cls.predictions.transform.dense.weight", "itm_head.bias"):
        assert "is not part of this model" in reasons[k], k
    for k in ("vision_proj.weight", "text_proj_m.bias", "temp"):
        assert "has no projections" in reasons[k], k
    assert "keeps no feature queue" in reasons["text_queue"]
    ve.load_state_dict(ours, strict=True)
    for k, v in fresh.items():  # the head stays as initialised, its EMA copy is the same
        assert torch.equal(ve.state_dict()[k], v), k
    assert torch.equal(ve.state_dict()["teacher.model.vision_encoder.vit.pos_embed"], pre["visual_encoder_m.pos_embed"])


# --------------------------------------------------------------------------- parity of the task heads
def _ln(x, sd, p):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps=1e-12)


def _lin(x, sd, p):
    return F.linear(x, sd[p + ".weight"], sd[p + ".bias"])


def _attention(sd, p, x, context, add_mask, heads):
    b, l, h = x.shape
    d = h // heads

    def split(t):
        return t.view(b, -1, heads, d).transpose(1, 2)

    q, k, v = split(_lin(x, sd, p + "self.query")), split(_lin(context, sd, p + "self.key")), split(_lin(context, sd, p + "self.value"))
    probs = (q @ k.transpose(-1, -2) / math.sqrt(d) + add_mask).softmax(-1)
    out = (probs @ v).transpose(1, 2).reshape(b, l, h)
    return _ln(_lin(out, sd, p + "output.dense") + x, sd, p + "output.LayerNorm")


def official_bert(sd, p, ids, mask, images, n_text, heads):
    """The official xbert BertModel in multi_modal mode, on the keys under ``p``: embeddings
    (token type 0), post-LN layers; layer l >= n_text cross-attends to ``images[(l - n_text) % len(images)]``."""
    e = p + "embeddings."
    x = (sd[e + "word_embeddings.weight"][ids] + sd[e + "position_embeddings.weight"][sd[e + "position_ids"][0, : ids.shape[1]]]
         + sd[e + "token_type_embeddings.weight"][0])
    x = _ln(x, sd, e + "LayerNorm")
    text_mask = (1.0 - mask[:, None, None, :].float()) * -10000.0
    n_layers = len({m.group(1) for k in sd if (m := re.match(re.escape(p) + r"encoder\.layer\.(\d+)\.", k))})
    for i in range(n_layers):
        lp = f"{p}encoder.layer.{i}."
        x = _attention(sd, lp + "attention.", x, x, text_mask, heads)
        if i >= n_text:
            img = images[(i - n_text) % len(images)]
            img_mask = (1.0 - torch.ones(img.shape[:2])[:, None, None, :]) * -10000.0  # image_atts: all ones
            x = _attention(sd, lp + "crossattention.", x, img, img_mask, heads)
        x = _ln(_lin(F.gelu(_lin(x, sd, lp + "intermediate.dense")), sd, lp + "output.dense") + x, sd, lp + "output.LayerNorm")
    return x


def official_vit(sd, p, images):
    """``visual_encoder`` (official models/vit.py) as a timm ViT of the same shape holding the official weights."""
    import timm

    vit = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=TINY["img"], num_classes=0, global_pool="",
                            patch_size=TINY["patch"], embed_dim=TINY["vision_width"], depth=TINY["depth"], num_heads=TINY["vision_heads"])
    vit.load_state_dict({k[len(p):]: v for k, v in sd.items() if k.startswith(p)}, strict=True)
    return vit.eval().forward_features(images)


def _text_batch(vocab: int, b: int = 4, length: int = 12):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(4, vocab, (b, length), generator=g)
    ids[:, 0] = 2
    mask = torch.ones(b, length, dtype=torch.long)
    for i, n in enumerate((12, 9, 5, 11)[:b]):  # rows padded to different lengths
        mask[i, n:] = 0
        ids[i, n:] = 0
    return ids, mask, g


def _loaded(task, synthetic_root, tokenizer, official):
    model = tiny_model(task, synthetic_root, tokenizer)
    ours, rep = convert_official_to_ours(official, model)
    assert rep.complete, format_report(rep)
    model.load_state_dict(ours, strict=True)
    return model.float().eval(), rep


@torch.no_grad()
def test_snli_ve_head_matches_the_official_computation(synthetic_root, tokenizer):
    official = tiny_official("ve", len(tokenizer), seed=21)
    model, _ = _loaded("ve", synthetic_root, tokenizer, official)
    ids, mask, g = _text_batch(len(tokenizer))
    image = torch.randn(4, 3, 32, 32, generator=g)
    ctx = model.context({"image": image, "input_ids": ids, "attention_mask": mask}, {"fused", "teacher_fused"})
    fused = lambda teacher: ctx.teacher.fused if teacher else ctx.fused  # noqa: E731
    errors = {}
    for p, head_p, teacher in (("", "cls_head", False), ("_m", "cls_head_m", True)):
        img = official_vit(official, f"visual_encoder{p}.", image)
        hidden = official_bert(official, f"text_encoder{p}.", ids, mask, [img], TINY["n_text"], TINY["heads"])
        ref = _lin(F.relu(_lin(hidden[:, 0], official, f"{head_p}.0")), official, f"{head_p}.2")
        ours = model.head("cls", teacher=teacher)(fused(teacher)[:, 0])
        assert ours.shape == ref.shape == (4, 3)
        errors[f"fused{p}"] = rel_err(fused(teacher), hidden)
        errors[f"logits{p}"] = rel_err(ours, ref)
    assert all(e < TOL for e in errors.values()), errors


@torch.no_grad()
@pytest.mark.parametrize("task", ["nlvr", "nlvr_ta"])
def test_two_image_heads_match_the_official_computation(task, synthetic_root, tokenizer):
    """NLVR2 (cls_head 2-way, and its momentum copy) and text assignment (ta_head 3-way): the
    18-layer-style BERT whose fusion layers alternate image 0 / image 1 with shared key/value."""
    official = tiny_official(task, len(tokenizer), seed=22)
    model, _ = _loaded(task, synthetic_root, tokenizer, official)
    ids, mask, g = _text_batch(len(tokenizer))
    images = torch.randn(4, 2, 3, 32, 32, generator=g)  # [B, 2 images, ...]
    variants = [("", False)] + ([("_m", True)] if task == "nlvr" else [])
    ctx = model.context({"image": images, "input_ids": ids, "attention_mask": mask}, {"fused", "teacher_fused"} if task == "nlvr" else {"fused"})
    fused = lambda teacher: ctx.teacher.fused if teacher else ctx.fused  # noqa: E731
    errors = {}
    for p, teacher in variants:
        embeds = official_vit(official, f"visual_encoder{p}.", torch.cat([images[:, 0], images[:, 1]]))
        image0, image1 = torch.split(embeds, 4)
        hidden = official_bert(official, f"text_encoder{p}.", ids, mask, [image0, image1], TINY["n_text"], TINY["heads"])
        if task == "nlvr":
            ref = _lin(F.relu(_lin(hidden[:, 0], official, f"cls_head{p}.0")), official, f"cls_head{p}.2")
            ours = model.head("cls", teacher=teacher)(fused(teacher)[:, 0])
        else:
            ref = _lin(hidden[:, 0], official, "ta_head")
            ours = model.head("ta")(fused(False)[:, 0])
        assert ours.shape == ref.shape == (4, 2 if task == "nlvr" else 3)
        errors[f"fused{p}"] = rel_err(fused(teacher), hidden)
        errors[f"logits{p}"] = rel_err(ours, ref)
    # the routing matters: the images swapped give other logits
    swapped = model.context({"image": images.flip(1), "input_ids": ids, "attention_mask": mask}, {"fused"}).fused
    assert rel_err(swapped, ctx.fused) > 1e-3
    assert all(e < TOL for e in errors.values()), errors


def test_nlvr_shared_cross_attention_key_value(synthetic_root, tokenizer):
    official = tiny_official("nlvr", len(tokenizer), seed=23)
    model, rep = _loaded("nlvr", synthetic_root, tokenizer, official)
    assert not rep.warnings
    for fusion, p in ((model.fusion, ""), (model.teacher.module("fusion"), "_m")):
        a, b = fusion.layer[0].crossattention.self, fusion.layer[1].crossattention.self
        for name in ("key", "value"):
            assert getattr(a, name).weight is getattr(b, name).weight and getattr(a, name).bias is getattr(b, name).bias
            for w in ("weight", "bias"):  # BERT layers 1 and 2 (fusion layers 0 and 1) hold one tensor in the file too
                assert torch.equal(getattr(a, name).__getattr__(w), official[f"text_encoder{p}.encoder.layer.2.crossattention.self.{name}.{w}"])
        assert a.query.weight is not b.query.weight and not torch.equal(a.query.weight, b.query.weight)

    # a file whose two copies disagree: reported, and the odd layer wins (official
    # share_cross_attention: module_0.weight = module_1.weight)
    bad = dict(official)
    even = "text_encoder.encoder.layer.1.crossattention.self.key.weight"
    odd = "text_encoder.encoder.layer.2.crossattention.self.key.weight"
    bad[even] = official[even] + 1.0
    model = tiny_model("nlvr", synthetic_root, tokenizer)
    ours, rep = convert_official_to_ours(bad, model)
    assert rep.complete
    assert [w for w in rep.warnings if even in w and odd in w and f"{odd} wins" in w], rep.warnings
    assert len(rep.warnings) == 1
    model.load_state_dict(ours, strict=True)
    assert torch.equal(model.fusion.layer[0].crossattention.self.key.weight, official[odd])
    assert torch.equal(ours["fusion.layer.0.crossattention.self.key.weight"], official[odd])
    # and ours -> official warns about a model of ours whose pair differs (not shared)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["fusion.layer.0.crossattention.self.value.bias"] += 1.0
    _, rep_out = convert_ours_to_official(sd, task="nlvr")
    assert any("text_encoder.encoder.layer.1.crossattention.self.value.bias" in w and "share_cross_attention" in w
               for w in rep_out.warnings), rep_out.warnings
