"""The task layer's model side: heads built by key, the classification and text-assignment
objectives against hand computations, the two-image fusion (routing, shared key/value,
declared weight map), the teacher running the student's own functions, and fitting a
pretraining checkpoint to every task model."""
from __future__ import annotations

import math
from types import SimpleNamespace
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import REPO
from albef.modeling.context import StepContext
from albef.modeling.teachers.base import Teacher, TeacherOutput
from albef.modeling.fusion.cross_attention import CrossAttentionFusion
from albef.modeling.fusion.visual import VisualInput
from albef.modeling.heads.classifier import LinearClassifierHead, MLPClassifierHead
from albef.modeling.objectives.classification import ClassificationLoss
from albef.modeling.objectives.text_assignment import TextAssignmentLoss

# its tests share module fixtures (a trained model, generated data): one xdist worker builds them once
pytestmark = pytest.mark.xdist_group("task_models")


CFG = {t: os.path.join(REPO, "tests", "configs", f"tiny_{t}.yaml") for t in ("retrieval", "ve", "nlvr", "ta")}


def _task_cfg(task, synthetic_root, tmp_path, *overrides):
    from albef.config import load_config

    return load_config(CFG[task], [f"data.synthetic.root={synthetic_root}", f"output_dir={tmp_path / task}", *overrides])


# --------------------------------------------------------------------------- heads
def test_heads_have_the_official_shapes_and_momentum_flags():
    cls = MLPClassifierHead(num_classes=3, hidden_size=8)
    assert [k for k in cls.state_dict()] == ["0.weight", "0.bias", "2.weight", "2.bias"]  # official cls_head.{0,2}
    assert isinstance(cls[1], nn.ReLU) and cls[2].out_features == 3 and cls.momentum
    ta = LinearClassifierHead(num_classes=3, hidden_size=8)
    assert set(ta.state_dict()) == {"weight", "bias"} and not ta.momentum  # official ta_head, no momentum copy
    x = torch.randn(5, 8)
    with torch.no_grad():
        want = cls[2](torch.relu(cls[0](x)))
    torch.testing.assert_close(cls(x), want)
    with pytest.raises(ValueError):
        MLPClassifierHead(num_classes=1)


def test_heads_are_built_only_when_an_objective_uses_them(tiny_cfg, tokenizer):
    from albef.modeling import build_model
    from albef.modeling.meta_arch.albef import MissingHeadError

    m = build_model(tiny_cfg("model.objectives.mlm=null"), tokenizer)
    assert set(m.heads) == {"itm"} and not any(k.startswith(("heads.mlm", "teacher.model.heads.mlm")) for k in m.state_dict())
    with pytest.raises(MissingHeadError, match=r"no head 'mlm' \(model.heads.mlm\); its heads: \['itm'\]"):
        m.head("mlm")
    assert m.head("itm", teacher=True) is None  # the ITM head has no EMA copy (official: no itm_head_m)
    with pytest.raises(MissingHeadError, match=r"the objectives use head\(s\) \['cls'\]"):
        build_model(tiny_cfg("model.objectives.ve={name: ClassificationLoss, head: cls}"), tokenizer)


# --------------------------------------------------------------------------- classification objective
def _cls_ctx(logits, logits_m, labels, alpha):
    """A StepContext whose fused [CLS] *is* the logits (identity head), the teacher's likewise."""
    b = logits.shape[0]
    batch = {"label": labels, "attention_mask": torch.ones(b, 1, dtype=torch.long), "image": torch.zeros(b, 3, 2, 2)}
    teacher = TeacherOutput(fused=logits_m[:, None, :], modules=SimpleNamespace(heads={"cls": nn.Identity()}))
    return StepContext(batch, fused=logits[:, None, :], heads={"cls": nn.Identity()}, teacher=teacher)


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_classification_loss_is_ce_mixed_with_the_teacher_prediction(alpha):
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]], requires_grad=True)
    logits_m = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, -1.0]])
    labels = torch.tensor([0, 2])
    loss = ClassificationLoss(head="cls")(_cls_ctx(logits, logits_m, labels, alpha), alpha or None)
    want = 0.0
    for r in range(2):
        z, zm = logits[r].tolist(), logits_m[r].tolist()
        lse = math.log(sum(math.exp(v) for v in z))
        ce = lse - z[labels[r]]
        pm = [math.exp(v) / sum(math.exp(u) for u in zm) for v in zm]
        soft = -sum(p * (v - lse) for p, v in zip(pm, z))
        want += ((1 - alpha) * ce + alpha * soft) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_classification_loss_without_teacher_head_is_plain_ce():
    logits = torch.tensor([[2.0, -1.0], [0.1, 0.2]])
    ctx = _cls_ctx(logits, logits * 0, torch.tensor([1, 0]), alpha=0.4)
    ctx.teacher.modules = SimpleNamespace(heads={})  # the teacher keeps no copy of the head: the model hands no alpha
    teacher = Teacher(alpha=0.4)
    teacher.attach(nn.Module(), [])
    obj = ClassificationLoss()
    alpha = teacher.objective_alpha(obj.alpha, obj.heads_used())
    assert alpha is None
    assert obj(ctx, alpha).item() == pytest.approx(F.cross_entropy(logits, torch.tensor([1, 0])).item())


# --------------------------------------------------------------------------- text assignment
def test_text_assignment_pairs_and_labels():
    """label 0: (own, neg); 1: (neg, own); 2: two distinct negatives; never the own image or a same-id image as a negative."""
    torch.manual_seed(0)
    obj = TextAssignmentLoss(neither_prob=1 / 3)
    b = 6
    feat = F.normalize(torch.randn(b, 4), dim=1)
    ids = torch.tensor([0, 0, 1, 2, 3, 4])
    seen = set()
    for _ in range(50):
        s0, s1, label, valid = obj.assign(feat, ids)
        assert valid.all()
        own = torch.arange(b)
        for i in range(b):
            a, c, lab = int(s0[i]), int(s1[i]), int(label[i])
            seen.add(lab)
            if lab == 0:
                assert a == i and ids[c] != ids[i]
            elif lab == 1:
                assert c == i and ids[a] != ids[i]
            else:
                assert a != c and ids[a] != ids[i] and ids[c] != ids[i]
        assert ((label == 0) == (s0 == own)).all()
    assert seen == {0, 1, 2}


def test_text_assignment_rows_without_candidates_are_dropped_and_counted():
    obj = TextAssignmentLoss(neither_prob=1.0)
    feat = F.normalize(torch.randn(3, 4), dim=1)
    s0, s1, label, valid = obj.assign(feat, torch.tensor([5, 5, 5]))  # every image is the same content
    assert not valid.any()
    _, _, label, valid = obj.assign(feat, torch.tensor([5, 5, 6]))
    assert valid.all()
    assert (label[:2] != 2).all()  # rows 0 and 1 have one candidate (image 2): never "neither"
    assert label[2] == 2  # row 2 has two (neither_prob=1)


def test_text_assignment_loss_fuses_the_chosen_pair(tiny_cfg, tokenizer, synthetic_root, tmp_path):
    from albef.modeling import build_model

    torch.manual_seed(0)
    model = build_model(_task_cfg("ta", synthetic_root, tmp_path), tokenizer)
    assert model.fusion.num_visual_inputs == 2 and set(model.heads) == {"ta"}
    caps = ["a red circle left of a blue square", "a green triangle above a red square", "a blue square below a green circle"]
    enc = tokenizer(caps, padding="longest", return_tensors="pt", return_token_type_ids=False)
    batch = {"image": torch.randn(3, 3, 32, 32), "image_id": torch.arange(3), **enc}
    out = model(batch)
    assert set(k for k in out if k.startswith("loss_")) == {"loss_ta"} and float(out["dropped_ta_rows"]) == 0.0
    out["loss_ta"].backward()
    assert model.heads["ta"].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.fusion.parameters())
    assert "state" not in out  # no teacher features: nothing to enqueue


# --------------------------------------------------------------------------- two-image fusion
def _fusion(**kw):
    torch.manual_seed(0)
    f = CrossAttentionFusion(num_layers=4, num_heads=2, intermediate_size=16, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0, hidden_size=8, encoder_width=6, **kw).eval()
    with torch.no_grad():
        for p in f.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return f


def test_two_image_fusion_routes_layer_i_to_image_i_mod_2():
    f = _fusion(num_visual_inputs=2)
    x, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.long)
    img0, img1 = torch.randn(2, 3, 6), torch.randn(2, 4, 6)
    got = f(x, mask, VisualInput((img0, img1), (None, None)))
    want = x
    for i, layer in enumerate(f.layer):
        want = layer(want, mask, (img0, img1)[i % 2], None)
    torch.testing.assert_close(got, want)
    swapped = f(x, mask, VisualInput((img1, img0), (None, None)))
    assert not torch.allclose(got, swapped)  # the order of the images matters
    with pytest.raises(ValueError, match="built for 2 visual input"):
        f(x, mask, img0)


def test_shared_cross_attention_key_value_between_layer_pairs():
    f = _fusion(num_visual_inputs=2, share_cross_kv=True)
    for k in (0, 2):
        a, b = f.layer[k].crossattention.self, f.layer[k + 1].crossattention.self
        assert a.key.weight is b.key.weight and a.value.bias is b.value.bias
        assert a.query.weight is not b.query.weight  # only key and value are shared
    assert f.layer[0].crossattention.self.key.weight is not f.layer[2].crossattention.self.key.weight
    sd = f.state_dict()
    assert "layer.0.crossattention.self.key.weight" in sd and "layer.1.crossattention.self.key.weight" in sd
    n_shared = sum(p.numel() for p in f.parameters())
    n_plain = sum(p.numel() for p in _fusion(num_visual_inputs=2).parameters())
    assert n_plain - n_shared == 2 * 2 * (8 * 6 + 8)  # two pairs x (key + value)
    with pytest.raises(ValueError, match="even num_layers"):
        CrossAttentionFusion(num_layers=3, share_cross_kv=True, hidden_size=8, encoder_width=6, num_heads=2)


def test_fusion_weight_map_duplicates_each_layer_for_the_two_images():
    f = _fusion(num_visual_inputs=2, share_cross_kv=True)
    src = [f"layer.{i}.attention.self.query.weight" for i in range(2)]
    m = f.weight_map(src)
    assert m["layer.0.attention.self.query.weight"] == "layer.0.attention.self.query.weight"
    assert m["layer.1.attention.self.query.weight"] == "layer.0.attention.self.query.weight"
    assert m["layer.3.output.dense.bias"] == "layer.1.output.dense.bias"
    assert f.weight_map([f"layer.{i}.x" for i in range(4)]) == {}  # same layout: one to one
    assert _fusion().weight_map(src) == {}  # one image: nothing to duplicate


# --------------------------------------------------------------------------- teacher runs the student's code
def test_teacher_runs_the_students_functions_on_the_ema_weights(synthetic_root, tmp_path, tokenizer):
    from albef.modeling import build_model

    torch.manual_seed(0)
    model = build_model(_task_cfg("nlvr", synthetic_root, tmp_path), tokenizer).eval()
    assert model.momentum_paths() == ["vision_encoder", "text_encoder", "fusion", "heads.cls"]
    with torch.no_grad():
        for p in model.teacher.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # teacher != student
    caps = ["we see a red circle in the left picture", "we see a blue square in neither picture"]
    enc = tokenizer(caps, padding="longest", return_tensors="pt", return_token_type_ids=False)
    batch = {"image": torch.randn(2, 2, 3, 32, 32), **enc}
    ctx = model.context(batch, {"fused", "teacher_fused"})
    student = model.head("cls")(ctx.fused[:, 0])
    teacher = model.head("cls", teacher=True)(ctx.teacher.fused[:, 0])
    assert model.vision_encoder is not model.teacher.module("vision_encoder")  # swapped back after the call
    # the same computation written out with the teacher's modules
    t = model.teacher.model
    with torch.no_grad():
        imgs = batch["image"].transpose(0, 1).flatten(0, 1)
        tokens = t["vision_encoder"](imgs).view(2, 2, -1, t["vision_encoder"].embed_dim)
        text = t["text_encoder"](batch["input_ids"], batch["attention_mask"])
        fused = t["fusion"](text, batch["attention_mask"], VisualInput((tokens[0], tokens[1]), (None, None)))
        want = t["heads"]["cls"](fused[:, 0])
    torch.testing.assert_close(teacher, want)
    assert not torch.allclose(student, teacher)
    assert not teacher.requires_grad


# --------------------------------------------------------------------------- fitting a pretraining checkpoint
@pytest.fixture(scope="module")
def pretrained_ckpt(tmp_path_factory, synthetic_root):
    """A tiny pretraining checkpoint of ours (the default job's layout, tiny sizes)."""
    from albef.checkpoint import ALBEFCheckpointer
    from albef.config import load_config
    from albef.data.tokenization import build_tokenizer
    from albef.modeling import build_model

    cfg = load_config(os.path.join(REPO, "tests", "configs", "tiny.yaml"), [f"data.synthetic.root={synthetic_root}"])
    torch.manual_seed(3)
    model = build_model(cfg, build_tokenizer(os.path.join(synthetic_root, "vocab.txt")))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # the teacher differs from the student, as after training
        model.teacher.queue.idx_queue.fill_(7)
    d = tmp_path_factory.mktemp("pre")
    ALBEFCheckpointer(model, str(d)).save("model_final")
    return str(d / "model_final.pth"), model.state_dict()


def _load_into(task, synthetic_root, tmp_path, tokenizer, path, *overrides):
    from albef.checkpoint import ALBEFCheckpointer
    from albef.modeling import build_model

    torch.manual_seed(11)
    model = build_model(_task_cfg(task, synthetic_root, tmp_path, *overrides), tokenizer)
    report = ALBEFCheckpointer(model).load_weights(path, strict=True)
    return model, report


def test_pretraining_checkpoint_into_the_retrieval_model(pretrained_ckpt, synthetic_root, tmp_path, tokenizer):
    path, src = pretrained_ckpt
    model, rep = _load_into("retrieval", synthetic_root, tmp_path, tokenizer, path)
    assert rep.complete
    sd = model.state_dict()
    for k, v in sd.items():
        if k != "teacher.queue.idx_queue":
            assert torch.equal(v, src[k]), k  # every weight, the teacher's and the queue included
    dropped = dict(rep.dropped)
    assert "heads.mlm.bias" in dropped and "not part of this model" in dropped["heads.mlm.bias"]  # pretraining-only: reported unused
    assert (sd["teacher.queue.idx_queue"] == -100).all()  # ids of the pretraining data do not name this data set
    assert any(k == "teacher.queue.idx_queue" and "reset" in why for k, why in rep.filled)


def test_pretraining_checkpoint_into_the_ve_model(pretrained_ckpt, synthetic_root, tmp_path, tokenizer):
    path, src = pretrained_ckpt
    model, rep = _load_into("ve", synthetic_root, tmp_path, tokenizer, path)
    assert rep.complete and model.vision_proj is None and model.temp is None
    sd = model.state_dict()
    fresh = {k for k, why in rep.filled if "initialised fresh" in why}
    assert fresh == {"heads.cls.0.weight", "heads.cls.0.bias", "heads.cls.2.weight", "heads.cls.2.bias"}
    for k in ("vision_encoder.vit.pos_embed", "fusion.layer.0.crossattention.self.key.weight", "teacher.model.fusion.layer.0.output.dense.bias"):
        assert torch.equal(sd[k], src[k]), k
    for k in fresh:  # the teacher's copy of the fresh head is the student's (copy_params after loading)
        assert torch.equal(sd[f"teacher.model.{k}"], sd[k])
    dropped = dict(rep.dropped)
    assert "projections" in dropped["vision_proj.weight"] and "no feature queue" in dropped["teacher.queue.image_queue"]


def test_pretraining_checkpoint_into_the_nlvr_model_duplicates_fusion_layers(pretrained_ckpt, synthetic_root, tmp_path, tokenizer):
    path, src = pretrained_ckpt
    model, rep = _load_into("nlvr", synthetic_root, tmp_path, tokenizer, path)
    assert rep.complete
    sd = model.state_dict()
    for j in range(2):  # 1 pretrained fusion layer -> layers 0 (left image) and 1 (right image)
        for part in ("attention.self.query.weight", "crossattention.self.key.weight", "output.LayerNorm.bias"):
            assert torch.equal(sd[f"fusion.layer.{j}.{part}"], src[f"fusion.layer.0.{part}"])
            assert torch.equal(sd[f"teacher.model.fusion.layer.{j}.{part}"], src[f"teacher.model.fusion.layer.0.{part}"])
    assert model.fusion.layer[0].crossattention.self.key.weight is model.fusion.layer[1].crossattention.self.key.weight


def test_loading_a_checkpoint_without_ema_weights_copies_the_loaded_ones(pretrained_ckpt, synthetic_root, tmp_path, tokenizer):
    """The official NLVR.py copies the teacher before loading (from random weights); here it is copied after."""
    from albef.checkpoint import ALBEFCheckpointer

    path, src = pretrained_ckpt
    student_only = {k: v for k, v in src.items() if not k.startswith("teacher.")}
    p2 = str(tmp_path / "student_only.pth")
    torch.save({"model": student_only}, p2)
    model, rep = _load_into("nlvr", synthetic_root, tmp_path, tokenizer, p2)
    sd = model.state_dict()
    assert rep.complete
    assert torch.equal(sd["teacher.model.vision_encoder.vit.cls_token"], src["vision_encoder.vit.cls_token"])
    assert torch.equal(sd["teacher.model.fusion.layer.1.intermediate.dense.weight"], src["fusion.layer.0.intermediate.dense.weight"])
    assert any("copied from the loaded online weights" in why for _, why in rep.filled)
    ALBEFCheckpointer(model).load_weights(p2)  # idempotent


def test_resolution_change_interpolates_position_embeddings(pretrained_ckpt, synthetic_root, tmp_path, tokenizer):
    from albef.checkpoint.pos_embed import interpolate_pos_embed

    path, src = pretrained_ckpt
    model, rep = _load_into("ve", synthetic_root, tmp_path, tokenizer, path, "model.vision_encoder.img_size=48")
    assert rep.complete
    want = interpolate_pos_embed(src["vision_encoder.vit.pos_embed"], 36)  # 4x4 -> 6x6 patches
    assert torch.equal(model.state_dict()["vision_encoder.vit.pos_embed"], want)
    assert {k for k, _, _ in rep.interpolated} == {"vision_encoder.vit.pos_embed", "teacher.model.vision_encoder.vit.pos_embed"}


def test_a_queue_of_another_size_starts_fresh_and_an_unexplained_key_is_an_error(pretrained_ckpt, synthetic_root, tmp_path, tokenizer):
    from albef.checkpoint import CheckpointMismatchError

    path, src = pretrained_ckpt
    model, rep = _load_into("retrieval", synthetic_root, tmp_path, tokenizer, path, "model.teacher.queue_size=10")
    assert rep.complete and model.teacher.queue.ptr.tolist() == [0]
    assert any(k == "teacher.queue.image_queue" and "another size" in why for k, why in rep.dropped)
    bad = dict(src)
    bad["fusion.layer.0.extra.weight"] = torch.zeros(2)
    p2 = str(tmp_path / "bad.pth")
    torch.save({"model": bad}, p2)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected .*fusion.layer.0.extra.weight"):
        _load_into("retrieval", synthetic_root, tmp_path, tokenizer, p2)


def test_checkpoints_written_before_the_head_layer_still_load(pretrained_ckpt, tiny_cfg, tokenizer, tmp_path):
    from albef.checkpoint import ALBEFCheckpointer
    from albef.checkpoint.adapt import upgrade_legacy_keys
    from albef.modeling import build_model

    path, src = pretrained_ckpt
    legacy = {}
    for k, v in src.items():
        k = k.replace("heads.itm.", "objectives.itm.itm_head.").replace("teacher.model.heads.mlm.", "teacher.model.mlm_head.")
        legacy[k.replace("heads.mlm.", "objectives.mlm.mlm_head.") if k.startswith("heads.mlm.") else k] = v
    assert "objectives.itm.itm_head.linear.weight" in legacy and "teacher.model.mlm_head.bias" in legacy
    assert set(upgrade_legacy_keys(legacy)) == set(src)
    torch.save({"model": legacy, "iteration": 3}, str(tmp_path / "model_final.pth"))
    model = build_model(tiny_cfg(), tokenizer)
    ALBEFCheckpointer(model, str(tmp_path)).load(str(tmp_path / "model_final.pth"))  # --resume path: strict
    for k, v in model.state_dict().items():
        assert torch.equal(v, src[k]), k


# --------------------------------------------------------------------------- public BERT weights through the key maps
def test_bert_public_weights_reach_a_two_image_fusion_through_its_declared_map(tmp_path, synthetic_root, tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    from albef.modeling import build_model

    torch.manual_seed(5)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32)
    bert = BertForMaskedLM(cfg)
    bert.save_pretrained(str(tmp_path / "bert"))
    ref = bert.state_dict()
    model = build_model(_task_cfg("nlvr", synthetic_root, tmp_path, f"model.text_encoder.pretrained={tmp_path / 'bert'}"), tokenizer)
    sd = model.state_dict()
    for j in range(2):  # BERT layer 1 -> fusion layers 0 and 1 (self-attention and FFN), cross-attention fresh
        assert torch.equal(sd[f"fusion.layer.{j}.attention.self.key.weight"], ref["bert.encoder.layer.1.attention.self.key.weight"])
        assert torch.equal(sd[f"fusion.layer.{j}.output.dense.weight"], ref["bert.encoder.layer.1.output.dense.weight"])
    assert torch.equal(sd["text_encoder.bert.encoder.layer.0.output.dense.weight"], ref["bert.encoder.layer.0.output.dense.weight"])
    assert torch.equal(sd["teacher.model.fusion.layer.1.attention.self.key.weight"], ref["bert.encoder.layer.1.attention.self.key.weight"])


# --------------------------------------------------------------------------- the step's encoding order
def _encoder_order(model, batch):
    """The order in which the student's and the teacher's encoders and fusion run in ``model(batch)``."""
    order, hooks = [], []
    named = {"text": model.text_encoder, "image": model.vision_encoder, "fusion": model.fusion}
    t = model.teacher.model
    if t is not None:
        named.update({"t_text": t.text_encoder, "t_image": t.vision_encoder, "t_fusion": t.fusion})
    for name, mod in named.items():
        hooks.append(mod.register_forward_pre_hook(lambda m, a, name=name: order.append(name)))
    try:
        model(batch)
    finally:
        for h in hooks:
            h.remove()
    return order


def test_the_step_encodes_in_the_order_its_objectives_used_to(tiny_cfg, tokenizer, synthetic_root, tmp_path):
    """Dropout draws its masks in the order the encoders run, so the one-pass context keeps the
    order of the lazily encoding objectives it replaced: with contrast (pretraining) student
    image, teacher image and text, student text; for the fused-state objectives (VE) student
    text, image and fusion, then the teacher's text, image and fusion."""
    from albef.modeling import build_model

    caps = ["a red circle left of a blue square", "a green triangle above a red square"]
    enc = tokenizer(caps, padding="longest", return_tensors="pt", return_token_type_ids=False)
    torch.manual_seed(0)
    pre = build_model(tiny_cfg(), tokenizer)
    pre.set_distillation_scale(1.0)
    batch = {"image": torch.randn(2, 3, 32, 32), "image_id": torch.arange(2), **enc}
    order = _encoder_order(pre, batch)
    assert order[:4] == ["image", "t_image", "t_text", "text"], order
    ve = build_model(_task_cfg("ve", synthetic_root, tmp_path), tokenizer)
    ve.set_distillation_scale(1.0)
    order = _encoder_order(ve, {**batch, "label": torch.tensor([0, 2])})
    assert order == ["text", "image", "fusion", "t_text", "t_image", "t_fusion"], order


def test_an_objective_without_an_alpha_argument_is_refused_with_the_convention(tiny_cfg, tokenizer):
    """forward(ctx) is the calling convention before the redesign: building such an objective
    names the key and says how objectives are called now."""
    from albef.modeling import build_model
    from albef.modeling.objectives.base import Objective
    from albef.registry import OBJECTIVE_REGISTRY, ComponentError

    class OldStyleLoss(Objective):
        def forward(self, ctx):
            return ctx.text_embeds.sum()

    OBJECTIVE_REGISTRY.register()(OldStyleLoss)
    try:
        with pytest.raises(ComponentError, match=r"model.objectives.old: OldStyleLoss.forward takes no alpha.*forward\(ctx, alpha\)"):
            build_model(tiny_cfg("model.objectives.old={name: OldStyleLoss}"), tokenizer)
    finally:
        OBJECTIVE_REGISTRY.unregister("OldStyleLoss")
