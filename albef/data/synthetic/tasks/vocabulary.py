"""The words of the task texts and their check against the pretraining vocabulary.

Vocabulary: the pretraining vocabulary holds the special tokens, the characters of the
pretraining captions (``##`` continuations only of characters that occur inside a word)
and every pretraining caption word.  With the default world (5 colours, 3 shapes) ``s`` and
``y`` occur only word-initially, so e.g. "is", "has", "pictures" and "heavy" become
``[UNK]``; the templates avoid them (e.g. "we see ...", "... can be seen", "in each
picture").  Every template word is checked with the pretraining tokenizer before anything
is written, and a ValueError names the words that cannot be tokenised.  The pretraining
vocabulary holds every retrieval/ve/nlvr word as one token (:func:`task_words`, used by
``albef.data.synthetic.shapes._build_vocab``); the vqa and grounding words are not added (the pretraining data
stays byte-identical), so several of them ("what", "colour", "where", "relative", "how",
"often", "none", "two", ...) are split into word pieces; ``manifest["max_text_tokens"]`` is
the longest text in word pieces (without [CLS]/[SEP]; vqa: questions and answers).
"""
from __future__ import annotations

from albef.data.synthetic.scenes import COLORS, RELATIONS, SHAPES, _phrase

# the task modules, not their names: the templates are read at each call (a test may patch one)
from albef.data.synthetic.tasks import grounding, nlvr, retrieval, ve, vqa
from albef.data.synthetic.tasks.common import _REL_PHRASES


def task_words() -> set[str]:
    """Every word the task texts can contain: the templates' fixed words, the palette and the
    unrendered properties (the pretraining vocabulary holds each as one token)."""
    return _template_words() | set(COLORS) | set(SHAPES)


def _template_words() -> set[str]:
    """Every fixed word the templates can produce (placeholders excluded)."""
    templates = [t for axis in retrieval._RETRIEVAL_TEMPLATES.values() for _, t in axis]
    templates += [*ve._VE_OBJECT, *ve._VE_RELATION, *ve._VE_MATERIAL, *ve._VE_FEEL]
    templates += [*nlvr._NLVR_SIDE, *nlvr._NLVR_EACH, *nlvr._NLVR_ONE, *nlvr._NLVR_NEITHER, *nlvr._NLVR_SIDE_RELATION]
    words = {w for t in templates for w in t.split() if not w.startswith("{")}
    words |= {w for phrases in _REL_PHRASES.values() for p in phrases for w in p.split()}
    words |= {"a", "an", "the", "left", "right"} | set(ve.UNRENDERED_PROPERTIES)
    return words


def _extra_template_words(task: str) -> set[str]:
    """The fixed words of the vqa / grounding templates and answers (empty for the other
    tasks).  Not in :func:`task_words`: the pretraining vocabulary does not change for them,
    and the words must only tokenise without [UNK] (most become several word pieces)."""
    if task == "vqa":
        templates = list(vqa._VQA_TEMPLATES.values())
        words = set(vqa.VQA_COUNTS) | set(RELATIONS) | {"a", "an"}
    elif task == "grounding":
        templates = list(grounding._GROUNDING_TEMPLATES.values())
        words = set()
    else:
        return set()
    words |= {w for t in templates for w in t.split() if not w.startswith("{")}
    words |= {w for r in RELATIONS for w in _phrase(r).split()}
    return words


class _WordChecker:
    """Word-piece counts of words under the pretraining vocabulary; raises on ``[UNK]``."""

    def __init__(self, vocab_path: str):
        from albef.data.tokenization import build_tokenizer

        self.vocab_path = vocab_path
        self.tok = build_tokenizer(vocab_path)
        self.unk = self.tok.unk_token
        self.pieces: dict[str, int] = {}

    def check(self, words, what: str) -> None:
        bad = []
        for w in sorted(set(words) - set(self.pieces)):
            toks = self.tok.tokenize(w)
            if self.unk in toks or not toks:
                bad.append(w)
            else:
                self.pieces[w] = len(toks)
        if bad:
            raise ValueError(
                f"{what} {bad} cannot be tokenised without [UNK] by the pretraining vocabulary "
                f"{self.vocab_path} (a word may only use characters that occur in the pretraining "
                "captions, and inside a word only characters that occur inside a pretraining word)"
            )

    def max_tokens(self, texts) -> int:
        from albef.data.text import pre_caption

        longest = 0
        for text in texts:
            clean = pre_caption(text)
            if clean != text:  # cannot happen: texts are lower-case words without punctuation
                raise RuntimeError(f"text changes under pre_caption: {text!r} -> {clean!r}")
            words = clean.split(" ")
            self.check(words, "generated words")
            longest = max(longest, sum(self.pieces[w] for w in words))
        return longest
