"""Minimal caption edits: a true caption -> a false one that differs in one compositional choice.

An edit kind is one rule; a rule maps a caption to an edited caption, or to ``None`` when
it does not apply (no word or phrase it knows is there, or the edit changes nothing).
Three rule types cover the usual probes (Winoground, ARO, CREPE) and are what a rules
file can say:

=================  ===========================================  ==============================
rule               YAML (one kind)                              example
=================  ===========================================  ==============================
:class:`SwapWords`     ``{swap: {left: right, above: below}}``      relation flip:
                       (symmetric unless ``symmetric: false``)      "left of" -> "right of"
:class:`PhrasePattern` ``{pattern: REGEX, replace: TEMPLATE}``      object exchange:
                       (``re.sub`` template, first match only)      "A left of B" -> "B left of A"
:class:`ReplaceFromSet` ``{word_sets: [[red, green, blue]]}``       attribute change:
                       (``which: first|random``, ``a_an: true``)    "a red circle" -> "a blue circle"
=================  ===========================================  ==============================

A rules file is a YAML mapping ``{kinds: {<kind name>: <rule>, ...}}`` (or the kinds
mapping itself), optionally with ``paraphrases: [[kind, kind, ...], ...]``: chains of
kinds whose combined edit gives another *true* caption (flipping the relation and
exchanging the objects: "A left of B" -> "B right of A"). The probe asks each question of
the caption and of its paraphrases, so a model that merely prefers one relation word
("left" to "right") scores 50%, not 0% or 100%; :func:`load_edit_rules` reads it, :func:`shapes_world_rules` is the
built-in set for the synthetic shapes world's grammar. Captions are compared word by word
after :func:`albef.data.text.pre_caption` (lower case, no punctuation), so rules are
written in lower case.
"""
from __future__ import annotations

import os
import random
import re
from typing import Any, Mapping, Sequence

import yaml

__all__ = [
    "EditRule",
    "SwapWords",
    "PhrasePattern",
    "ReplaceFromSet",
    "CaptionEdits",
    "EditRulesError",
    "load_edit_rules",
    "shapes_world_rules",
    "PROBE_KINDS",
]

#: The probe's kinds, in the order its table prints them.
PROBE_KINDS = ("relation_flip", "object_exchange", "attribute_change", "binding")


class EditRulesError(ValueError):
    """A rules file or mapping that cannot be turned into edit rules (names the file and kind)."""


class EditRule:
    """``rule(caption, rng) -> str | None``: the edited caption, or None when the rule does not apply."""

    def __call__(self, caption: str, rng: random.Random | None = None) -> str | None:
        raise NotImplementedError


def _phrase_regex(phrases: Sequence[str]) -> re.Pattern:
    """Whole-word alternation of ``phrases``, longest first (so "to the left of" wins over "left")."""
    alts = sorted(set(phrases), key=lambda p: (-len(p), p))
    return re.compile(r"(?<!\S)(?:" + "|".join(re.escape(p) for p in alts) + r")(?!\S)")


class SwapWords(EditRule):
    """Replace every listed word or phrase by its partner, all at once (``left`` <-> ``right``).

    Args:
        swap: ``{word or phrase: replacement}``.
        symmetric: also replace each replacement by its word (the map's inverse), unless
            the map already says what it becomes.
    """

    def __init__(self, swap: Mapping[str, str], symmetric: bool = True):
        table = {str(k): str(v) for k, v in dict(swap).items()}
        if not table:
            raise EditRulesError("swap: the map is empty")
        if symmetric:
            for k, v in list(table.items()):
                table.setdefault(v, k)
        self.table = table
        self._re = _phrase_regex(list(table))

    def __call__(self, caption: str, rng: random.Random | None = None) -> str | None:
        out = self._re.sub(lambda m: self.table[m.group(0)], caption)
        return out if out != caption else None


class PhrasePattern(EditRule):
    """``re.sub(pattern, replace, caption, count=1)``: e.g. exchange two noun phrases, or two
    objects' colours (attribute binding: "a red circle left of a blue square" -> "a blue
    circle left of a red square").

    Applies when the pattern matches and the result differs from the caption. ``a_an``: fix
    every article of the result ("a orange" -> "an orange") after the substitution.
    """

    def __init__(self, pattern: str, replace: str, a_an: bool = False):
        self.a_an = bool(a_an)
        try:
            self._re = re.compile(pattern)
        except re.error as e:
            raise EditRulesError(f"pattern {pattern!r} is not a regular expression: {e}") from e
        self.pattern, self.replace = pattern, str(replace)
        try:  # a template naming a group the pattern lacks fails here, not mid-training
            self._check_template()
        except (re.error, IndexError) as e:
            raise EditRulesError(f"replace {replace!r} does not fit pattern {pattern!r}: {e}") from e

    def _check_template(self) -> None:
        groups = self._re.groups
        names = set(self._re.groupindex)
        for ref in re.findall(r"\\g<([^>]+)>|\\(\d+)", self.replace):
            name, num = ref
            if name and not (name in names or (name.isdigit() and int(name) <= groups)):
                raise IndexError(f"no group {name!r}")
            if num and int(num) > groups:
                raise IndexError(f"no group {num}")

    def __call__(self, caption: str, rng: random.Random | None = None) -> str | None:
        out, n = self._re.subn(self.replace, caption, count=1)
        words = out.split()
        if self.a_an:
            for i in range(len(words) - 1):
                if words[i] in ("a", "an"):
                    words[i] = "an" if words[i + 1][0] in "aeiou" else "a"
        out = " ".join(words)
        return out if n and out != " ".join(caption.split()) else None


class ReplaceFromSet(EditRule):
    """Replace one word that belongs to a set by another member of the same set
    (an attribute change: ``red`` -> ``blue``).

    Args:
        word_sets: lists of interchangeable words (each with >= 2 members).
        which: ``first``: the caption's first word found in any set (the first object's
            attribute); ``random``: one of them at random.
        a_an: fix the article before the replaced word ("a red" -> "an orange").
    """

    def __init__(self, word_sets: Sequence[Sequence[str]], which: str = "first", a_an: bool = True):
        self.word_sets = [list(dict.fromkeys(str(w) for w in s)) for s in word_sets]
        if not self.word_sets or any(len(s) < 2 for s in self.word_sets):
            raise EditRulesError(f"word_sets: give lists of at least 2 words each, got {word_sets!r}")
        if which not in ("first", "random"):
            raise EditRulesError(f"which: 'first' or 'random', got {which!r}")
        self.which, self.a_an = which, bool(a_an)
        self._set_of = {w: i for i, s in enumerate(self.word_sets) for w in s}

    def __call__(self, caption: str, rng: random.Random | None = None) -> str | None:
        rng = rng or random.Random(caption)
        words = caption.split(" ")
        spots = [i for i, w in enumerate(words) if w in self._set_of]
        if not spots:
            return None
        i = spots[0] if self.which == "first" else rng.choice(spots)
        others = [w for w in self.word_sets[self._set_of[words[i]]] if w != words[i]]
        words[i] = rng.choice(others)
        if self.a_an and i > 0 and words[i - 1] in ("a", "an"):
            words[i - 1] = "an" if words[i][0] in "aeiou" else "a"
        return " ".join(words)


_RULE_TYPES = {"swap": SwapWords, "pattern": PhrasePattern, "word_sets": ReplaceFromSet}


def _build_rule(kind: str, node: Any, source: str) -> EditRule:
    if not isinstance(node, Mapping):
        raise EditRulesError(f"{source}: kind '{kind}' must be a mapping with one of the keys {sorted(_RULE_TYPES)}, got {node!r}")
    types = [k for k in _RULE_TYPES if k in node]
    if len(types) != 1:
        raise EditRulesError(f"{source}: kind '{kind}' needs exactly one of the keys {sorted(_RULE_TYPES)}, got keys {sorted(node)}")
    cls = _RULE_TYPES[types[0]]
    try:
        return cls(**dict(node))
    except TypeError as e:
        raise EditRulesError(f"{source}: kind '{kind}' ({cls.__name__}): {e}") from e
    except EditRulesError as e:
        raise EditRulesError(f"{source}: kind '{kind}': {e}") from e


class CaptionEdits:
    """Named edit kinds, each one rule. ``edit(caption, kind, rng)`` -> edited caption or None;
    ``edits(caption, rng)`` -> ``{kind: edited or None}`` for every kind;
    ``paraphrases_of(caption)`` -> the true captions the ``paraphrases`` chains make of it."""

    def __init__(self, rules: Mapping[str, EditRule], source: str = "<rules>", paraphrases: Sequence[Sequence[str]] = ()):
        if not rules:
            raise EditRulesError(f"{source}: no edit kinds")
        self.rules = dict(rules)
        self.source = source
        self.paraphrases = [list(c) for c in paraphrases]
        for chain in self.paraphrases:
            bad = [k for k in chain if k not in self.rules]
            if not chain or bad:
                raise EditRulesError(f"{source}: paraphrase chain {chain} names no kind or unknown kind(s) {bad}; kinds: {', '.join(self.rules)}")

    def paraphrases_of(self, caption: str) -> list[str]:
        """Captions as true as ``caption``: each chain's kinds applied in turn (a chain one of
        whose kinds does not apply gives none)."""
        out = []
        for chain in self.paraphrases:
            c: str | None = caption
            for k in chain:
                c = self.rules[k](c, random.Random(c)) if c is not None else None
            if c is not None and c != caption and c not in out:
                out.append(c)
        return out

    @property
    def kinds(self) -> list[str]:
        return list(self.rules)

    def edit(self, caption: str, kind: str, rng: random.Random | None = None) -> str | None:
        if kind not in self.rules:
            raise EditRulesError(f"{self.source}: no edit kind '{kind}'; kinds: {', '.join(self.rules)}")
        return self.rules[kind](caption, rng)

    def edits(self, caption: str, rng: random.Random | None = None) -> dict[str, str | None]:
        return {k: r(caption, rng) for k, r in self.rules.items()}

    def subset(self, kinds: Sequence[str]) -> "CaptionEdits":
        missing = [k for k in kinds if k not in self.rules]
        if missing:
            raise EditRulesError(f"{self.source}: no edit kind(s) {missing}; kinds: {', '.join(self.rules)}")
        return CaptionEdits(dict(self.rules), self.source, self.paraphrases) if list(kinds) == self.kinds else \
            CaptionEdits({k: self.rules[k] for k in kinds}, self.source, [c for c in self.paraphrases if all(k in kinds for k in c)])


def shapes_world_rules(colors: Sequence[str] | None = None, shapes: Sequence[str] | None = None) -> CaptionEdits:
    """The built-in rules for the synthetic shapes world's grammar
    (``"<np> [to the] left of|right of|above|below <np>"``, ``<np> = "a|an <colour> <shape>"``).

    relation_flip: left <-> right, above <-> below. object_exchange: the two noun phrases
    change places. attribute_change: the first object's colour becomes another of ``colors``
    (default: every colour of :data:`albef.data.synthetic.scenes.COLORS`; give the world's
    own, e.g. from its manifest, so no unseen colour word is used): mostly a colour that is
    not in the picture, so it measures attribute *presence*. binding: the two objects'
    colours exchanged, so both colours are in the picture and only their *binding* to the
    shapes is wrong (none when the colours are equal).
    """
    from albef.data.synthetic.scenes import COLORS, SHAPES

    colors = list(colors or COLORS)
    shapes = list(shapes or SHAPES)
    colour, shape = "|".join(map(re.escape, colors)), "|".join(map(re.escape, shapes))
    np_ = r"an? (?:%s) (?:%s)" % (colour, shape)
    rel = r"(?:to the )?(?:left of|right of)|above|below"
    return CaptionEdits({
        "relation_flip": SwapWords({"left": "right", "above": "below"}),
        "object_exchange": PhrasePattern(rf"^({np_}) ({rel}) ({np_})$", r"\3 \2 \1"),
        "attribute_change": ReplaceFromSet([colors], which="first"),
        # (?!\2$): not when the shapes are equal (exchanging the colours would be the object exchange)
        "binding": PhrasePattern(rf"^an? ({colour}) ({shape}) ({rel}) an? ({colour}) (?!\2$)({shape})$", r"a \4 \2 \3 a \1 \5", a_an=True),
    }, source="shapes_world", paraphrases=[["relation_flip", "object_exchange"]])  # "A left of B" == "B right of A"


def load_edit_rules(rules: str | Mapping[str, Any] | None, manifest: Mapping[str, Any] | None = None) -> CaptionEdits:
    """Edit rules from a YAML file path, a mapping, or ``"shapes_world"`` / None (the built-in
    shapes-world rules, with the colours and shapes of ``manifest`` when given)."""
    if rules is None or rules == "shapes_world":
        m = manifest or {}
        return shapes_world_rules(list(m.get("colors") or []) or None, list(m.get("shapes") or []) or None)
    if isinstance(rules, str):
        source = rules
        if not os.path.isfile(rules):
            raise EditRulesError(f"edit rules file {rules} does not exist (or give 'shapes_world' for the built-in rules)")
        with open(rules, encoding="utf-8") as f:
            try:
                node = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise EditRulesError(f"{rules}: not valid YAML: {e}") from e
    elif isinstance(rules, Mapping):
        source, node = "<edit rules mapping>", rules
    else:
        raise EditRulesError(f"edit rules: a YAML file path, a mapping or 'shapes_world', got {type(rules).__name__}")
    paraphrases: Any = ()
    if isinstance(node, Mapping) and "kinds" in node:
        extra = sorted(set(node) - {"kinds", "paraphrases"})
        if extra:
            raise EditRulesError(f"{source}: unknown top-level key(s) {extra}; expected kinds and optionally paraphrases")
        paraphrases = node.get("paraphrases") or ()
        node = node["kinds"]
    if not isinstance(node, Mapping) or not node:
        raise EditRulesError(f"{source}: expected a mapping {{kinds: {{<kind>: <rule>, ...}}}} with at least one kind")
    if not isinstance(paraphrases, (list, tuple)) or not all(isinstance(c, (list, tuple)) for c in paraphrases):
        raise EditRulesError(f"{source}: paraphrases must be a list of kind lists, e.g. [[relation_flip, object_exchange]], got {paraphrases!r}")
    return CaptionEdits({str(k): _build_rule(str(k), v, source) for k, v in node.items()}, source=source, paraphrases=paraphrases)
