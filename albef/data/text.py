"""Caption preprocessing exactly as the official ``dataset/utils.py:pre_caption``."""
from __future__ import annotations

import re

_PUNCT = re.compile(r"([,.'!?\"()*#:;~])")
_SPACES = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int = 30) -> str:
    """lowercase; delete , . ' ! ? " ( ) * # : ; ~; '-' and '/' -> space; '<person>' -> 'person';
    collapse whitespace runs; strip; keep the first ``max_words`` words."""
    caption = _PUNCT.sub("", caption.lower()).replace("-", " ").replace("/", " ").replace("<person>", "person")
    caption = _SPACES.sub(" ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption
