"""VQA accuracy (official VQA evaluation), without any model or framework dependency: the
evaluator and the synthetic data generator (majority baseline) share it."""
from __future__ import annotations

import re
from typing import Sequence

# The official VQA evaluation's answer normalisation (vqaEval.py), in short: punctuation
# removed (a period inside a number kept), number words to digits, articles dropped,
# common contractions restored.
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "wont": "won't", "im": "i'm", "ive": "i've", "youre": "you're", "thats": "that's", "whats": "what's"}
_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$~|:]")
_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")


def normalize_answer(answer: str) -> str:
    """Lower-case, punctuation off, number words -> digits, articles dropped (official VQA eval)."""
    a = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    a = _PERIOD.sub("", _PUNCT.sub("", a))
    words = []
    for w in a.split():
        w = _NUMBERS.get(w, w)
        if w in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(w, w))
    return " ".join(words)


def vqa_accuracy(prediction: str, annotations: Sequence[str]) -> float:
    """VQA accuracy of one answer, in [0, 1]: ``min(#annotators who gave it / 3, 1)``
    averaged over the n leave-one-annotator-out subsets (the official 10-choose-9 average),
    after :func:`normalize_answer` of both sides. With c matching annotators out of n::

        acc = (c * min((c - 1) / 3, 1) + (n - c) * min(c / 3, 1)) / n
    """
    n = len(annotations)
    if n == 0:
        raise ValueError("vqa_accuracy needs at least one annotator answer")
    pred = normalize_answer(prediction)
    c = sum(normalize_answer(a) == pred for a in annotations)
    return (c * min((c - 1) / 3.0, 1.0) + (n - c) * min(c / 3.0, 1.0)) / n
