"""VQA: the answer decoder, answer ranking, the answer loss, VQA accuracy, data and checkpoints."""
from __future__ import annotations

from types import SimpleNamespace

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import REPO, write_json

from albef.config import load_config
from albef.data.collate import VQACollator
from albef.data.files import DataError
from albef.data.datasets.vqa import VQAJSON
from albef.evaluation.vqa import normalize_answer, vqa_accuracy
from albef.modeling import build_model
from albef.modeling.context import StepContext
from albef.modeling.teachers.base import TeacherOutput
from albef.modeling.heads.answer_decoder import AnswerDecoder, rank_answers, token_nll
from albef.modeling.objectives.answer_generation import AnswerGenerationLoss

TINY_VQA = os.path.join(REPO, "tests", "configs", "tiny_vqa.yaml")


def tiny_vqa_model(root: str, tokenizer, *overrides: str):
    torch.manual_seed(0)
    return build_model(load_config(TINY_VQA, [f"data.synthetic.root={root}", *overrides]), tokenizer)


# --------------------------------------------------------------------------- decoder
def _decoder(vocab: int = 30, layers: int = 2) -> AnswerDecoder:
    from transformers import BertConfig

    cfg = BertConfig(vocab_size=vocab, hidden_size=16, num_attention_heads=2, intermediate_size=32, max_position_embeddings=16,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return AnswerDecoder(num_layers=layers, hidden_size=16, text_config=cfg).eval()


def test_decoder_is_causal_and_sees_every_question_state():
    dec = _decoder()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 30, (3, 6), generator=g)
    mask = torch.ones_like(ids)
    states, smask = torch.randn(3, 4, 16, generator=g), torch.ones(3, 4, dtype=torch.long)
    base = dec(ids, mask, states, smask)
    later = ids.clone()
    later[:, 4:] = (later[:, 4:] + 7) % 30  # change tokens 4 and 5
    changed = dec(later, mask, states, smask)
    assert torch.allclose(base[:, :4], changed[:, :4], atol=1e-6)  # positions 0..3 never see tokens 4, 5
    assert not torch.allclose(base[:, 4:], changed[:, 4:], atol=1e-4)
    # a question state changes every position (cross-attention in every layer); a masked one none
    st2 = states.clone()
    st2[:, 2] += 1.0
    assert (dec(ids, mask, st2, smask) - base).abs().amax(dim=-1).min() > 1e-4
    smask2 = smask.clone()
    smask2[:, 2] = 0
    assert torch.allclose(dec(ids, mask, st2, smask2), dec(ids, mask, states, smask2), atol=1e-6)


def test_decoder_lm_head_is_tied_to_its_own_embeddings(synthetic_root, tokenizer):
    model = tiny_vqa_model(synthetic_root, tokenizer)
    dec = model.head("answer")
    assert dec.lm.decoder.weight is dec.embeddings.word_embeddings.weight
    assert dec.embeddings.word_embeddings.weight is not model.text_encoder.get_input_embeddings().weight  # its own
    teacher = model.head("answer", teacher=True)
    assert teacher.lm.decoder.weight is teacher.embeddings.word_embeddings.weight


def test_explicit_and_sdpa_attention_agree_and_only_explicit_keeps_probabilities():
    dec_s, dec_e = _decoder(), _decoder()
    for layer in dec_e.encoder.layer:
        layer.attention.self.impl = layer.crossattention.self.impl = "explicit"
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 30, (2, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    states, smask = torch.randn(2, 3, 16, generator=g), torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert torch.allclose(dec_s(ids, mask, states, smask), dec_e(ids, mask, states, smask), atol=1e-5)
    assert dec_e.encoder.layer[0].crossattention.self.attention_probs is None  # kept only when asked


# --------------------------------------------------------------------------- ranking
class _Bigram(nn.Module):
    """A decoder whose next-token distribution depends only on the previous token (table rows)."""

    def __init__(self, probs: torch.Tensor):
        super().__init__()
        self.register_buffer("logp", probs.log())

    def forward(self, ids, mask, states, states_mask):
        return self.logp[ids]  # [A, L, V]

    answer_nll = AnswerDecoder.answer_nll


def _bigram_case():
    # tokens: 0 [CLS], 1 [SEP], 2 a, 3 b, 4 c;  answers "a", "b c", "c"
    p = torch.full((5, 5), 1e-9)
    p[0, 2], p[0, 3], p[0, 4] = 0.6, 0.25, 0.15  # first token
    p[2, 1], p[2, 4] = 0.35, 0.65  # after a: [SEP] 0.35
    p[3, 4], p[3, 1] = 0.9, 0.1  # after b: c 0.9
    p[4, 1], p[4, 2] = 0.99, 0.01  # after c: [SEP] 0.99
    ids = torch.tensor([[0, 2, 1, 0], [0, 3, 4, 1], [0, 4, 1, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]])
    return _Bigram(p / p.sum(1, keepdim=True)), ids, mask


def test_rank_answers_by_full_likelihood_counting_the_first_token_once():
    dec, ids, mask = _bigram_case()
    states, smask = torch.zeros(1, 1, 4), torch.ones(1, 1, dtype=torch.long)
    ll = {0: math.log(0.6 * 0.35), 1: math.log(0.25 * 0.9 * 0.99), 2: math.log(0.15 * 0.99)}  # by hand
    idx, scores = rank_answers(dec, states, smask, ids, mask, k=3)
    assert idx.tolist() == [[1, 0, 2]]  # "b c" (0.2228) > "a" (0.21) > "c" (0.1485)
    assert torch.allclose(scores[0], torch.tensor([ll[1], ll[0], ll[2]]), atol=1e-5)
    # the official score adds log p(first token) a second time, which flips the winner to "a"
    idx2, scores2 = rank_answers(dec, states, smask, ids, mask, k=3, double_count_first_token=True)
    assert idx2.tolist() == [[0, 1, 2]]
    assert torch.allclose(scores2[0], torch.tensor([ll[0] + math.log(0.6), ll[1] + math.log(0.25), ll[2] + math.log(0.15)]), atol=1e-5)
    # k keeps the candidates with the most probable first token only
    assert rank_answers(dec, states, smask, ids, mask, k=1)[0].tolist() == [[0]]


def test_rank_answers_batched_over_questions_matches_one_at_a_time():
    dec = _decoder()
    g = torch.Generator().manual_seed(3)
    states, smask = torch.randn(4, 5, 16, generator=g), torch.ones(4, 5, dtype=torch.long)
    smask[1, 3:] = 0
    ids = torch.cat([torch.zeros(6, 1, dtype=torch.long), torch.randint(5, 30, (6, 3), generator=g), torch.ones(6, 1, dtype=torch.long)], 1)
    mask = torch.ones_like(ids)
    mask[2, 3:] = 0
    ids[2, 3:] = 0
    idx, scores = rank_answers(dec, states, smask, ids, mask, k=4)
    for q in range(4):
        i1, s1 = rank_answers(dec, states[q : q + 1], smask[q : q + 1], ids, mask, k=4)
        assert i1[0].tolist() == idx[q].tolist() and torch.allclose(s1[0], scores[q], atol=1e-5)
        nll = torch.stack([dec.answer_nll(ids[j : j + 1], mask[j : j + 1], states[q : q + 1], smask[q : q + 1])[0] for j in idx[q].tolist()])
        assert torch.allclose(-nll, scores[q], atol=1e-5)


def test_greedy_generation_stops_at_sep():
    dec, _, _ = _bigram_case()
    out = AnswerDecoder.generate(dec, torch.zeros(2, 1, 4), torch.ones(2, 1, dtype=torch.long), bos_id=0, eos_id=1, pad_id=0, max_len=6)
    assert out.tolist() == [[0, 2, 4, 1], [0, 2, 4, 1]]  # a (0.6) -> c (0.65) -> [SEP] (0.99)


# --------------------------------------------------------------------------- loss
def test_answer_loss_by_hand_with_and_without_distillation():
    dec, dec_m = _decoder(layers=1), _decoder(layers=1)
    with torch.no_grad():
        for p in dec_m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(4)
    fused, fused_m = torch.randn(2, 4, 16, generator=g, requires_grad=True), torch.randn(2, 4, 16, generator=g)
    qmask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    ids = torch.tensor([[0, 7, 1, 0], [0, 9, 8, 1], [0, 5, 1, 0]])
    amask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]])
    batch = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": qmask, "answer_input_ids": ids,
             "answer_attention_mask": amask, "answer_weight": torch.tensor([1.0, 0.6, 0.4]), "answer_question": torch.tensor([0, 1, 1])}
    heads = {"answer": dec}
    teacher = TeacherOutput(fused=fused_m, modules=SimpleNamespace(heads={"answer": dec_m}))

    for alpha in (0.0, 0.4):
        ctx = StepContext(batch, fused=fused, heads=heads, teacher=teacher)
        loss = AnswerGenerationLoss()(ctx, alpha or None)
        expect = 0.0
        for a, (q, w) in enumerate(zip([0, 1, 1], [1.0, 0.6, 0.4])):
            n = int(amask[a].sum())
            logits = dec(ids[a : a + 1, :n], amask[a : a + 1, :n], fused[q : q + 1], qmask[q : q + 1])[0]
            soft = F.softmax(dec_m(ids[a : a + 1, :n], amask[a : a + 1, :n], fused_m[q : q + 1], qmask[q : q + 1])[0], -1)
            la = 0.0
            for t in range(1, n):  # token t predicted at position t - 1
                lp = F.log_softmax(logits[t - 1], -1)
                la = la + (1 - alpha) * -lp[ids[a, t]] + alpha * -(soft[t - 1] * lp).sum()
            expect = expect + w * la
        assert torch.allclose(loss, expect / 2, atol=1e-5), (alpha, loss, expect / 2)
    loss.backward()
    assert fused.grad is not None and fused.grad.abs().sum() > 0
    assert all(p.grad is None for p in dec_m.parameters())  # the teacher gets no gradient


def test_token_nll_skips_padding():
    logits = torch.zeros(1, 4, 3)
    logits[0, 0, 2] = 10.0  # position 0 predicts token 2 confidently
    nll = token_nll(logits, torch.tensor([[0, 2, 1, 0]]), torch.tensor([[1, 1, 1, 0]]))
    assert nll.shape == (1, 3) and nll[0, 2] == 0 and nll[0, 0] < 1e-3 and abs(float(nll[0, 1]) - math.log(3)) < 1e-6


def test_training_step_trains_encoder_fusion_and_decoder_not_the_teacher(synthetic_root, tokenizer):
    model = tiny_vqa_model(synthetic_root, tokenizer)
    model.set_distillation_scale(1.0)
    col = VQACollator(tokenizer, max_tokens=32, max_answer_tokens=8)
    samples = [{"image": torch.randn(3, 32, 32), "question": "what colour do we see on the circle", "question_id": 1,
                "answers": ["red", "blue"], "answer_weights": [0.8, 0.2], "index": 0, "skipped": []},
               {"image": torch.randn(3, 32, 32), "question": "how often do we see red", "question_id": 2,
                "answers": ["one"], "answer_weights": [1.0], "index": 1, "skipped": []}]
    batch = col(samples)
    assert batch["answer_question"].tolist() == [0, 0, 1] and batch["answer_weight"].tolist() == pytest.approx([0.8, 0.2, 1.0])
    assert (batch["answer_input_ids"][:, 0] == tokenizer.cls_token_id).all()
    assert (batch["answer_input_ids"].gather(1, batch["answer_attention_mask"].sum(1, keepdim=True) - 1) == tokenizer.sep_token_id).all()
    batch.pop("skipped")
    out = model(batch)
    assert set(out) == {"loss_vqa"} and torch.isfinite(out["loss_vqa"])
    out["loss_vqa"].backward()
    for name in ("vision_encoder.vit.patch_embed.proj.weight", "text_encoder.bert.embeddings.word_embeddings.weight",
                 "fusion.layer.0.crossattention.self.key.weight", "heads.answer.encoder.layer.0.crossattention.self.query.weight",
                 "heads.answer.lm.transform.dense.weight"):
        p = dict(model.named_parameters())[name]
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.teacher.parameters())


# --------------------------------------------------------------------------- accuracy
def test_vqa_accuracy_official_leave_one_out_average():
    ten = ["red"] * 3 + ["blue"] * 7
    assert vqa_accuracy("red", ten) == pytest.approx((3 * 2 / 3 + 7 * 1.0) / 10)  # 0.9, not min(3/3, 1) = 1
    assert vqa_accuracy("blue", ten) == pytest.approx(1.0)
    assert vqa_accuracy("red", ["red"] + ["blue"] * 9) == pytest.approx(9 * (1 / 3) / 10)  # 0.3
    assert vqa_accuracy("green", ten) == 0.0
    assert vqa_accuracy("Two", ["2"] * 2 + ["1"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert normalize_answer("The Red circle.") == "red circle" and normalize_answer("none") == "0"
    with pytest.raises(ValueError):
        vqa_accuracy("red", [])


# --------------------------------------------------------------------------- data
def test_vqa_json_weights_and_errors_name_file_and_entry(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "a.jpg")
    good = [{"question_id": 5, "question": "What colour?", "answer": ["red"] * 7 + ["blue"] * 3, "image": "a.jpg", "dataset": "vqa"},
            {"question": "Is it red?", "answer": "yes", "image": "a.jpg", "dataset": "vg"}]
    path = write_json(tmp_path / "train.json", good)
    tf = {"image_res": 8, "crop_scale": None, "randaugment": None, "mean": [0.5] * 3, "std": [0.5] * 3}
    ds = VQAJSON(path, image_root=str(tmp_path), vg_root=str(tmp_path), transforms=tf)
    assert ds.records[0]["answers"] == ["red", "blue"] and ds.records[0]["weights"] == pytest.approx([0.7, 0.3])
    assert ds.records[1]["answers"] == ["yes"] and ds.records[1]["weights"] == [0.5]  # VG: one answer, weight 0.5
    assert ds.records[0]["text"] == "what colour"
    s = ds[(0, 0)]
    assert s["answers"] == ["red", "blue"] and s["question_id"] == 5
    for bad, msg in (({"question": "q", "image": "a.jpg"}, "entry 1 has no 'answer'"),
                     ({"question": "q", "image": "a.jpg", "answer": []}, "entry 1: 'answer' must be"),
                     ({"question": "q", "image": "a.jpg", "answer": "x", "dataset": "coco"}, "entry 1: 'dataset' must be"),
                     ({"question": 3, "image": "a.jpg", "answer": "x"}, "entry 1: 'question' must be")):
        p = write_json(tmp_path / "bad.json", [good[0], bad])
        with pytest.raises(DataError, match=f"bad.json: {msg}"):
            VQAJSON(p, image_root=str(tmp_path), transforms=tf)
    test = write_json(tmp_path / "test.json", [{"question_id": 1, "question": "q", "image": "a.jpg"},
                                                {"question_id": 1, "question": "r", "image": "a.jpg"}])
    alist = write_json(tmp_path / "answer_list.json", ["red", "blue"])
    with pytest.raises(DataError, match="question_id 1 repeats"):
        VQAJSON(test, image_root=str(tmp_path), answer_list=alist, is_train=False, transforms=tf)
    with pytest.raises(DataError, match="evaluation needs answer_list"):
        VQAJSON(write_json(tmp_path / "t2.json", [{"question_id": 1, "question": "q", "image": "a.jpg"}]), image_root=str(tmp_path),
                is_train=False, transforms=tf)
    with pytest.raises(DataError, match="answer_list.json: entry 1"):
        VQAJSON(test, image_root=str(tmp_path), answer_list=write_json(tmp_path / "answer_list.json", ["red", ""]), is_train=False,
                transforms=tf)


# --------------------------------------------------------------------------- checkpoints
def test_paper_vqa_layout_converts_completely_onto_the_vqav2_config():
    from test_official_task_layouts import paper_model, read_key_list

    from albef.checkpoint.detect import detect_our_task
    from albef.checkpoint.official import convert_official_to_ours
    from albef.checkpoint.report import format_report

    official = read_key_list("vqa_384.txt")
    model = paper_model("configs/vqa/vqav2.yaml")
    ours, rep = convert_official_to_ours({"model": official}, model)
    assert rep.task == "vqa" and rep.complete and not rep.warnings and not rep.unexpected and not rep.mismatched, format_report(rep)
    assert (len(official), len(rep.mapped), len(rep.dropped)) == (1154, 1146, 8)
    assert ("text_decoder.bert.encoder.layer.5.crossattention.self.value.weight", "heads.answer.encoder.layer.5.crossattention.self.value.weight") in rep.mapped
    assert ("text_decoder_m.cls.predictions.transform.dense.weight", "teacher.model.heads.answer.lm.transform.dense.weight") in rep.mapped
    assert ("text_encoder.encoder.layer.11.crossattention.self.key.weight", "fusion.layer.5.crossattention.self.key.weight") in rep.mapped
    assert sorted(k for k, _ in rep.filled) == ["heads.answer.lm.decoder.weight", "teacher.model.heads.answer.lm.decoder.weight"]
    assert list(ours) == list(model.state_dict()) and detect_our_task(ours) == "vqa"


@pytest.mark.slow
@torch.no_grad()
def test_tiny_official_vqa_decoder_matches_the_transformers_bert_decoder(synthetic_root, tokenizer, tmp_path):
    """An official-layout vqa file (decoder written by transformers' BertLMHeadModel, the
    class the official xbert decoder copies) converts strictly through the CLI and our
    decoder computes the same token distributions from the same question states."""
    import subprocess
    import sys

    from test_official_task_layouts import TINY, tiny_official
    from transformers import BertConfig, BertLMHeadModel

    from albef.checkpoint import ALBEFCheckpointer

    official = {k: v for k, v in tiny_official("ve", len(tokenizer), seed=31).items() if not k.startswith(("cls_head", "cls_head_m"))}
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=TINY["hidden"], num_hidden_layers=1, num_attention_heads=TINY["heads"],
                     intermediate_size=TINY["ffn"], max_position_embeddings=TINY["max_pos"], is_decoder=True, add_cross_attention=True)
    ref = {}
    for sfx, seed in (("", 1), ("_m", 2)):
        torch.manual_seed(seed)
        hf = BertLMHeadModel(cfg).eval()
        for p in hf.parameters():
            p.normal_(0.0, 0.2)
        ref[sfx] = hf
        for k, v in hf.state_dict().items():
            official[f"text_decoder{sfx}.{k}"] = v.clone()
    src, out = str(tmp_path / "vqa_official.pth"), str(tmp_path / "vqa_ours.pth")
    torch.save({"model": official}, src)
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_albef_checkpoint.py"), src, out, "--task", "vqa", "--strict",
                        "--config-file", TINY_VQA, f"data.synthetic.root={synthetic_root}"], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    model = tiny_vqa_model(synthetic_root, tokenizer).eval()
    rep = ALBEFCheckpointer(model).load_weights(out)
    assert rep.complete and not rep.dropped
    g = torch.Generator().manual_seed(5)
    states, smask = torch.randn(3, 6, TINY["hidden"], generator=g), torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    ids = torch.randint(5, len(tokenizer), (3, 5), generator=g)
    ids[:, 0] = tokenizer.cls_token_id
    for sfx, teacher in (("", False), ("_m", True)):
        expect = ref[sfx](input_ids=ids, attention_mask=torch.ones_like(ids), encoder_hidden_states=states, encoder_attention_mask=smask).logits
        ours = model.head("answer", teacher=teacher)(ids, torch.ones_like(ids), states, smask)
        assert ((ours - expect).norm() / expect.norm()).item() < 1e-5, sfx


def test_vqa_evaluator_ranks_or_generates_and_writes_one_answer_per_question(synthetic_root, tokenizer, tmp_path):
    from PIL import Image
    from torch.utils.data import DataLoader

    from albef.evaluation.vqa import VQAEvaluator

    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "a.jpg")
    test = write_json(tmp_path / "test.json", [{"question_id": 7, "question": "what colour do we see", "image": "a.jpg", "answer": ["red"] * 10},
                                                {"question_id": 9, "question": "how often do we see red", "image": "a.jpg"}])
    alist = write_json(tmp_path / "answer_list.json", ["red", "blue", "red circle"])
    tf = {"image_res": 32, "crop_scale": None, "randaugment": None, "mean": [0.5] * 3, "std": [0.5] * 3}
    ds = VQAJSON(test, image_root=str(tmp_path), answer_list=alist, is_train=False, transforms=tf)
    loader_fn = lambda d, bs: DataLoader(d, batch_size=bs, collate_fn=VQACollator(tokenizer, 32))
    model = tiny_vqa_model(synthetic_root, tokenizer).eval()
    for inference in ("rank", "generate"):
        ev = VQAEvaluator(dataset=ds, loader_fn=loader_fn, prefix="vqa", tokenizer=tokenizer, inference=inference, k_test=2,
                          max_answer_tokens=6, output_dir=str(tmp_path / inference))
        out = ev.evaluate(model)
        assert out["vqa/answered"] == 2 and 0.0 <= out["vqa/acc"] <= 100.0  # accuracy over the one question with answers
        with open(tmp_path / inference / "vqa_result.json") as f:
            result = json.load(f)
        assert sorted(r["question_id"] for r in result) == [7, 9] and all(isinstance(r["answer"], str) for r in result)
        if inference == "rank":
            assert all(r["answer"] in ("red", "blue", "red circle") for r in result)
    with pytest.raises(ValueError, match="inference must be"):
        VQAEvaluator(dataset=ds, loader_fn=loader_fn, prefix="vqa", tokenizer=tokenizer, inference="beam")


def test_fusion_attention_implementation_is_a_config_switch(synthetic_root, tokenizer):
    from albef.registry import ComponentError

    torch.manual_seed(0)
    a = build_model(load_config(TINY_VQA, [f"data.synthetic.root={synthetic_root}"]), tokenizer).eval()
    torch.manual_seed(0)
    b = build_model(load_config(TINY_VQA, [f"data.synthetic.root={synthetic_root}", "model.fusion.attn_implementation=explicit"]), tokenizer).eval()
    assert b.fusion.layer[0].crossattention.self.impl == "explicit" and a.fusion.layer[0].crossattention.self.impl == "sdpa"
    ids = torch.tensor([[101 % len(tokenizer), 5, 6, 0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    img = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        fa = a.fuse(a.encode_text(ids, mask)[0], mask, a.encode_image(img)[0])
        fb = b.fuse(b.encode_text(ids, mask)[0], mask, b.encode_image(img)[0])
    assert torch.allclose(fa, fb, atol=1e-5)
    with pytest.raises((ValueError, ComponentError), match="attn_implementation must be one of sdpa, explicit"):
        build_model(load_config(TINY_VQA, [f"data.synthetic.root={synthetic_root}", "model.fusion.attn_implementation=flash"]), tokenizer)
