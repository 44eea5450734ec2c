"""VQA v2 / Visual Genome QA in the official ALBEF format.

Training entries::

    {"question_id": 262148000, "question": "Where is he looking?", "image": "train2014/COCO_....jpg",
     "answer": ["down", "down", "at table", ...], "dataset": "vqa"}
    {"question": "What color is the sky?", "answer": "blue", "image": "image/1.jpg", "dataset": "vg"}

Test entries have ``question_id``, ``question``, ``image`` (``answer`` optional: with
answers the evaluator reports VQA accuracy, without it only writes the result file).
``answer_list.json`` is a JSON list of candidate answer strings.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from albef.data.datasets.annotated import AnnotatedImageTextDataset
from albef.data.files import DataError, read_json_list, resolve_image_path
from albef.data.text import pre_question
from albef.registry import DATASET_REGISTRY


def read_answer_list(path: str) -> list[str]:
    """``answer_list.json``: a non-empty JSON list of strings (errors name the file and index)."""
    data = read_json_list(path, "answer list")
    if not data:
        raise DataError(f"{path}: expected a non-empty JSON list of answer strings")
    for i, a in enumerate(data):
        if not isinstance(a, str) or not a.strip():
            raise DataError(f"{path}: entry {i}: answers must be non-empty strings, got {a!r}")
    return data


@DATASET_REGISTRY.register()
class VQAJSON(AnnotatedImageTextDataset):
    """Questions about images with their annotators' answers.

    Answer weights, as the official ``vqa_dataset``: a VQA question's unique answers weigh
    ``count / number of annotators``; a VG question's single answer weighs
    ``vg_answer_weight`` (official 0.5). Questions go through the official
    ``pre_question``. A sample (training) is ``{"image", "question", "answers": [str],
    "answer_weights": [float], "question_id", "index"}``; in evaluation ``answers`` holds
    every annotator's answer (for the accuracy) and ``answer_weights`` is empty.

    Args:
        ann_files: JSON list(s) in the format above.
        image_root: root of ``dataset: vqa`` images (official ``vqa_root``).
        vg_root: root of ``dataset: vg`` images (official ``vg_root``; default image_root).
        answer_list: ``answer_list.json`` of candidates for ranking (evaluation).
        vg_answer_weight: weight of a VG answer.
        max_question_words: official 50 (test questions are never cut shorter).
    """

    text_field = "question"

    def __init__(
        self,
        ann_files: str | Sequence[str] = (),
        image_root: str = "",
        vg_root: str | None = None,
        answer_list: str | None = None,
        vg_answer_weight: float = 0.5,
        max_question_words: int = 50,
        is_train: bool = True,
        transforms: dict[str, Any] | None = None,
        max_words: int = 30,
        strict: bool = False,
        seed: int = 0,
    ):
        self.vg_root = image_root if vg_root is None else vg_root
        self.vg_answer_weight = float(vg_answer_weight)
        self.max_question_words = int(max_question_words)
        self.answer_list_file = answer_list
        self.answer_list = read_answer_list(answer_list) if answer_list else None
        self._next_qid = -1
        super().__init__(ann_files, image_root, is_train=is_train, transforms=transforms, max_words=max_words, strict=strict, seed=seed)
        if not is_train and self.answer_list is None:
            raise DataError(f"{type(self).__name__} ({', '.join(self.ann_files)}): evaluation needs answer_list (answer_list.json)")
        if not is_train:
            seen: dict[int, str] = {}
            for rec in self.records:
                if rec["question_id"] in seen:
                    raise DataError(f"{rec['where']}: question_id {rec['question_id']} repeats {seen[rec['question_id']]}: "
                                    "the result file needs one answer per question")
                seen[rec["question_id"]] = rec["where"]

    def parse(self, ann: dict[str, Any], path: str, i: int) -> dict[str, Any]:
        image = self.require(ann, "image", str, path, i)
        question = pre_question(self.require(ann, "question", str, path, i), self.max_question_words)
        if not question:
            raise DataError(f"{path}: entry {i}: the question is empty after preprocessing: {ann['question']!r}")
        source = ann.get("dataset", "vqa")
        if source not in ("vqa", "vg"):
            raise DataError(f"{path}: entry {i}: 'dataset' must be 'vqa' or 'vg', got {source!r}")
        qid = ann.get("question_id")
        if qid is None:
            if not self.is_train:
                raise DataError(f"{path}: entry {i} has no 'question_id' (needed in the result file)")
            qid, self._next_qid = self._next_qid, self._next_qid - 1  # VG questions have none
        elif not isinstance(qid, int) or isinstance(qid, bool):
            raise DataError(f"{path}: entry {i}: 'question_id' must be an integer, got {qid!r}")
        answers = ann.get("answer")
        if answers is None and self.is_train:
            raise DataError(f"{path}: entry {i} has no 'answer' key (keys: {sorted(ann)}); training needs answers")
        if isinstance(answers, str):
            answers = [answers]
        if answers is not None and (not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers)):
            raise DataError(f"{path}: entry {i}: 'answer' must be a string or a non-empty list of strings, got {answers!r}")
        root = self.vg_root if source == "vg" else self.image_root
        rec = {"images": [resolve_image_path(image, root)], "text": question, "label": 0, "question_id": qid, "annotations": answers or []}
        if answers is not None:
            if source == "vg":
                rec["answers"], rec["weights"] = [answers[0]], [self.vg_answer_weight]
            else:
                counts = Counter(answers)
                rec["answers"] = list(counts)
                rec["weights"] = [c / len(answers) for c in counts.values()]
        return rec

    def _sample(self, i: int, images, text: str, skipped: list) -> dict[str, Any]:
        rec = self.records[i]
        out = {"image": images[0], self.text_field: text, "question_id": rec["question_id"], "index": i, "skipped": skipped}
        if self.is_train:
            out["answers"], out["answer_weights"] = rec["answers"], rec["weights"]
        else:
            out["answers"], out["answer_weights"] = rec["annotations"], []
        return out
