"""The synthetic VQA task (VQA v2 format: 10 annotator answers per question)::

    root/vqa/                             image root: root/vqa
      images/{train,val,test}/000000.jpg  one scene per image, 4 questions of different kinds each
      {train,val,test}.json  [{"question_id": int (unique over all splits), "question": str,
                               "answer": [10 annotator answers], "image": "images/train/000000.jpg",
                               "dataset": "vqa"}, ...]
                             6-10 annotators give the correct answer (always the strict
                             plurality), the others a wrong answer of the same kind
      answer_list.json       every candidate answer, sorted: colours, shapes, relations,
                             "none"/"one"/"two" and every "<colour> <shape>"

VQA questions (kinds "color", "shape", "relation", "object", "count"; one correct answer each)::

    what colour do we see on the circle                    -> red      (the shape is unique in the scene)
    what shape do we see in red                            -> circle   (the colour is unique in the scene)
    where do we see the red circle relative to the blue square -> left / right / above / below
    what do we see left of the blue square                 -> red circle
    how often do we see a circle / how often do we see red -> none / one / two

The manifest also holds ``answer_counts[split]`` (correct answers) and ``majority_baseline``
(the most common correct train answer and its val/test accuracy under :func:`vqa_accuracy`).
"""
from __future__ import annotations

import random
from collections import Counter

from albef.data.synthetic.scenes import _INVERSE, RELATIONS, _all_canonical_scenes, _phrase
from albef.data.synthetic.tasks.common import SPLITS, Scene, _balanced, _objects, _words
from albef.metrics.vqa_accuracy import vqa_accuracy

# VQA questions, one template per kind (each has exactly one correct answer of its kind).
# {shape}/{color}: a palette word; {a}/{b}: "red circle"; {rel}: "left of", "above", ...;
# {A}: "a circle".  Their words are checked with the pretraining tokenizer but are not part
# of task_words() (the pretraining vocabulary stays as it is): most fall into word pieces.
VQA_KINDS = ("color", "shape", "relation", "object", "count")
VQA_COUNTS = ("none", "one", "two")  # answers of "count" questions: 0, 1, 2 objects
_VQA_TEMPLATES = {
    "color": "what colour do we see on the {shape}",  # only when the shape is unique in the scene
    "shape": "what shape do we see in {color}",  # only when the colour is unique in the scene
    "relation": "where do we see the {a} relative to the {b}",  # -> left / right / above / below
    "object": "what do we see {rel} the {b}",  # -> "red circle"
    "count_shape": "how often do we see {A}",  # -> none / one / two
    "count_color": "how often do we see {color}",
}
_VQA_QUESTIONS_PER_IMAGE = 4  # of 4 different kinds
_VQA_NUM_ANSWERS = 10  # annotators per question, as in VQA v2
_VQA_CORRECT_ANNOTATORS = (10, 9, 8, 7, 6)  # drawn uniformly; the rest give a wrong answer
_VQA_COUNT_ABSENT = 0.4  # share of count questions about an attribute not in the picture


def _vqa_questions(sc: Scene) -> dict[str, list[tuple[str, str, str | None]]]:
    """kind -> ``[(question, correct answer, plausible wrong answer or None)]`` of the kinds
    that do not need a random choice (all but "count"); each question has one correct answer."""
    objs = _objects(sc)
    out: dict[str, list] = {k: [] for k in VQA_KINDS if k != "count"}
    for o, other in ((objs[0], objs[1]), (objs[1], objs[0])):
        if o[1] != other[1]:  # the shape names one object
            out["color"].append((_VQA_TEMPLATES["color"].format(shape=o[1]), o[0], other[0] if other[0] != o[0] else None))
        if o[0] != other[0]:  # the colour names one object
            out["shape"].append((_VQA_TEMPLATES["shape"].format(color=o[0]), o[1], other[1] if other[1] != o[1] else None))
    c1, s1, r, c2, s2 = sc
    for st in ((c1, s1, r, c2, s2), (c2, s2, _INVERSE[r], c1, s1)):  # either object's point of view
        a, b = (st[0], st[1]), (st[3], st[4])
        out["relation"].append((_VQA_TEMPLATES["relation"].format(a=_words(a), b=_words(b)), st[2], _INVERSE[st[2]]))
        out["object"].append((_VQA_TEMPLATES["object"].format(rel=_phrase(st[2]), b=_words(b)), _words(a), _words(b)))
    return out


def _vqa_count_question(sc: Scene, colors, shapes_, rng: random.Random) -> tuple[str, str, None]:
    """"how often do we see a circle / red" about a palette shape or colour seen 0, 1 or 2
    times: absent in about _VQA_COUNT_ABSENT of the questions, otherwise one in the picture
    (the one both objects share, when there is one, half of the time)."""
    objs = _objects(sc)
    n_of = {("shape", s): sum(o[1] == s for o in objs) for s in shapes_}
    n_of.update({("color", c): sum(o[0] == c for o in objs) for c in colors})
    absent = [k for k, n in n_of.items() if n == 0]
    present = [k for k, n in n_of.items() if n > 0]
    twice = [k for k in present if n_of[k] == 2]
    if absent and rng.random() < _VQA_COUNT_ABSENT:
        key = rng.choice(absent)
    elif twice and rng.random() < 0.5:
        key = twice[0]
    else:
        key = rng.choice(present)
    what, word = key
    if what == "shape":
        question = _VQA_TEMPLATES["count_shape"].format(A=f"{'an' if word[0] in 'aeiou' else 'a'} {word}")
    else:
        question = _VQA_TEMPLATES["count_color"].format(color=word)
    return question, VQA_COUNTS[n_of[key]], None


def _vqa_annotators(correct: str, plausible: str | None, pool: list[str], rng: random.Random) -> list[str]:
    """_VQA_NUM_ANSWERS annotator answers: ``k`` of _VQA_CORRECT_ANNOTATORS give the correct
    one, each other one a wrong answer of the same kind (``plausible`` half of the time, when
    given); k >= 6 of 10, so the correct answer is always the strict plurality."""
    k = rng.choice(_VQA_CORRECT_ANNOTATORS)
    others = [a for a in pool if a != correct]
    wrong = [plausible if plausible is not None and rng.random() < 0.5 else rng.choice(others)
             for _ in range(_VQA_NUM_ANSWERS - k)]
    answers = [correct] * k + wrong
    rng.shuffle(answers)
    return answers


def _vqa_answer_pools(colors, shapes_) -> dict[str, list[str]]:
    """kind -> every answer a question of that kind can have."""
    return {
        "color": list(colors),
        "shape": list(shapes_),
        "relation": list(RELATIONS),
        "object": [_words((c, s)) for c in colors for s in shapes_],
        "count": list(VQA_COUNTS),
    }


def _build_vqa(p: dict, tag: str, colors, shapes_):
    """One scene per image (balanced passes), _VQA_QUESTIONS_PER_IMAGE questions of different
    kinds per image, each with _VQA_NUM_ANSWERS annotator answers."""
    pool = _all_canonical_scenes(colors, shapes_)
    answer_pools = _vqa_answer_pools(colors, shapes_)
    ann, scenes, kinds, correct, renders = {}, {}, {}, {}, []
    question_id = 0
    for split in SPLITS:
        split_scenes = _balanced(pool, p[f"num_{split}"], random.Random(f"{tag}/{split}-scenes"))
        rng = random.Random(f"{tag}/{split}-questions")
        answer_rng = random.Random(f"{tag}/{split}-answers")
        ann[split], scenes[split], kinds[split], correct[split] = [], [], [], []
        for i, sc in enumerate(split_scenes):
            rel = f"images/{split}/{i:06d}.jpg"
            renders.append((rel, sc, f"{tag}/render/{split}/{i}"))
            fixed = _vqa_questions(sc)
            available = [k for k in VQA_KINDS if k == "count" or fixed[k]]  # >= 4: colour or shape differs
            for kind in rng.sample(available, _VQA_QUESTIONS_PER_IMAGE):
                if kind == "count":
                    question, answer, plausible = _vqa_count_question(sc, colors, shapes_, rng)
                else:
                    question, answer, plausible = rng.choice(fixed[kind])
                answers = _vqa_annotators(answer, plausible, answer_pools[kind], answer_rng)
                ann[split].append({"question_id": question_id, "question": question, "answer": answers,
                                   "image": rel, "dataset": "vqa"})
                scenes[split].append(list(sc))
                kinds[split].append(kind)
                correct[split].append(answer)
                question_id += 1
    answer_list = sorted({a for answers in answer_pools.values() for a in answers})
    train_counts = Counter(correct["train"])
    majority = min(train_counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    baseline = {"answer": majority}
    for split in ("val", "test"):
        accs = [vqa_accuracy(majority, e["answer"]) for e in ann[split]]
        baseline[f"{split}_acc"] = round(sum(accs) / len(accs), 6)
    extra = {
        "kinds": kinds,
        # how often each correct answer occurs
        "answer_counts": {split: dict(sorted(Counter(correct[split]).items())) for split in SPLITS},
        # always answering the most common correct answer of train (official VQA accuracy)
        "majority_baseline": baseline,
        "files": {"answer_list.json": answer_list},
    }
    return ann, scenes, extra, renders
