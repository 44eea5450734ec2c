"""``data.tokenization=official``: ALBEF's tokenizer use ([CLS] + word pieces, no [SEP], token
type 0, truncation counting the [CLS]), in training batches and in retrieval evaluation."""
from __future__ import annotations

import os
import random

import pytest
import torch

from conftest import REPO

from albef.data.text import pre_caption
from albef.data.collate import PretrainCollator
from albef.data.tokenization import TokenizerError, build_tokenizer, tokenize

WORDS = ["a", "red", "blue", "square", "circle", "left", "right", "of", "big", "small"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4; words 5..14


@pytest.fixture()
def tok(tmp_path):
    p = tmp_path / "vocab.txt"
    p.write_text("\n".join(SPECIALS + WORDS) + "\n")
    return build_tokenizer(str(p))


def official_reference(tokenizer, texts, max_length, pad_to_max=False):
    """The official call ``tokenizer(texts, padding=..., truncation=True, max_length=N)`` with
    ALBEF's ``build_inputs_with_special_tokens`` (= [CLS] + ids): truncation keeps N - 1
    word pieces (one special token), then right padding with [PAD] / mask 0."""
    rows = [[tokenizer.cls_token_id] + tokenizer.convert_tokens_to_ids(tokenizer.tokenize(t))[: max_length - 1] for t in texts]
    width = max_length if pad_to_max else max(len(r) for r in rows)
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def test_official_mode_hand_written(tok):
    enc = tokenize(tok, ["a red square", "Blue"], 8, mode="official")
    assert enc["input_ids"].tolist() == [[2, 5, 6, 8], [2, 7, 0, 0]]
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert set(enc) == {"input_ids", "attention_mask"}  # no token type ids: the model adds type 0
    ours = tokenize(tok, ["a red square", "Blue"], 8)
    assert ours["input_ids"].tolist() == [[2, 5, 6, 8, 3], [2, 7, 3, 0, 0]]  # the default keeps [SEP]


def test_official_mode_truncates_counting_cls_and_pads_to_max(tok):
    long = "a big blue circle left of a small red square"  # 10 word pieces
    enc = tokenize(tok, [long, "red"], 5, mode="official")
    assert enc["input_ids"].tolist() == [[2, 5, 13, 7, 9], [2, 6, 0, 0, 0]]  # [CLS] + 4 words = max_tokens
    enc = tokenize(tok, [long, "red"], 6, pad_to_max=True, mode="official")  # official retrieval eval: max_length padding
    assert enc["input_ids"].shape == (2, 6) and enc["attention_mask"].sum(1).tolist() == [6, 2]
    enc = tokenize(tok, ["red", "blue"], 6, pad_to_max=True, mode="official")
    assert enc["input_ids"].tolist() == [[2, 6, 0, 0, 0, 0], [2, 7, 0, 0, 0, 0]]
    enc = tokenize(tok, [""], 4, mode="official")
    assert enc["input_ids"].tolist() == [[2]]


def test_official_mode_matches_the_reference_on_random_captions(tok):
    rng = random.Random(0)
    vocab = WORDS + ["zebra", "Left-of", "a/b", "RED!", "(big)"]
    for trial in range(40):
        texts = [pre_caption(" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 14))), 30) for _ in range(rng.randint(1, 6))]
        max_tokens = rng.randint(2, 12)
        pad = trial % 2 == 1
        enc = tokenize(tok, texts, max_tokens, pad_to_max=pad, mode="official")
        ids, mask = official_reference(tok, texts, max_tokens, pad)
        assert torch.equal(enc["input_ids"], ids), (texts, max_tokens)
        assert torch.equal(enc["attention_mask"], mask), (texts, max_tokens)
        assert not (enc["input_ids"] == tok.sep_token_id).any()


def test_collator_and_bad_mode(tok):
    samples = [{"image": torch.zeros(3, 2, 2), "caption": c, "image_id": i} for i, c in enumerate(["a red square", "blue"])]
    batch = PretrainCollator(tok, max_tokens=25, tokenization="official")(samples)
    assert batch["input_ids"].tolist() == [[2, 5, 6, 8], [2, 7, 0, 0]]
    with pytest.raises(TokenizerError, match="data.tokenization"):
        PretrainCollator(tok, max_tokens=25, tokenization="lavis")
    with pytest.raises(TokenizerError, match="data.tokenization"):
        tokenize(tok, ["a"], 5, mode="bert")


def test_config_key_reaches_the_train_loader(tiny_cfg, tokenizer):
    from albef.data.build import build_train_dataset, build_train_loader

    assert tiny_cfg().data.tokenization == "ours"
    cfg = tiny_cfg("data.tokenization=official")
    loader = build_train_loader(cfg, build_train_dataset(cfg), tokenizer)
    assert loader.collate_fn.tokenization == "official"
    batch = next(iter(loader))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (ids[:, 0] == tokenizer.cls_token_id).all() and not (ids == tokenizer.sep_token_id).any()
    assert mask[:, -1].any()  # padded to the longest caption, not beyond


def test_retrieval_evaluation_uses_the_mode(tok, monkeypatch):
    import albef.evaluation.retrieval as R
    from albef.config import load_config
    from albef.modeling import build_model

    seen = []

    def spy(tokenizer, texts, max_tokens, pad_to_max=False, mode="ours"):
        enc = tokenize(tokenizer, texts, max_tokens, pad_to_max=pad_to_max, mode=mode)
        seen.append((mode, enc["input_ids"]))
        return enc

    monkeypatch.setattr(R, "tokenize", spy)
    torch.manual_seed(0)
    model = build_model(load_config(os.path.join(REPO, "tests", "configs", "official_tiny.yaml")))

    class TwoPairs:
        text = ["a red square", "a blue circle"]
        txt2img, img2txt = [0, 1], [[0], [1]]

        def __len__(self):
            return 2

    loader = [{"image": torch.randn(2, 3, 64, 64), "index": torch.tensor([0, 1])}]
    res = R.evaluate_retrieval(model, TwoPairs(), loader, tok, k_test=2, max_tokens=30, tokenization="official")
    assert set(res) == {"retrieval_itc", "retrieval"}
    (mode, ids), = seen
    assert mode == "official" and ids.shape == (2, 30) and not (ids == tok.sep_token_id).any()
