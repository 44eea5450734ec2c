"""Compositional hard negatives: a minimally edited, false caption for every training caption.

Contrastive similarity rarely puts "a red circle right of a blue square" next to "a red
circle left of a blue square" in the same batch, so the contrastive hard-negative miner
almost never gives ITM a relation-flipped pair and the fusion encoder is never asked to
read the relation. These negatives are made from each caption by the edits of
:mod:`albef.data.caption_edits` (relation flip, object exchange, ...) inside the
DataLoader workers; the collator tokenises them beside the captions, and ITM fuses each
with its own image as one more negative pair (ITC, optionally, contrasts each image with
its own edited caption).

Configured as ``data.text_negatives`` (null: off), e.g.
``data.text_negatives={name: CompositionalNegatives, kinds: [relation_flip, object_exchange]}``.
"""
from __future__ import annotations

import logging
import random
from typing import Any, Mapping, Sequence

from albef.data.caption_edits import CaptionEdits, EditRulesError, load_edit_rules
from albef.registry import TEXT_NEGATIVES_REGISTRY

__all__ = ["CompositionalNegatives", "NO_RULE", "SKIPPED", "IS_POSITIVE", "KIND_STATS"]

logger = logging.getLogger("albef.data")

#: ``text_neg_kind`` codes of captions without an edited negative (kinds are 0, 1, ...).
NO_RULE = -1  # no configured kind applies to the caption (counted, never an error)
SKIPPED = -2  # a rule applies but the caption was left out by ``rate``
IS_POSITIVE = -3  # every applicable edit gives a caption of the same image in the batch
#: logged per step as ``text_negatives_<name>`` (counts of the batch's captions)
KIND_STATS = {NO_RULE: "no_rule", SKIPPED: "skipped", IS_POSITIVE: "is_positive"}


@TEXT_NEGATIVES_REGISTRY.register()
class CompositionalNegatives:
    """``negatives(captions, image_ids) -> (edited [B] str, kind [B] int)``.

    For each caption, one of the configured ``kinds`` whose rule applies is drawn
    uniformly and the edited caption is its negative; ``kind`` is its index in ``kinds``,
    or :data:`NO_RULE` / :data:`SKIPPED` / :data:`IS_POSITIVE` (the edited slot then
    holds the caption itself as a placeholder: one tensor shape for every batch, and
    the objectives drop the pair). An edit that yields a caption of the same image
    (same ``image_id``) elsewhere in the batch is not used: it would be a positive.

    Args:
        rules: ``shapes_world`` (built-in, for the synthetic world's grammar), a YAML
            rules file or an inline mapping (see :mod:`albef.data.caption_edits`).
        kinds: the rules' kinds to use (null: all of them; the default names the
            built-in rules' relation kinds: a rules file of your own names its own).
        rate: probability that a caption gets its negative (the mix with the mined
            negatives: ITM trains on B positives, 2B mined negatives and ~rate * B of
            these; it fuses all B edited slots every step, one shape for every batch).
        seed: the draws depend on the seed and the batch's captions only (reproducible
            in any worker).
    """

    def __init__(self, rules: str | Mapping[str, Any] | None = "shapes_world", kinds: Sequence[str] | None = ("relation_flip", "object_exchange"),
                 rate: float = 1.0, seed: int = 0):
        if not 0.0 <= float(rate) <= 1.0:
            raise EditRulesError(f"data.text_negatives.rate must be in [0, 1], got {rate}")
        edits: CaptionEdits = load_edit_rules(rules)
        try:
            self.edits = edits.subset(list(kinds)) if kinds is not None else edits
        except EditRulesError as e:
            raise EditRulesError(f"data.text_negatives.kinds: {e} (set kinds: to your rules' kinds, or null for all)") from e
        self.kinds = self.edits.kinds
        self.rate, self.seed = float(rate), int(seed)
        self._calls = self._matched = 0

    def __call__(self, captions: Sequence[str], image_ids: Sequence[Any] | None = None) -> tuple[list[str], list[int]]:
        rng = random.Random(f"{self.seed}/" + "\n".join(captions))
        ids = list(image_ids) if image_ids is not None else list(range(len(captions)))
        positives: dict[Any, set[str]] = {}
        for c, i in zip(captions, ids):
            positives.setdefault(i, set()).add(c)
        out, kind = [], []
        for c, i in zip(captions, ids):
            options = []
            applicable = False
            for k, name in enumerate(self.kinds):
                e = self.edits.edit(c, name, rng)
                if e is None:
                    continue
                applicable = True
                if e not in positives[i]:
                    options.append((k, e))
            if not applicable:
                out.append(c), kind.append(NO_RULE)
            elif not options:
                out.append(c), kind.append(IS_POSITIVE)
            elif self.rate < 1.0 and rng.random() >= self.rate:
                out.append(c), kind.append(SKIPPED)
            else:
                k, e = rng.choice(options)
                out.append(e), kind.append(k)
        self._calls += 1
        self._matched += sum(k != NO_RULE for k in kind)
        if self._calls == 20 and self._matched == 0:  # once per worker: a silent no-op costs a quarter of ITM's fusion
            logger.warning("data.text_negatives (%s): none of the first 20 batches' captions matched a rule of %s; "
                           "ITM fuses placeholder pairs for nothing. Give rules that fit your captions, e.g. "
                           "'data.text_negatives.rules=my_rules.yaml' (see projects/composition/README.md)",
                           type(self).__name__, self.edits.source)
        return out, kind
