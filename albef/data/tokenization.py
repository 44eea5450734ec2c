"""Tokenizers and the collate functions that tokenise inside DataLoader workers."""
from __future__ import annotations

import os
from typing import Sequence

import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers fork; keep the Rust pool out of it


class TokenizerError(ValueError):
    pass


def _is_local_path(value: str) -> bool:
    """Whether ``data.tokenizer`` names a file or directory rather than a hub model: it ends
    in .txt/.json, or it cannot be a hub id (``name`` or ``namespace/name``, checked by
    huggingface_hub's own rule), e.g. an absolute or ``./`` path or one with several parts."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if value.endswith((".txt", ".json")):
        return True
    try:
        validate_repo_id(value)
    except HFValidationError:
        return True
    return False


def build_tokenizer(name_or_path: str):
    """A transformers tokenizer from a ``vocab.txt`` file, a local directory, or a hub name (cached or online).

    A value that can only be a path (see :func:`_is_local_path`) and does not exist is a
    TokenizerError saying so, not transformers' message about hub ids."""
    from transformers import AutoTokenizer, BertTokenizerFast

    name_or_path = os.path.expanduser(str(name_or_path))
    if not os.path.exists(name_or_path) and _is_local_path(name_or_path):
        raise TokenizerError(
            f"data.tokenizer: {name_or_path} does not exist (file or directory not found). Give a WordPiece vocab.txt, a "
            f"tokenizer directory or a hub name such as bert-base-uncased; build a vocabulary with "
            f"`python tools/build_vocab.py --ann-files YOUR.json --out-dir DIR` and set data.tokenizer=DIR/vocab.txt"
        )
    if os.path.isfile(name_or_path):
        if not name_or_path.endswith(".txt"):
            raise TokenizerError(f"data.tokenizer: {name_or_path} is a file but not a WordPiece vocab.txt")
        with open(name_or_path, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f if line.rstrip("\n")]
        size = len(tokens)
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in set(tokens)]
        if missing:
            raise TokenizerError(f"data.tokenizer: {name_or_path} lacks the special token(s) {missing}")
        # transformers 5 takes the file as `vocab=` and silently ignores `vocab_file=`
        # (building a 5-token vocabulary); older releases are the other way round.
        for key in ("vocab", "vocab_file"):
            try:
                tok = BertTokenizerFast(**{key: name_or_path}, do_lower_case=True)
            except (TypeError, ValueError, OSError):
                continue
            if len(tok) == size:
                break
        else:
            raise TokenizerError(f"data.tokenizer: could not load the {size}-token vocabulary {name_or_path}")
        return tok
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise TokenizerError(
            f"data.tokenizer: could not load '{name_or_path}' ({e.__class__.__name__}: {e}). Offline? Build a "
            f"vocabulary with `python tools/build_vocab.py --ann-files YOUR.json --out-dir DIR` and set "
            f"data.tokenizer=DIR/vocab.txt"
        ) from e


TOKENIZATION_MODES = ("ours", "official")


def check_tokenization_mode(mode: str) -> str:
    if mode not in TOKENIZATION_MODES:
        raise TokenizerError(f"data.tokenization must be one of {', '.join(TOKENIZATION_MODES)}, got {mode!r}")
    return mode


def tokenize(tokenizer, texts: Sequence[str], max_tokens: int, pad_to_max: bool = False, mode: str = "ours") -> dict[str, torch.Tensor]:
    """Texts -> ``input_ids``, ``attention_mask`` [N, L] (right-padded; no token type ids).

    ``mode="ours"``: the tokenizer's own template, ``[CLS] words [SEP]``, at most
    ``max_tokens`` tokens. ``mode="official"``: ALBEF's tokenizer
    (``models/tokenization_bert.py``), ``[CLS] words`` with no ``[SEP]``, at most
    ``max_tokens`` tokens with the ``[CLS]`` (so ``max_tokens - 1`` word pieces). Both pad
    to the longest text, or to ``max_tokens`` with ``pad_to_max`` (the official
    retrieval evaluation's ``padding='max_length'``).
    """
    check_tokenization_mode(mode)
    official = mode == "official"
    enc = tokenizer(
        list(texts), padding="max_length" if pad_to_max else "longest", truncation=True,
        max_length=max_tokens + 1 if official else max_tokens, return_tensors="pt", return_token_type_ids=False,
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if not official:
        return {"input_ids": ids, "attention_mask": mask}
    # The standard template with one more token, then the closing [SEP] of every row
    # becomes padding: exactly the official [CLS] + words, truncated the same way.
    if getattr(tokenizer, "padding_side", "right") != "right":
        raise TokenizerError("data.tokenization=official needs a right-padding tokenizer")
    last = mask.sum(dim=1, keepdim=True) - 1
    sep = tokenizer.sep_token_id
    if sep is None or ids.numel() and not bool((ids.gather(1, last) == sep).all()):
        raise TokenizerError("data.tokenization=official needs a BERT-style tokenizer that ends every text with [SEP]")
    ids = ids.scatter(1, last, tokenizer.pad_token_id)
    mask = mask.scatter(1, last, 0)
    length = max_tokens if pad_to_max else int(last.max()) if ids.numel() else 0
    return {"input_ids": ids[:, :length].contiguous(), "attention_mask": mask[:, :length].contiguous()}
