"""Train a WordPiece vocabulary from caption JSON files (so runs work offline)."""
from __future__ import annotations

import os
from typing import Iterable, Iterator

from albef.data.files import DataError, captions_of, read_json_list
from albef.data.text import pre_caption

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def iter_captions(ann_files: Iterable[str], max_words: int = 30) -> Iterator[str]:
    """Every caption (str or list of str) of official-format JSON files, preprocessed as in training."""
    for path in ann_files:
        for i, ann in enumerate(read_json_list(path)):
            if not isinstance(ann, dict):
                raise DataError(f"{path}: entry {i} is not an object: {ann!r}")
            key = next((k for k in ("caption", "text", "sentence") if k in ann), "caption")
            for c in captions_of(ann, path, i, key):
                c = pre_caption(c, max_words)
                if c:
                    yield c


def build_wordpiece_vocab(ann_files: Iterable[str], out_dir: str, vocab_size: int = 30522, min_frequency: int = 1, max_words: int = 30) -> str:
    """Train an uncased BERT WordPiece vocabulary; writes ``out_dir/vocab.txt`` and returns its path.

    The special tokens come first: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4.
    """
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.train_from_iterator(
        iter_captions(list(ann_files), max_words),
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    os.makedirs(out_dir, exist_ok=True)
    tok.save_model(out_dir)
    return os.path.join(out_dir, "vocab.txt")
