"""The inference methods (albef/modeling/inference.py) against the model's own steps, composed by hand."""
from __future__ import annotations

import os

import pytest
import torch

from albef.config import load_config
from albef.data.preprocess import Preprocess, TextBatch
from albef.modeling import build_model
from albef.modeling.context import MissingHeadError
from albef.modeling.heads.answer_decoder import rank_answers
from tests.conftest import REPO

TEXTS = ["a red circle left of a blue square", "a green cross", "a blue square above a red circle"]


def tiny(config: str, root: str, tokenizer, seed: int = 0):
    cfg = load_config(os.path.join(REPO, config), [f"data.synthetic.root={root}"])
    torch.manual_seed(seed)
    return build_model(cfg, tokenizer).eval(), Preprocess.from_config(cfg, tokenizer)


def test_match_scores_every_image_against_every_text(synthetic_root, tokenizer):
    model, pre = tiny("tests/configs/tiny.yaml", synthetic_root, tokenizer)
    torch.manual_seed(1)
    images = torch.randn(2, 3, pre.image_res, pre.image_res)
    text = pre.text(TEXTS)
    s = model.match(images, text, pair_batch=4)  # 6 pairs in chunks of 4: a chunk boundary inside image 1
    assert s.similarity.shape == s.itm_probability.shape == (2, 3)
    with torch.no_grad():
        img_emb, img_feat = model.encode_image(images)
        txt_emb, txt_feat = model.encode_text(text.input_ids, text.attention_mask)
        for i in range(2):
            for t in range(3):
                fused = model.fuse(txt_emb[t : t + 1], text.attention_mask[t : t + 1], img_emb[i : i + 1])
                p = model.head("itm")(fused[:, 0]).float().softmax(-1)[0, 1]
                assert float(s.itm_probability[i, t]) == pytest.approx(float(p), abs=1e-5)
                assert float(s.similarity[i, t]) == pytest.approx(float(img_feat[i] @ txt_feat[t]), abs=1e-5)
    assert torch.allclose(s.itc_probability, (s.similarity / model.temp).softmax(1), atol=1e-6)
    assert torch.allclose(model.similarity(images, text), s.similarity, atol=1e-6)
    assert model.match(images, text, head=None).itm_probability is None


def test_features_modes_and_pairing(synthetic_root, tokenizer):
    model, pre = tiny("tests/configs/tiny.yaml", synthetic_root, tokenizer)
    img = torch.randn(1, 3, pre.image_res, pre.image_res)
    text = pre.text(TEXTS)
    f = model.extract_features(img, text)  # one image broadcast over three texts
    assert f.image_feat.shape == (1, 16) and f.text_feat.shape == (3, 16) and f.multimodal_embeds.shape[:2] == (3, text.input_ids.shape[1])
    assert torch.allclose(f.image_feat.norm(dim=1), torch.ones(1), atol=1e-5)
    with torch.no_grad():
        emb, _ = model.encode_image(img)
        hid, _ = model.encode_text(text.input_ids[1:2], text.attention_mask[1:2])
        ref = model.fuse(hid, text.attention_mask[1:2], emb)
    assert torch.allclose(f.multimodal_embeds[1:2], ref, atol=1e-5)
    assert model.extract_features(img, mode="image").text_feat is None
    assert model.extract_features(text=text, mode="text").image_feat is None
    with pytest.raises(ValueError, match="pair images and texts row by row: got 2 images and 3 texts"):
        model.extract_features(torch.randn(2, 3, pre.image_res, pre.image_res), text)
    with pytest.raises(ValueError, match="mode='image' needs an image"):
        model.extract_features(text=text, mode="image")
    with pytest.raises(TypeError, match=r"texts must be tokenised first: pass preprocess.text"):
        model.similarity(img, TEXTS)


def test_classify_answer_and_missing_heads(synthetic_root, tokenizer):
    ve, pre = tiny("tests/configs/tiny_ve.yaml", synthetic_root, tokenizer)
    img = torch.randn(2, 3, pre.image_res, pre.image_res)
    text = pre.text(TEXTS[:2])
    pred = ve.classify(img, text, class_names=["c", "n", "e"])
    with torch.no_grad():
        ctx = ve.context({"image": img, "input_ids": text.input_ids, "attention_mask": text.attention_mask}, {"fused"})
        ref = ve.head("cls")(ctx.fused[:, 0]).float()
    assert torch.allclose(pred.logits, ref, atol=1e-5) and pred.labels == [["c", "n", "e"][i] for i in ref.argmax(1).tolist()]
    with pytest.raises(MissingHeadError, match="no head 'answer'"):
        ve.answer(img, text)
    with pytest.raises(ValueError, match="2 class names for a head with 3 classes"):
        ve.classify(img, text, class_names=["a", "b"])

    vqa, pre = tiny("tests/configs/tiny_vqa.yaml", synthetic_root, tokenizer)
    answers = ["red", "blue", "two", "circle"]
    q = pre.text(["what colour is the circle", "how many squares"])
    cand = pre.text(answers)
    out = vqa.answer(img, q, cand, k=3)
    with torch.no_grad():
        states = vqa.fused_states(img, q)
        idx, scores = rank_answers(vqa.head("answer"), states, q.attention_mask, cand.input_ids, cand.attention_mask, 3)
    assert out.answers == [answers[i] for i in idx[:, 0].tolist()] and torch.equal(out.ranked, idx)
    gen = vqa.answer(img, q, max_answer_tokens=4)  # generating: strings decoded with the question's tokenizer
    assert len(gen.answers) == 2 and all(isinstance(a, str) for a in gen.answers)
    with pytest.raises(ValueError, match="generating answers needs the tokenizer"):
        vqa.answer(img, TextBatch(q.input_ids, q.attention_mask))


def test_word_gradcam_names_the_words(synthetic_root, tokenizer):
    model, pre = tiny("tests/configs/tiny.yaml", synthetic_root, tokenizer)
    img = torch.randn(1, 3, pre.image_res, pre.image_res)
    cam = model.word_gradcam(img, pre.text(TEXTS[0]), layer=0)
    assert [w for w, _ in cam.words] == TEXTS[0].split()
    grid = pre.image_res // 8
    assert cam.sentence.shape == (grid, grid) and all(m.shape == (grid, grid) for _, m in cam.words)
    assert 0.0 <= cam.score <= 1.0
    assert not any(p.grad is not None for p in model.parameters())  # Grad-CAM differentiates the probabilities only
    with pytest.raises(ValueError, match="explains one image and one text"):
        model.word_gradcam(img, pre.text(TEXTS[:2]))


def test_preprocess_errors_name_the_input(synthetic_root, tokenizer, tmp_path):
    _, pre = tiny("tests/configs/tiny.yaml", synthetic_root, tokenizer)
    with pytest.raises(OSError, match=r"nope.jpg: file not found"):
        pre.image(str(tmp_path / "nope.jpg"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(OSError, match=r"bad.jpg: unreadable image"):
        pre.image([str(bad)])
    with pytest.raises(ValueError, match="text 1 is empty"):
        pre.text(["a red circle", "  "])
    with pytest.raises(ValueError, match="must be \\[3, H, W\\]"):
        pre.image(torch.zeros(1, 2, 3))
    from PIL import Image

    x = pre.image([Image.new("RGB", (50, 40), "red"), Image.new("L", (10, 10))])
    assert x.shape == (2, 3, pre.image_res, pre.image_res)
