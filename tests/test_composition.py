"""Composition: caption edits, compositional hard negatives (collator, ITM, ITC) and the probe."""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch

from albef.modeling.fusion.visual import VisualInput
from albef.modeling.inference import InferenceMixin

from albef.data.caption_edits import (
    EditRulesError,
    PhrasePattern,
    ReplaceFromSet,
    SwapWords,
    load_edit_rules,
    shapes_world_rules,
)
from albef.data.compositional_negatives import IS_POSITIVE, NO_RULE, SKIPPED, CompositionalNegatives
from albef.data.synthetic.scenes import _all_canonical_scenes, _palette, canonical_scene, scene_captions
from albef.evaluation.composition import preference_shares, probe_items

from conftest import REPO, TINY, run_cli

# the compositional_negatives.yaml project config as one override (its header says so)
# its tests share module fixtures (a trained model, generated data): one xdist worker builds them once
pytestmark = pytest.mark.xdist_group("composition")


OVERRIDE = "data.text_negatives={name: CompositionalNegatives, rules: shapes_world, kinds: [relation_flip, object_exchange], rate: 1.0}"
WORLD = shapes_world_rules(["red", "green", "blue", "yellow", "purple", "orange"], ["circle", "square", "triangle", "cross"])


# --------------------------------------------------------------------------- edit kinds on hand-written captions
@pytest.mark.parametrize("caption,kind,expected", [
    ("a red circle left of a blue square", "relation_flip", "a red circle right of a blue square"),
    ("a blue square to the right of a red circle", "relation_flip", "a blue square to the left of a red circle"),
    ("a green cross above an orange triangle", "relation_flip", "a green cross below an orange triangle"),
    ("a yellow circle below a red cross", "relation_flip", "a yellow circle above a red cross"),
    ("a red circle left of a blue square", "object_exchange", "a blue square left of a red circle"),
    ("an orange cross to the left of a green circle", "object_exchange", "a green circle to the left of an orange cross"),
    ("a purple triangle below a red square", "object_exchange", "a red square below a purple triangle"),
    ("a red circle left of an orange square", "binding", "an orange circle left of a red square"),
    ("a blue square to the right of a red circle", "binding", "a red square to the right of a blue circle"),
    ("an orange cross below a green triangle", "binding", "a green cross below an orange triangle"),
    ("a red circle above a red square", "binding", None),  # equal colours: exchanging them changes nothing
    ("a red circle left of a blue circle", "binding", None),  # equal shapes: it would be the object exchange
    ("two dogs play on the grass", "binding", None),
    # captions the rules do not match
    ("a red circle", "relation_flip", None),
    ("a red circle", "object_exchange", None),
    ("two dogs play on the grass", "relation_flip", None),
    ("two dogs play on the grass", "object_exchange", None),
    ("two dogs play on the grass", "attribute_change", None),
    ("a pink circle left of a blue square", "object_exchange", None),  # not a colour of the world
    ("a red circle leftish of a blue square", "relation_flip", None),  # whole words only
])
def test_shapes_world_edits(caption, kind, expected):
    assert WORLD.edit(caption, kind, random.Random(0)) == expected


def test_attribute_change_changes_the_first_colour_and_fixes_the_article():
    for seed in range(30):
        out = WORLD.edit("a red circle left of a blue square", "attribute_change", random.Random(seed))
        words = out.split(" ")
        assert words[2:] == "circle left of a blue square".split(" ")
        assert words[1] != "red" and words[1] in WORLD.rules["attribute_change"].word_sets[0]
        assert words[0] == ("an" if words[1] == "orange" else "a")
    assert WORLD.edit("an orange cross above a red circle", "attribute_change", random.Random(1)).startswith("a ")


def test_user_rules_file(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        "kinds:\n"
        "  relation_flip: {swap: {'on top of': under, 'next to': 'far from'}}\n"
        "  object_exchange: {pattern: '^the (\\w+) (.+) the (\\w+)$', replace: 'the \\3 \\2 the \\1'}\n"
        "  size_change: {word_sets: [[big, small]], a_an: false}\n"
    )
    rules = load_edit_rules(str(path))
    assert rules.kinds == ["relation_flip", "object_exchange", "size_change"]
    assert rules.edit("the cat on top of the mat", "relation_flip") == "the cat under the mat"
    assert rules.edit("the cat under the mat", "relation_flip") == "the cat on top of the mat"  # symmetric
    assert rules.edit("the cat next to the dog", "relation_flip") == "the cat far from the dog"
    assert rules.edit("the cat on top of the mat", "object_exchange") == "the mat on top of the cat"
    assert rules.edit("a big dog", "size_change") == "a small dog"
    assert rules.edit("a dog", "size_change") is None
    assert rules.edit("a dog", "relation_flip") is None
    assert rules.edit("a dog near a cat", "object_exchange") is None


@pytest.mark.parametrize("body,match", [
    ("kinds: {flip: {swap: {}}}\n", "flip.*empty"),
    ("kinds: {flip: {pattern: '(', replace: x}}\n", "flip.*not a regular expression"),
    ("kinds: {flip: {pattern: '(a)', replace: '\\\\2'}}\n", "flip.*does not fit"),
    ("kinds: {flip: {word_sets: [[red]]}}\n", "flip.*at least 2"),
    ("kinds: {flip: {swap: {a: b}, pattern: x}}\n", "flip.*exactly one"),
    ("kinds: {flip: {swap: {a: b}, typo: 1}}\n", "flip.*typo"),
    ("kinds: {}\n", "at least one kind"),
    ("[1, 2]\n", "expected a mapping"),
])
def test_bad_rules_name_the_file_and_kind(tmp_path, body, match):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(EditRulesError, match=match) as e:
        load_edit_rules(str(path))
    assert str(path) in str(e.value)


def test_missing_rules_file_and_unknown_kind():
    with pytest.raises(EditRulesError, match="nope.yaml does not exist"):
        load_edit_rules("nope.yaml")
    with pytest.raises(EditRulesError, match="no edit kind.*'rotate'"):
        WORLD.subset(["rotate"])


def test_rule_types_directly():
    assert SwapWords({"left": "right"}, symmetric=False)("right of left") == "right of right"
    assert PhrasePattern(r"(\w+) and (\w+)", r"\2 and \1")("cats and dogs") == "dogs and cats"
    assert PhrasePattern(r"(\w+) and (\w+)", r"\2 and \1")("cats and cats") is None  # no change: not an edit
    assert ReplaceFromSet([["a1", "b1"]])("x a1 y") == "x b1 y"


def scene_same_colour_or_shape(caption: str) -> bool:
    words = caption.split()
    colours = [w for w in words if w in WORLD.rules["attribute_change"].word_sets[0]]
    shapes = [w for w in words if w in ("circle", "square", "triangle", "cross")]
    return colours[0] == colours[1] or shapes[0] == shapes[1]


# --------------------------------------------------------------------------- compositional negatives
def test_an_edited_caption_is_never_true_of_its_scene():
    """Over every scene of the world and every paraphrase: relation flips and object
    exchanges describe another scene (the edit is a false caption of the image)."""
    colors, shapes = _palette()
    for scene in _all_canonical_scenes(colors, shapes):
        true = set(scene_captions(scene))
        for cap in true:
            for kind in ("relation_flip", "object_exchange", "attribute_change", "binding"):
                e = WORLD.edit(cap, kind, random.Random(cap))
                if kind == "binding" and scene_same_colour_or_shape(cap):
                    assert e is None, (scene, cap)
                    continue
                assert e is not None and e not in true, (scene, cap, kind, e)


def test_negatives_shapes_kinds_and_counts():
    gen = CompositionalNegatives(rules="shapes_world", kinds=["relation_flip", "object_exchange"], seed=3)
    caps = ["a red circle left of a blue square", "two dogs", "a green cross above a red circle", "a red circle"]
    negs, kinds = gen(caps, [0, 1, 2, 3])
    assert len(negs) == len(kinds) == 4
    assert kinds[1] == NO_RULE and negs[1] == caps[1]  # counted, placeholder = the caption itself
    assert kinds[3] == NO_RULE
    for i in (0, 2):
        assert kinds[i] in (0, 1)
        assert negs[i] == WORLD.edit(caps[i], gen.kinds[kinds[i]])
    assert gen(caps, [0, 1, 2, 3]) == (negs, kinds)  # reproducible
    # both kinds are drawn over a batch
    many = ["a red circle left of a blue square"] * 64
    assert set(gen(many, list(range(64)))[1]) == {0, 1}
    # rate 0: every applicable caption is skipped, unmatched ones stay NO_RULE
    negs0, kinds0 = CompositionalNegatives(rate=0.0)(caps, [0, 1, 2, 3])
    assert kinds0 == [SKIPPED, NO_RULE, SKIPPED, NO_RULE] and negs0 == caps
    with pytest.raises(EditRulesError, match="rate"):
        CompositionalNegatives(rate=1.5)


def test_a_negative_that_is_a_positive_of_its_image_is_not_used():
    # "a b" -> "b a" by the rule; "b a" is another caption of the same image in the batch
    gen = CompositionalNegatives(rules={"exchange": {"pattern": r"^(\w) (\w)$", "replace": r"\2 \1"}}, kinds=None)
    negs, kinds = gen(["a b", "b a", "c d"], [7, 7, 8])
    assert kinds[:2] == [IS_POSITIVE, IS_POSITIVE] and negs[:2] == ["a b", "b a"]
    assert kinds[2] == 0 and negs[2] == "d c"


def test_collator_tokenises_negatives_beside_the_captions(tokenizer):
    from albef.data.collate import ImageTextCollator

    gen = CompositionalNegatives(seed=0)
    samples = [
        {"image": torch.zeros(3, 4, 4), "caption": "a red circle to the left of a blue square", "image_id": 0},
        {"image": torch.zeros(3, 4, 4), "caption": "a green cross above a red circle", "image_id": 1},
        {"image": torch.zeros(3, 4, 4), "caption": "a red circle", "image_id": 2},
    ]
    batch = ImageTextCollator(tokenizer, max_tokens=16, text_negatives=gen)(samples)
    assert batch["text_neg_input_ids"].shape == batch["input_ids"].shape
    assert batch["text_neg_attention_mask"].shape == batch["attention_mask"].shape
    assert batch["text_neg_valid"].tolist() == [True, True, False]
    assert batch["text_neg_kind"][2].item() == NO_RULE
    negs, _ = gen([s["caption"] for s in samples], [0, 1, 2])
    for i in range(3):
        n = int(batch["text_neg_attention_mask"][i].sum())
        assert tokenizer.decode(batch["text_neg_input_ids"][i, 1:n - 1]) == negs[i]
    assert not torch.equal(batch["text_neg_input_ids"][0], batch["input_ids"][0])
    assert torch.equal(batch["text_neg_input_ids"][2], batch["input_ids"][2])  # placeholder
    plain = ImageTextCollator(tokenizer, max_tokens=16)(samples)
    assert "text_neg_input_ids" not in plain
    # without image ids (data.image_ids=false) every row is its own image
    no_ids = [{k: v for k, v in s.items() if k != "image_id"} for s in samples]
    assert ImageTextCollator(tokenizer, max_tokens=16, text_negatives=gen)(no_ids)["text_neg_valid"].tolist() == [True, True, False]
    # a generator that hands back the caption itself with a kind >= 0 made no negative
    lazy = lambda texts, ids: (list(texts), [0] * len(texts))  # noqa: E731
    assert not ImageTextCollator(tokenizer, max_tokens=16, text_negatives=lazy)(samples)["text_neg_valid"].any()
    # official tokenisation and fixed-length padding keep the two tensors the same shape
    off = ImageTextCollator(tokenizer, max_tokens=16, tokenization="official", pad_to_max=True, text_negatives=gen)(samples)
    assert off["text_neg_input_ids"].shape == off["input_ids"].shape == (3, 16)


def test_a_collator_that_cannot_take_negatives_is_an_error(tiny_cfg, tokenizer):
    from albef.data.build import build_collator, build_text_negatives, build_train_dataset
    from albef.registry import ComponentError

    cfg = tiny_cfg("data.text_negatives={name: CompositionalNegatives}", "data.collator.name=VQACollator")
    with pytest.raises(ComponentError, match="data.text_negatives is set but data.collator \\(VQACollator\\)"):
        build_collator(cfg, build_train_dataset(cfg), tokenizer, text_negatives=build_text_negatives(cfg))
    with pytest.raises(EditRulesError, match="data.text_negatives.kinds.*'relation_flip'"):
        CompositionalNegatives(rules={"mine": {"swap": {"big": "small"}}})


def _tiny_model_and_batch(tiny_cfg, *overrides):
    from albef.data.build import build_collator, build_text_negatives, build_train_dataset
    from albef.data.tokenization import build_tokenizer
    from albef.modeling import build_model

    cfg = tiny_cfg("data.text_negatives={name: CompositionalNegatives}", *overrides)
    tok = build_tokenizer(cfg.data.tokenizer)
    torch.manual_seed(0)
    model = build_model(cfg, tok)
    ds = build_train_dataset(cfg)
    collate = build_collator(cfg, ds, tok, text_negatives=build_text_negatives(cfg))
    batch = collate([ds[i] for i in range(6)])
    b = batch["input_ids"].shape[0]
    batch["itm_neg_image_idx"] = torch.roll(torch.arange(b), 1)  # pinned: both runs use the same mined pairs
    batch["itm_neg_text_idx"] = torch.roll(torch.arange(b), 2)
    return model, batch


def test_itm_adds_one_negative_pair_per_caption(tiny_cfg):
    from albef.modeling.objectives.itm import ITMLoss

    import torch.nn.functional as F

    model, batch = _tiny_model_and_batch(tiny_cfg)
    batch["text_neg_valid"][1] = False  # one caption without a negative: dropped from the mean
    b = batch["input_ids"].shape[0]
    itm = model.objectives["itm"]
    assert isinstance(itm, ITMLoss) and itm.text_negatives
    ctx = model.context(batch)
    with_neg = itm(ctx)
    assert ctx.stats["itm_text_negatives"].item() == b - 1
    ctx3 = model.context({k: v for k, v in batch.items() if not k.startswith("text_neg_")})
    without = itm(ctx3)
    # by hand: the extra pairs' cross-entropy against label 0, averaged with the 3B others
    hidden, _ = model.encode_text(batch["text_neg_input_ids"], batch["text_neg_attention_mask"])
    fused = model.fuse(hidden, batch["text_neg_attention_mask"], ctx.visual)
    ce = F.cross_entropy(model.heads["itm"](fused[:, 0]).float(), torch.zeros(b, dtype=torch.long), reduction="none")
    valid = batch["text_neg_valid"].float()
    expected = (3 * b * without + (ce * valid).sum()) / (3 * b + valid.sum())
    assert torch.allclose(with_neg, expected, rtol=1e-5, atol=1e-6)
    # the negatives' own term of ITMLoss (its output minus the mined pairs' share) sends
    # gradient into the text encoder through the negatives' encoding
    model.zero_grad()
    (with_neg * (3 * b + valid.sum()) - itm(model.context({k: v for k, v in batch.items() if not k.startswith("text_neg_")})) * 3 * b).backward()
    g = model.text_encoder.get_input_embeddings().weight.grad
    neg_only = set(batch["text_neg_input_ids"][batch["text_neg_valid"]].flatten().tolist()) - set(batch["input_ids"].flatten().tolist())
    assert g is not None and g.abs().sum() > 0
    for tok_id in neg_only:  # words only the negatives contain ("right" for a batch of "left" captions) learn from them
        assert g[tok_id].abs().sum() > 0
    # switched off by the objective's option
    itm.text_negatives = False
    assert torch.allclose(itm(model.context(batch)), without, rtol=1e-6)


def _itc_ctx(image_feat, text_feat, neg_feat, valid, temp=0.5):
    from albef.modeling.context import StepContext, TextNegatives
    from albef.modeling.teachers.base import TeacherOutput

    b = image_feat.shape[0]
    teacher = TeacherOutput(image_feat_m=image_feat, text_feat_m=text_feat, image_feat_all=image_feat, text_feat_all=text_feat)
    batch = {"input_ids": torch.zeros(b, 2, dtype=torch.long), "attention_mask": torch.ones(b, 2, dtype=torch.long)}
    negatives = TextNegatives(torch.zeros(b, 2, 1), torch.ones(b, 2, dtype=torch.long), neg_feat, valid)
    return StepContext(batch, temp=torch.tensor(temp), teacher=teacher, image_embeds=torch.zeros(b, 1, 1), image_feat=image_feat,
                       text_embeds=torch.zeros(b, 2, 1), text_feat=text_feat, text_negatives=negatives)


def test_itc_text_negatives_by_hand():
    from albef.modeling.objectives.itc import ITCLoss

    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.8, 0.6], [0.6, 0.8]])
    neg = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    valid = torch.tensor([True, False])
    t = 0.5
    loss = ITCLoss(text_negatives=True)(_itc_ctx(img, txt, neg, valid, t))
    # i2t: row 0 gets an extra column s(img0, neg0); row 1's is masked out
    s = img @ txt.t() / t
    row0 = torch.log_softmax(torch.tensor([s[0, 0], s[0, 1], (img[0] @ neg[0]) / t]), 0)[0]
    row1 = torch.log_softmax(s[1], 0)[1]
    i2t = -(row0 + row1) / 2
    t2i = -(torch.log_softmax(s.t()[0], 0)[0] + torch.log_softmax(s.t()[1], 0)[1]) / 2
    assert torch.allclose(loss, (i2t + t2i) / 2, atol=1e-6)
    plain = ITCLoss()(_itc_ctx(img, txt, neg, valid, t))
    assert torch.allclose(plain, (-(torch.log_softmax(s[0], 0)[0] + row1) / 2 + t2i) / 2, atol=1e-6)
    assert loss > plain  # a hard negative makes the loss larger
    assert math.isfinite(ITCLoss(text_negatives=True)(_itc_ctx(img, txt, neg, torch.tensor([False, False]), t)).item())


# --------------------------------------------------------------------------- the probe
def test_probe_arithmetic_on_a_known_case():
    true = torch.tensor([2.0, 1.0, 0.5, 3.0, 1.0])
    false = torch.tensor([1.0, 1.0, 0.7, 0.0, 0.0])
    kinds = ["a", "a", "a", "b", "b"]
    shares = preference_shares(true, false, kinds, ["a", "b", "c"])
    assert shares["a"] == pytest.approx(100 / 3)  # a tie is a loss
    assert shares["b"] == 100.0
    assert math.isnan(shares["c"])
    texts = ["a red circle left of a blue square", "a dog", "a green cross above a red circle"]
    items, unmatched = probe_items(texts, WORLD, ["relation_flip", "object_exchange"], balanced=False)
    assert unmatched == {"relation_flip": 1, "object_exchange": 1}
    assert [(j, k) for j, k, _, _ in items] == [(0, "relation_flip"), (0, "object_exchange"), (2, "relation_flip"), (2, "object_exchange")]
    assert items[0][2:] == ("a red circle left of a blue square", "a red circle right of a blue square")
    # balanced: each question is also asked of the caption's paraphrase ("B right of A")
    items, unmatched = probe_items(texts, WORLD, ["relation_flip", "object_exchange"])
    assert unmatched == {"relation_flip": 1, "object_exchange": 1}
    assert [it[2:] for it in items if it[0] == 0 and it[1] == "relation_flip"] == [
        ("a red circle left of a blue square", "a red circle right of a blue square"),
        ("a blue square right of a red circle", "a blue square left of a red circle"),
    ]
    assert len(items) == 8


class _WordModel(InferenceMixin, torch.nn.Module):
    """ITM logit = +1 if the text has token ``good`` else -1; ITC feature likewise: a known answer.
    (The evaluators score through the inference methods of :class:`InferenceMixin`.)"""

    def __init__(self, good: int):
        super().__init__()
        self.good = good

    def encode_text(self, ids, mask):
        s = (ids == self.good).any(dim=1).float() * 2 - 1  # [N]
        hidden = torch.zeros(ids.shape[0], ids.shape[1], 2)
        hidden[:, 0, 1] = s
        return hidden, torch.stack([s, torch.ones_like(s)], 1)

    def encode_image(self, image):
        n = image.shape[0]
        return torch.zeros(n, 2, 2), torch.tensor([[1.0, 0.0]]).expand(n, 2)

    def fuse(self, text, mask, visual):
        return text

    def prepare_visual(self, visual):
        return VisualInput.of(visual)

    def has_head(self, key):
        return True

    def head(self, key):
        return torch.nn.Identity()


def test_probe_end_to_end_with_a_model_whose_answer_is_known(tokenizer):
    from albef.evaluation.composition import evaluate_composition

    class DS:
        text = ["a red circle left of a blue square", "a blue square right of a red circle", "a green cross above a red circle", "a dog"]
        txt2img = [0, 1, 2, 3]

        def __len__(self):
            return 4

    loader = [{"image": torch.zeros(4, 3, 2, 2), "index": torch.arange(4)}]
    good = tokenizer.convert_tokens_to_ids("left")
    res = evaluate_composition(_WordModel(good), DS(), loader, tokenizer, WORLD, kinds=["relation_flip", "object_exchange"], max_tokens=16,
                               balanced=False)
    k = res["kinds"]
    # relation_flip: caption 0 (left -> right) wins, 1 (right -> left) loses, 2 (no 'left' either way) ties = loss
    assert k["relation_flip"]["itm"] == pytest.approx(100 / 3) and k["relation_flip"]["n"] == 3 and k["relation_flip"]["unmatched"] == 1
    assert k["relation_flip"]["itc"] == pytest.approx(100 / 3)
    # object_exchange keeps the relation word: every item ties
    assert k["object_exchange"]["itm"] == 0.0
    assert len(res["items"]) == 6 and res["items"][0]["itm_true"] == 1.0 and res["items"][0]["itm_false"] == -1.0
    # balanced: the paraphrases "B right of A" -> "B left of A" (lose) and "A left of B" -> "A right of B" (win)
    # join in; a model that only likes the word "left" wins 2 of 6 relation flips, i.e. cannot exceed 50%
    k = evaluate_composition(_WordModel(good), DS(), loader, tokenizer, WORLD, kinds=["relation_flip"], max_tokens=16)["kinds"]
    assert k["relation_flip"]["n"] == 6 and k["relation_flip"]["itm"] == pytest.approx(100 / 3)
    left_only = DS()
    left_only.text = ["a red circle left of a blue square", "a green circle left of a red square"]
    left_only.txt2img = [0, 1]
    unbalanced = evaluate_composition(_WordModel(good), left_only, loader, tokenizer, WORLD, kinds=["relation_flip"], max_tokens=16, balanced=False)
    balanced = evaluate_composition(_WordModel(good), left_only, loader, tokenizer, WORLD, kinds=["relation_flip"], max_tokens=16)
    assert unbalanced["kinds"]["relation_flip"]["itm"] == 100.0 and balanced["kinds"]["relation_flip"]["itm"] == 50.0


@pytest.mark.parametrize("rank", [0, 1])
def test_composition_evaluator_runs_the_probe_on_rank_0_only(tokenizer, monkeypatch, rank):
    """Under distributed evaluation the probe runs once, on rank 0, and every rank returns
    rank 0's metrics (broadcast), as the other evaluators return the same all-reduced ones."""
    from albef.evaluation import composition
    from albef.utils import comm

    class DS:
        text = ["a red circle left of a blue square", "a dog"]
        txt2img = [0, 1]
        ann_file = None

        def __len__(self):
            return 2

    probes, sent = [], []
    real = composition.evaluate_composition
    monkeypatch.setattr(composition, "evaluate_composition", lambda *a, **k: probes.append(1) or real(*a, **k))
    monkeypatch.setattr(comm, "get_rank", lambda: rank)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    from_rank0 = {"composition/relation_flip_itm": 100.0, "composition/relation_flip_itc": 100.0, "composition/relation_flip_n": 1.0}
    monkeypatch.setattr(comm, "broadcast_object", lambda obj, src=0: sent.append(obj) or (obj if rank == 0 else dict(from_rank0)))
    loader = lambda ds, bs: [{"image": torch.zeros(2, 3, 2, 2), "index": torch.arange(2)}]  # noqa: E731
    ev = composition.CompositionEvaluator(dataset=DS(), prefix="composition", loader_fn=loader, tokenizer=tokenizer,
                                          kinds=["relation_flip"], max_tokens=16, balanced=False,
                                          manifest={"colors": ["red", "blue"], "shapes": ["circle", "square"]})
    out = ev.evaluate(_WordModel(tokenizer.convert_tokens_to_ids("left")))
    assert out == from_rank0
    assert probes == ([1] if rank == 0 else [])  # the other ranks do not repeat the probe
    assert sent == ([from_rank0] if rank == 0 else [None])


# --------------------------------------------------------------------------- through the CLI
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, synthetic_root):
    out = str(tmp_path_factory.mktemp("comp"))
    r = run_cli(["--config-file", TINY, f"data.synthetic.root={synthetic_root}", f"output_dir={out}", "train.max_iter=3",
                 "data.text_negatives={name: CompositionalNegatives}", "model.objectives.itc.text_negatives=true",
                 "eval.composition={name: CompositionEvaluator, split: test, max_tokens: 16}"])
    assert r.returncode == 0, r.stderr[-2000:]
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f]
    assert any(row.get("itm_text_negatives", 0) > 0 for row in rows)  # the negatives reached ITM
    assert all(row.get("text_negatives_no_rule", 0) == 0 for row in rows)  # every synthetic caption matches a rule
    final = [row for row in rows if "composition/relation_flip_itm" in row]  # the probe as an evaluator
    assert final and 0 <= final[-1]["composition/relation_flip_itm"] <= 100 and final[-1]["composition/relation_flip_n"] > 0
    return out


def _probe(args):
    return subprocess.run([sys.executable, os.path.join(REPO, "projects", "composition", "probe_composition.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.slow
def test_probe_tool_on_the_synthetic_split(tiny_checkpoint, synthetic_root, tmp_path):
    r = _probe(["--config-file", TINY, "--weights", os.path.join(tiny_checkpoint, "model_final.pth"),
                "--test", os.path.join(synthetic_root, "test.json"), "--out", str(tmp_path), f"data.synthetic.root={synthetic_root}"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| relation_flip |" in r.stdout and "| object_exchange |" in r.stdout and "| attribute_change |" in r.stdout
    with open(tmp_path / "composition_probe.json") as f:
        res = json.load(f)
    with open(os.path.join(synthetic_root, "test.json")) as f:
        n_captions = sum(len(e["caption"]) for e in json.load(f))
    for kind in ("relation_flip", "object_exchange", "attribute_change"):
        r_k = res["kinds"][kind]
        assert r_k["unmatched"] == 0 and r_k["n"] == 2 * n_captions  # every caption and its paraphrase match
        items = [it for it in res["items"] if it["kind"] == kind]
        share = 100.0 * sum(it["itm_true"] > it["itm_false"] for it in items) / len(items)
        assert r_k["itm"] == pytest.approx(share)


@pytest.mark.slow
def test_probe_tool_with_user_rules_and_bad_input(tiny_checkpoint, synthetic_root, tmp_path):
    weights = os.path.join(tiny_checkpoint, "model_final.pth")
    with open(os.path.join(synthetic_root, "test.json")) as f:
        entries = json.load(f)
    other = tmp_path / "mine"
    other.mkdir()
    test = other / "test.json"  # no manifest.json beside it: not the synthetic world
    test.write_text(json.dumps([{"image": os.path.join(synthetic_root, e["image"]), "caption": e["caption"]} for e in entries]))
    base = ["--config-file", TINY, "--weights", weights, "--test", str(test), f"data.synthetic.root={synthetic_root}"]
    r = _probe(base)
    assert r.returncode == 2 and "give --rules" in r.stderr
    rules = tmp_path / "rules.yaml"
    rules.write_text("kinds: {flip: {swap: {left: right, above: below}}}\n")
    r = _probe(base + ["--rules", str(rules)])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| flip |" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("kinds: {flip: {swop: {left: right}}}\n")
    r = _probe(base + ["--rules", str(bad)])
    assert r.returncode == 2 and str(bad) in r.stderr and "flip" in r.stderr
    r = _probe(["--config-file", TINY, "--weights", str(tmp_path / "none.pth"), "--test", str(test)])
    assert r.returncode == 2 and "none.pth does not exist" in r.stderr


def test_project_config_is_the_default_plus_its_overrides(synthetic_root):
    from albef.config import config_to_dict, load_config

    proj = os.path.join(REPO, "projects", "composition", "configs")
    default = config_to_dict(load_config(os.path.join(proj, "default_recipe.yaml")))
    assert default == config_to_dict(load_config(os.path.join(REPO, "configs", "pretrain", "synthetic.yaml")))
    cn = config_to_dict(load_config(os.path.join(proj, "compositional_negatives.yaml")))
    by_override = config_to_dict(load_config(os.path.join(REPO, "configs", "pretrain", "synthetic.yaml"),
                                             [OVERRIDE, "model.objectives.itc.text_negatives=true"]))
    assert cn == by_override


def test_the_example_rules_file_is_the_builtin_rules():
    example = load_edit_rules(os.path.join(REPO, "projects", "composition", "rules", "shapes_world.yaml"))
    builtin = load_edit_rules("shapes_world")
    assert example.kinds == builtin.kinds
    colors, shapes = _palette()
    for scene in _all_canonical_scenes(colors, shapes)[::7]:
        for cap in scene_captions(scene):
            for kind in builtin.kinds:
                assert example.edit(cap, kind, random.Random(cap)) == builtin.edit(cap, kind, random.Random(cap))


# --------------------------------------------------------------------------- relation-focused MLM
def test_mlm_focus_words_are_masked_at_their_own_rate():
    from albef.modeling.objectives.mlm import mask_tokens

    ids = torch.tensor([[101, 5, 6, 7, 5, 102, 0]])
    att = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    never = torch.tensor([0, 101, 102])
    focus = torch.tensor([5])
    _, labels = mask_tokens(ids, att, 0.0, 103, 50, never, focus_ids=focus, focus_prob=1.0)
    assert (labels != -100).tolist() == [[False, True, False, False, True, False, False]]
    _, labels = mask_tokens(ids, att, 1.0, 103, 50, never, focus_ids=focus, focus_prob=0.0)
    assert (labels != -100).tolist() == [[False, False, True, True, False, False, False]]
    torch.manual_seed(0)
    many = ids.repeat(4000, 1)
    _, labels = mask_tokens(many, att.repeat(4000, 1), 0.15, 103, 50, never, focus_ids=focus, focus_prob=0.5)
    chosen = labels != -100
    assert abs(chosen[:, [1, 4]].float().mean().item() - 0.5) < 0.02
    assert abs(chosen[:, [2, 3]].float().mean().item() - 0.15) < 0.02


def test_mlm_focus_words_must_be_tokens():
    from albef.modeling.objectives.mlm import MLMLoss

    vocab = {"left": 7, "right": 8}
    assert MLMLoss(focus_words=["left", "right"], vocab=vocab).focus_ids.tolist() == [7, 8]
    with pytest.raises(ValueError, match=r"\['sideways'\] are not tokens"):
        MLMLoss(focus_words=["left", "sideways"], vocab=vocab)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        MLMLoss(focus_words=["left"])
    assert MLMLoss().focus_ids.numel() == 0


def test_mlm_fill_in_probe_with_a_head_that_always_says_left(tokenizer):
    from albef.evaluation.composition import mlm_swap_preference

    v = len(tokenizer)
    left = tokenizer.convert_tokens_to_ids("left")

    class AlwaysLeft(_WordModel):
        def head(self, key):
            def f(h):
                out = torch.zeros(h.shape[0], v)
                out[:, left] = 1.0
                return out
            return f

    texts = ["a red circle left of a blue square", "a blue square right of a red circle", "a red circle to the left of a blue square",
             "a green cross above a red circle", "a dog"]
    share, n = mlm_swap_preference(AlwaysLeft(left), texts, [0, 1, 2, 3, 4], torch.zeros(5, 2, 2), tokenizer, WORLD.rules["relation_flip"], max_tokens=16)
    # probed: the 4 captions with a swappable word; right: the two "left" ones ("above" vs "below" ties at 0 = wrong)
    assert n == 4 and share == 50.0


@pytest.mark.parametrize("rank", [0, 1])
def test_composition_probe_failure_on_rank_0_reaches_every_rank(tokenizer, monkeypatch, rank):
    """A probe that fails on rank 0 is broadcast as an error: the other ranks raise naming it
    instead of waiting for metrics that never come."""
    from albef.evaluation import composition
    from albef.utils import comm

    class DS:
        text = ["a red circle left of a blue square"]
        txt2img = [0]
        ann_file = None

        def __len__(self):
            return 1

    def broken(*a, **k):
        raise ValueError("probe exploded")

    sent = []
    monkeypatch.setattr(composition, "evaluate_composition", broken)
    monkeypatch.setattr(comm, "get_rank", lambda: rank)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "broadcast_object", lambda obj, src=0: sent.append(obj) or (obj if rank == 0 else "ValueError: probe exploded"))
    ev = composition.CompositionEvaluator(dataset=DS(), prefix="composition", loader_fn=lambda ds, bs: [], tokenizer=tokenizer,
                                          kinds=["relation_flip"], max_tokens=16, balanced=False,
                                          manifest={"colors": ["red", "blue"], "shapes": ["circle", "square"]})
    with pytest.raises((ValueError, RuntimeError), match="probe exploded"):
        ev.evaluate(_WordModel(tokenizer.convert_tokens_to_ids("left")))
    assert sent == (["ValueError: probe exploded"] if rank == 0 else [None])


def test_capacity_report_reads_the_runs_metrics(tmp_path):
    """projects/composition/capacity.py: the table of the capacity experiment from each run's metrics.json."""
    from projects.composition.capacity import report

    for name, acc, rel in (("d2_frozen", 0.5, 48.0), ("d4_unfrozen", 0.9, 80.0)):
        (tmp_path / name).mkdir()
        rows = [{"iteration": i, "edited_pair_acc": acc, "loss_edited": 0.69 - i / 10000} for i in (49, 99, 149)]
        rows.append({"iteration": 150, "composition/relation_flip_itm": rel, "composition/object_exchange_itm": 51.0,
                     "composition/binding_itm": 88.0})
        (tmp_path / name / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows))
    table = report(str(tmp_path))
    assert "| d2_frozen | 50.0% | 0.6751 (0.6751) | 48.0% | 51.0% | 88.0% |" in table
    assert "| d4_unfrozen | 90.0% |" in table and "d6_frozen" not in table
    assert (tmp_path / "capacity.md").read_text().strip() == table
