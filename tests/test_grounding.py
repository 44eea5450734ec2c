"""Weakly supervised grounding: Grad-CAM, box scoring, IoU, the evaluator, data and checkpoints."""
from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from conftest import REPO, TINY, write_json

from albef.config import load_config
from albef.data.files import DataError
from albef.data.datasets.grounding import GroundingEvalJSON, read_refs
from albef.data.tokenization import tokenize
from albef.evaluation.grounding import GroundingEvaluator
from albef.modeling import build_model
from albef.metrics.box_iou import box_iou_inclusive
from albef.modeling.gradcam import (
    box_scores,
    cross_attention_layer,
    itc_gradcam,
    itm_gradcam,
    keep_attention,
    upsample_map,
    word_maps,
)


# its tests share the suite's small trained checkpoint with the other users of that fixture: one xdist worker
pytestmark = pytest.mark.xdist_group("small_checkpoint")


def tiny_model(root, tokenizer, *overrides):
    torch.manual_seed(0)
    return build_model(load_config(TINY, [f"data.synthetic.root={root}", *overrides]), tokenizer).eval()


# --------------------------------------------------------------------------- boxes
def test_box_scores_and_iou_by_hand():
    heat = torch.zeros(10, 10)
    heat[2:5, 3:7] = 1.0  # rows 2-4, columns 3-6: 12 cells
    boxes = torch.tensor([[3.0, 2.0, 4.0, 3.0], [0.0, 0.0, 10.0, 10.0], [3.6, 2.2, 4.0, 3.0], [8.0, 8.0, 5.0, 5.0]])
    s = box_scores(heat, boxes)
    # sum(heat[int(y):int(y+h), int(x):int(x+w)]) / sqrt(w*h), as the official loop
    assert s.tolist() == pytest.approx([12 / 12 ** 0.5, 12 / 10.0, 12 / 12 ** 0.5, 0.0])
    assert box_scores(heat, boxes[:1], alpha=1.0).tolist() == pytest.approx([1.0])
    # inclusive pixel bounds: [0,0,10,10] and [5,5,10,10] overlap in 5 x 5 pixels
    assert float(box_iou_inclusive(torch.tensor([0.0, 0, 10, 10]), torch.tensor([5.0, 5, 10, 10]))) == pytest.approx(25 / 175)
    assert float(box_iou_inclusive(torch.tensor([0.0, 0, 4, 4]), torch.tensor([4.0, 0, 4, 4]))) == 0.0  # touching, no shared pixel
    assert float(box_iou_inclusive(torch.tensor([2.0, 3, 5, 6]), torch.tensor([2.0, 3, 5, 6]))) == pytest.approx(1.0)
    assert float(box_iou_inclusive(torch.tensor([0.0, 0, 5, 5]), torch.tensor([4.0, 0, 5, 5]))) == 0.0  # one shared column: none (REFER's strict <)
    from albef.metrics.box_iou import box_iou_official  # the data generator's list form of computeIoU agrees
    for a, b in (([0, 0, 10, 10], [5, 5, 10, 10]), ([2, 3, 5, 6], [3, 1, 9, 4]), ([0, 0, 5, 5], [4, 0, 5, 5])):
        assert float(box_iou_inclusive(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))) == pytest.approx(box_iou_official(a, b))
    up = upsample_map(torch.full((4, 4), 0.5), 30, 20)
    assert up.shape == (30, 20) and torch.allclose(up, torch.full_like(up, 0.5))


# --------------------------------------------------------------------------- grad-cam
def test_itm_gradcam_shapes_padding_layer_choice_and_no_parameter_gradients(synthetic_root, tokenizer):
    model = tiny_model(synthetic_root, tokenizer, "model.fusion.num_layers=2")
    enc = tokenize(tokenizer, ["a red circle left of a blue square", "a red circle"], 16)
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cam = itm_gradcam(model, image, enc["input_ids"], enc["attention_mask"], layer=0)
    n = enc["input_ids"].shape[1]
    assert cam.tokens.shape == (2, n, 4, 4) and cam.sentence.shape == (2, 4, 4)  # 32 px / patch 8: a 4 x 4 grid
    pad = enc["attention_mask"] == 0
    assert pad.any() and (cam.tokens[pad] == 0).all() and (cam.tokens >= 0).all()
    real = enc["attention_mask"].sum(1)
    assert torch.allclose(cam.sentence, cam.tokens.sum(1) / real[:, None, None])  # mean over real tokens only
    assert cam.tokens[~pad].flatten(1).amax(1).gt(0).sum() > n  # words get maps of their own
    # the last fusion layer: only [CLS] reaches the ITM head, so every other token's map is zero
    last = itm_gradcam(model, image, enc["input_ids"], enc["attention_mask"], layer=-1)
    assert (last.tokens[:, 1:] == 0).all() and last.tokens[:, 0].abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    assert all(not layer.crossattention.self.keep_attention and layer.crossattention.self.attention_probs is None
               for layer in model.fusion.layer)  # the switch is reset
    with pytest.raises(ValueError, match="fusion encoder has 2 layers"):
        itm_gradcam(model, image, enc["input_ids"], enc["attention_mask"], layer=2)


def test_itm_gradcam_equals_probabilities_times_retained_gradients(synthetic_root, tokenizer):
    """The same map computed the notebook way: keep the layer's probabilities, backward, read .grad."""
    model = tiny_model(synthetic_root, tokenizer, "model.fusion.num_layers=2", "model.fusion.attn_implementation=explicit")
    enc = tokenize(tokenizer, ["a red circle above a blue square", "a blue square"], 16)
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cam = itm_gradcam(model, image, enc["input_ids"], enc["attention_mask"], layer=0)
    attn = cross_attention_layer(model, 0)
    with keep_attention(attn):
        fused = model.fuse(model.encode_text(enc["input_ids"], enc["attention_mask"])[0], enc["attention_mask"], model.encode_image(image)[0])
        model.head("itm")(fused[:, 0])[:, 1].sum().backward()
        probs = attn.attention_probs
        manual = (probs * probs.grad.clamp(min=0)).mean(1)[:, :, 1:].unflatten(-1, (4, 4)) * enc["attention_mask"][:, :, None, None]
    assert torch.allclose(cam.tokens, manual.detach(), atol=1e-6)
    model.zero_grad(set_to_none=True)


def test_itc_gradcam_on_a_vit_block(synthetic_root, tokenizer):
    model = tiny_model(synthetic_root, tokenizer)
    enc = tokenize(tokenizer, ["a red circle", "a green cross"], 16)
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    cam = itc_gradcam(model, image, enc["input_ids"], enc["attention_mask"], block=0)
    assert cam.tokens is None and cam.sentence.shape == (2, 4, 4) and (cam.sentence >= 0).all() and cam.sentence.sum() > 0
    assert model.vision_encoder.vit.blocks[0].attn.fused_attn  # restored
    with pytest.raises(ValueError, match="vision encoder has 1 blocks"):
        itc_gradcam(model, image, enc["input_ids"], enc["attention_mask"], block=3)


def test_word_maps_merge_word_pieces(tokenizer):
    ids = tokenize(tokenizer, ["what red"], 16)["input_ids"][0]  # "what" is spelled in word pieces
    pieces = tokenizer.convert_ids_to_tokens(ids.tolist())
    maps = torch.arange(len(ids), dtype=torch.float32)[:, None, None].expand(len(ids), 2, 2)
    words = word_maps(maps, ids.tolist(), tokenizer)
    assert [w for w, _ in words] == ["what", "red"]
    n_what = len(pieces) - 3  # [CLS] what-pieces red [SEP]
    assert float(words[0][1][0, 0]) == pytest.approx(sum(range(1, 1 + n_what)) / n_what)
    assert float(words[1][1][0, 0]) == pytest.approx(1 + n_what)


# --------------------------------------------------------------------------- data + evaluator
def _grounding_files(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), (240, 240, 240)).save(tmp_path / "img.jpg")
    refs = [{"ref_id": 1, "image_id": 7, "bbox": [2, 3, 10, 8], "split": "val"},
            {"ref_id": 2, "image_id": 7, "bbox": [25, 15, 12, 12], "split": "testA"}]
    dets = {"7": [[1, 2, 11, 9], [24, 14, 12, 13], [10, 20, 5, 5]]}
    ann = [{"image": "img.jpg", "text": "the left thing", "ref_id": 1}, {"image": "img.jpg", "text": "the right thing", "ref_id": 2}]
    return write_json(tmp_path / "exprs.json", ann), write_json(tmp_path / "refs.json", refs), write_json(tmp_path / "dets.json", dets)


TF = {"image_res": 32, "crop_scale": None, "randaugment": None, "mean": [0.5] * 3, "std": [0.5] * 3}


class _PeakEvaluator(GroundingEvaluator):
    """Heat maps peaked on the ground truth (or, with ``wrong``, on the other object)."""

    wrong = False

    def heat_maps(self, model, batch):
        maps = torch.zeros(len(batch["index"]), 4, 4)
        for j, i in enumerate(batch["index"].tolist()):
            ref_id = self.dataset.records[i]["ref_id"]
            left = (ref_id == 1) != self.wrong
            maps[j, 0, 0 if left else 3] = 1.0 if left else 0.0
            maps[j, 3, 3] = 0.0 if left else 1.0
        return maps


def test_grounding_evaluator_scores_boxes_per_split(tmp_path, synthetic_root, tokenizer):
    exprs, refs, dets = _grounding_files(tmp_path)
    ds = GroundingEvalJSON(exprs, image_root=str(tmp_path), refs_file=refs, dets_file=dets, transforms=TF)
    assert ds.image_size(0) == (40, 30) and ds.ref(1)["split"] == "testA" and len(ds.ref(1)["dets"]) == 3
    from albef.data.collate import ImageTextCollator
    from torch.utils.data import DataLoader

    loader_fn = lambda d, bs: DataLoader(d, batch_size=bs, collate_fn=ImageTextCollator(tokenizer, 16, text_field="text"))
    model = tiny_model(synthetic_root, tokenizer)
    ev = _PeakEvaluator(dataset=ds, loader_fn=loader_fn, prefix="grounding", layer=0)
    assert ev.evaluate(model) == {"grounding/testA_acc": 100.0, "grounding/val_acc": 100.0, "grounding/acc": 100.0}
    _PeakEvaluator.wrong = True
    try:
        assert ev.evaluate(model) == {"grounding/testA_acc": 0.0, "grounding/val_acc": 0.0, "grounding/acc": 0.0}
    finally:
        _PeakEvaluator.wrong = False
    # the real Grad-CAM path runs and yields a valid accuracy on the same data
    real = GroundingEvaluator(dataset=ds, loader_fn=loader_fn, prefix="g", layer=0).evaluate(model)
    assert set(real) == {"g/val_acc", "g/testA_acc", "g/acc"} and all(v in (0.0, 50.0, 100.0) for v in real.values())
    with pytest.raises(ValueError, match="layer=5"):
        GroundingEvaluator(dataset=ds, loader_fn=loader_fn, prefix="g", layer=5).check(model)


def test_grounding_data_errors_name_file_and_entry(tmp_path):
    exprs, refs, dets = _grounding_files(tmp_path)
    bad = write_json(tmp_path / "bad.json", [{"image": "img.jpg", "text": "x", "ref_id": 1}, {"image": "img.jpg", "text": "y", "ref_id": 99}])
    with pytest.raises(DataError, match="bad.json: entry 1: ref_id 99 is not in"):
        GroundingEvalJSON(bad, image_root=str(tmp_path), refs_file=refs, dets_file=dets, transforms=TF)
    no_text = write_json(tmp_path / "bad2.json", [{"image": "img.jpg", "ref_id": 1}])
    with pytest.raises(DataError, match="bad2.json: entry 0 has no 'text'"):
        GroundingEvalJSON(no_text, image_root=str(tmp_path), refs_file=refs, dets_file=dets, transforms=TF)
    bad_refs = write_json(tmp_path / "refs_bad.json", [{"ref_id": 1, "image_id": 7, "bbox": [1, 2, 0, 4], "split": "val"}])
    with pytest.raises(DataError, match="refs_bad.json: entry 0: box .* has no area"):
        read_refs(bad_refs)
    nodets = write_json(tmp_path / "dets_bad.json", {"8": [[1, 2, 3, 4]]})
    with pytest.raises(DataError, match="image 7 \\(ref_id 1\\) has no candidate boxes in .*dets_bad.json"):
        GroundingEvalJSON(exprs, image_root=str(tmp_path), refs_file=refs, dets_file=nodets, transforms=TF)


def test_refer_pickle_with_coco_instances(tmp_path):
    """The official REFER files: refs(unc).p (pickle) + instances.json boxes."""
    with open(tmp_path / "refs(unc).p", "wb") as f:
        pickle.dump([{"ref_id": 11, "ann_id": 500, "image_id": 3, "split": "testB", "sentences": []}], f, protocol=2)
    inst = write_json(tmp_path / "instances.json", {"annotations": [{"id": 500, "bbox": [1.5, 2.0, 30.0, 40.0], "image_id": 3}]})
    assert read_refs(str(tmp_path / "refs(unc).p"), inst) == {11: {"bbox": [1.5, 2.0, 30.0, 40.0], "split": "testB", "image_id": 3}}
    with pytest.raises(DataError, match="need instances_file"):
        read_refs(str(tmp_path / "refs(unc).p"))


# --------------------------------------------------------------------------- checkpoints
def test_refcoco_retrieval_layout_loads_into_the_grounding_model():
    """refcoco.pth is a model_retrieval.ALBEF file: every key lands in the grounding model."""
    from test_official_task_layouts import paper_model, read_key_list

    from albef.checkpoint.official import convert_official_to_ours
    from albef.checkpoint.report import format_report

    official = read_key_list("retrieval_mscoco_384.txt")
    model = paper_model("configs/grounding/refcoco+.yaml")
    _, rep = convert_official_to_ours({"model": official}, model, task="grounding")
    assert rep.complete and not rep.warnings and not rep.unexpected and not rep.mismatched, format_report(rep)
    assert len(rep.mapped) == 829 and {why for _, why in rep.dropped} == {"position-id buffer (0..max_len-1), not a weight: transformers rebuilds it"}


# --------------------------------------------------------------------------- the visualisation tool
@pytest.mark.slow
def test_visualize_gradcam_cli_writes_one_png(synthetic_root, tokenizer, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    model = tiny_model(synthetic_root, tokenizer, "model.fusion.num_layers=2")
    ckpt = str(tmp_path / "tiny.pth")
    torch.save({"model": model.state_dict()}, ckpt)
    image = os.path.join(synthetic_root, "images", "test", "000000.jpg")
    tool = os.path.join(REPO, "tools", "visualize_gradcam.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = str(tmp_path / "cam.png")
    r = subprocess.run([sys.executable, tool, "--config-file", TINY, "--weights", ckpt, "--image", image, "--text", "a red circle left of a blue square",
                        "--out", out, f"data.synthetic.root={synthetic_root}", "model.fusion.num_layers=2"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "wrote" in r.stdout and "(8 words" in r.stdout  # a red circle left of a blue square
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 200  # image + sentence + 8 words, labelled
    # a model without an ITM head is refused with a clear message, and a missing image too
    r = subprocess.run([sys.executable, tool, "--config-file", os.path.join(REPO, "tests", "configs", "tiny_vqa.yaml"), "--weights", ckpt,
                        "--image", image, "--text", "x", "--out", str(tmp_path / "no.png"), f"data.synthetic.root={synthetic_root}"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and "has no ITM head" in r.stderr and not os.path.exists(tmp_path / "no.png")
    r = subprocess.run([sys.executable, tool, "--config-file", TINY, "--weights", ckpt, "--image", str(tmp_path / "missing.jpg"), "--text", "x",
                        "--out", str(tmp_path / "no.png"), f"data.synthetic.root={synthetic_root}"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and "missing.jpg" in r.stderr


# --------------------------------------------------------------------------- a trained model looks at the object it names
@pytest.fixture(scope="module")
def trained_small(small_checkpoint):
    """The suite's small trained model (tests/conftest.py ``small_checkpoint``: ITC + ITM + MLM, the
    default job's recipe, ~1 minute on a 64 px world with two fusion layers -- Grad-CAM reads the
    first: in the last one only [CLS] reaches the ITM head), loaded through ``albef.load``; and that
    world's grounding data, whose manifest has every object's box."""
    import albef

    model, pre = albef.load(small_checkpoint[0], device="cpu")
    return model.eval(), pre.tokenizer, model.config


@pytest.mark.slow
def test_gradcam_of_a_colour_word_falls_on_the_objects(trained_small):
    """For every test image and each object whose colour is unique in it, the ITM Grad-CAM map
    of that colour word (in the scene's caption) puts most of its mass on the two objects'
    ground-truth boxes -- several times what a uniform map puts there (the boxes' area
    fraction, ~8% each; a random map gives about the same: both fail). Measured on the patch
    grid (:func:`~albef.modeling.gradcam.box_mass`).

    Whether it lands on the *named* object rather than the other one is not stable for this
    2-minute model: three trainings of it that differ only in float rounding (cached vs
    recomputed keys/values, masked vs full MLM logits) gave own-box shares of 0.29, 0.41 and
    one passing the stricter check below, against 0.33, 0.41 and less in the other box;
    an earlier trajectory gave 0.49 vs 0.26. So the test asserts what every trajectory showed
    and asserts the own-vs-other split only as "not far below the other box"."""
    import json

    from omegaconf import OmegaConf

    from albef.data.files import load_image
    from albef.data.synthetic.scenes import canonical_caption
    from albef.data.transforms import build_transforms
    from albef.modeling.gradcam import box_mass

    model, tok, cfg = trained_small
    root = os.path.join(cfg.data.synthetic.root, "grounding")
    with open(os.path.join(root, "manifest.json")) as f:
        manifest = json.load(f)
    tf = build_transforms(OmegaConf.to_container(cfg.data.transforms, resolve=True), is_train=False)
    own, other, uniform = [], [], []
    for i, objs in enumerate(manifest["objects"]["test"]):
        img = load_image(os.path.join(root, "images", "test", f"{i:06d}.jpg"))
        enc = tokenize(tok, [canonical_caption(tuple(manifest["scenes"]["test"][2 * i]))], 32)
        cam = itm_gradcam(model, tf(img)[None], enc["input_ids"], enc["attention_mask"], layer=0)
        words = dict(word_maps(cam.tokens[0], enc["input_ids"][0].tolist(), tok))
        if objs[0]["color"] == objs[1]["color"]:
            continue
        for k, o in enumerate(objs):
            m = words[o["color"]]
            own.append(box_mass(m, o["bbox"], img.size))
            other.append(box_mass(m, objs[1 - k]["bbox"], img.size))
            uniform.append(o["bbox"][2] * o["bbox"][3] / (img.size[0] * img.size[1]))
            # the same measure on a uniform and a random map, as controls
            assert box_mass(torch.ones_like(m), o["bbox"], img.size) == pytest.approx(uniform[-1], rel=1e-6)
    n = len(own)
    assert n >= 40
    mean_own, mean_uniform = sum(own) / n, sum(uniform) / n
    random_map = torch.rand(8, 8, generator=torch.Generator().manual_seed(0))
    mean_random = sum(box_mass(random_map, o["bbox"], (64, 64)) for objs in manifest["objects"]["test"] for o in objs) / (2 * len(manifest["objects"]["test"]))
    assert mean_uniform < 0.15 and mean_random < 0.15
    mean_other = sum(other) / n
    # measured (seed 0, four trajectories): own + other box 0.62-0.82 against 0.16 for a uniform
    # map; own box 0.29-0.49 against 0.08
    assert mean_own + mean_other > 0.45 and mean_own + mean_other > 6 * mean_uniform, (mean_own, mean_other, mean_uniform)
    assert mean_own > 3 * mean_uniform and mean_own > 0.75 * mean_other, (mean_own, mean_other, mean_uniform)
