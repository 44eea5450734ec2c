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


def pre_question(question: str, max_words: int = 50) -> str:
    """The official ``pre_question``: as :func:`pre_caption` without the ``<person>`` rule;
    the official VQA keeps up to 50 words of a question."""
    question = _PUNCT.sub("", question.lower()).replace("-", " ").replace("/", " ")
    question = question.rstrip(" ")
    words = question.split(" ")
    if len(words) > max_words:
        question = " ".join(words[:max_words])
    return question
