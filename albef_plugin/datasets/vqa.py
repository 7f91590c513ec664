"""VQA data in the official ALBEF JSON formats (``dataset/vqa_dataset.py``).

- train files (``vqa_train.json``, ``vqa_val.json``, ``vg_qa.json``):
  ``[{"question", "answer": [str, ...] (VQA: the 10 annotators) | str (VG), "image",
  "dataset": "vqa" | "vg"}]``;
- test files (``vqa_test.json``): ``[{"question_id", "question", "image", "dataset"}]``; an
  ``answer`` list, when present, is the ground truth for local scoring (a held-out val split);
- ``answer_list.json``: the candidate answers, a list of strings.

Training items carry every distinct answer of a question with its weight: count / number of
annotations for VQA (count / 10 for VQA v2), 0.5 for a Visual Genome answer. Questions are
cleaned by ``pre_question`` (30 words in training, 50 at test time, as the official scripts).
Every entry is checked when the file is loaded: an error names the file, the entry and the field
(a training question without answers included). Unreadable training images follow the
``on_unreadable`` policy (``images.py``); an unreadable test image is replaced by a blank image
and counted, so the results file still answers every question.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
from PIL import Image
from torch.utils.data import Dataset

from albef_plugin.datasets.annotations import (AnnotationError, bad_field, check_object,
                                               read_json_list, required_field, resolve_image_path)
from albef_plugin.datasets.images import ImageTextDataset, UnreadableImageError, read_rgb
from albef_plugin.processors.text import pre_question

__all__ = ["VQATrainDataset", "VQAEvalDataset", "VQATrainCollate", "VQAEvalCollate",
           "load_answer_list", "check_answer_list", "VG_ANSWER_WEIGHT", "VQA_SOURCES"]

logger = logging.getLogger(__name__)

Files = Sequence[Union[str, "os.PathLike[str]"]]
VG_ANSWER_WEIGHT = 0.5          # official weight of a Visual Genome answer
VQA_SOURCES = ("vqa", "vg")     # the "dataset" field: which image root the image is under


def load_answer_list(path: Union[str, Path]) -> List[str]:
    """``answer_list.json``: a non-empty list of distinct, non-empty strings."""
    path = Path(path)
    return check_answer_list(read_json_list(path, "Answer list", "candidate answers"), str(path))


def check_answer_list(answers: Sequence[Any], source: str) -> List[str]:
    """``answers`` as a list once checked to be non-empty, distinct, non-empty strings; an
    error names ``source`` (the file, or what the list is) and the entry."""
    if isinstance(answers, (str, bytes)) or not isinstance(answers, Sequence):
        raise AnnotationError(f"{source}: the answer list must be a list of strings, got a "
                              f"{type(answers).__name__}.")
    if not answers:
        raise AnnotationError(f"{source}: the answer list is empty; it must list the candidate answers.")
    seen: Set[str] = set()
    for index, answer in enumerate(answers):
        if not isinstance(answer, str) or not answer.strip():
            raise AnnotationError(f"{source}: entry {index} is {answer!r}; every candidate answer "
                                  f"must be a non-empty string.")
        if answer in seen:
            raise AnnotationError(f"{source}: entry {index} {answer!r} is listed twice; list each "
                                  f"candidate answer once.")
        seen.add(answer)
    return list(answers)


def _field(entry: Any, index: int, path: Path, name: str, description: str) -> Any:
    entry = check_object(entry, index, path, "question, image, dataset (and answer to train)")
    return required_field(entry, index, path, name, description)


def _source(entry: Dict[str, Any], index: int, path: Path) -> str:
    source = entry.get("dataset", "vqa")
    if source not in VQA_SOURCES:
        raise bad_field(path, index, "dataset", source, "'vqa' or 'vg' (which image root to use)")
    return source


def _question(entry: Any, index: int, path: Path) -> str:
    question = _field(entry, index, path, "question", "the question string")
    if not isinstance(question, str) or not question.strip():
        raise bad_field(path, index, "question", question, "a non-empty question string")
    image = _field(entry, index, path, "image", "an image path relative to the image root")
    if not isinstance(image, str) or not image:
        raise bad_field(path, index, "image", image, "an image path relative to the image root")
    return question


def weighted_answers(entry: Dict[str, Any], index: int, path: Path) -> Tuple[List[str], List[float]]:
    """The distinct answers of a training question and their official weights."""
    answer = _field(entry, index, path, "answer", "the answers: a list of strings (VQA) or a "
                                                  "string (VG)")
    source = _source(entry, index, path)
    if source == "vg" and isinstance(answer, str):
        answer = [answer]
    if not isinstance(answer, list) or not all(isinstance(a, str) and a for a in answer):
        raise bad_field(path, index, "answer", answer, "a list of answer strings (VQA) or one answer "
                                                  "string (VG)")
    if not answer:
        raise AnnotationError(f"{path}: training question {index} ({entry['question']!r}) has no "
                              f"answers; give it at least one answer or remove it from the file.")
    if source == "vg":
        return list(dict.fromkeys(answer)), [VG_ANSWER_WEIGHT] * len(dict.fromkeys(answer))
    counts = Counter(answer)
    return list(counts), [count / len(answer) for count in counts.values()]


class VQATrainDataset(ImageTextDataset):
    """One item per training question: ``{"image", "question", "answers", "weights",
    "num_skipped"}`` (answers distinct, weights as in the module docstring).

    Args:
        ann_files: train JSON files, concatenated (e.g. vqa_train, vqa_val, vg_qa).
        image_roots: ``{"vqa": folder, "vg": folder}``; relative image paths are joined to the
            root of their entry's ``dataset``.
        transform: PIL image -> ``(3, H, W)`` tensor (``albef_image_train``).
        max_words: ``pre_question`` word cap (official 30 in training).
        on_unreadable: ``substitute`` | ``drop`` | ``error`` for missing / corrupt images.
    """

    def __init__(self, ann_files: Files, image_roots: Dict[str, str], transform: Any,
                 max_words: int = 30, on_unreadable: str = "substitute") -> None:
        super().__init__(transform, on_unreadable)
        if not ann_files:
            raise AnnotationError("No VQA training files given; list at least one JSON file.")
        self.image_paths: List[str] = []
        self.questions: List[str] = []
        self.answers: List[List[str]] = []
        self.weights: List[List[float]] = []
        for file in ann_files:
            path = Path(file)
            for index, entry in enumerate(read_json_list(path, "VQA annotation file")):
                question = _question(entry, index, path)
                answers, weights = weighted_answers(entry, index, path)
                root = image_roots[_source(entry, index, path)]
                self.image_paths.append(resolve_image_path(entry["image"], root))
                self.questions.append(pre_question(question, max_words))
                self.answers.append(answers)
                self.weights.append(weights)

    def __len__(self) -> int:
        return len(self.image_paths)

    def _image_path(self, index: int) -> str:
        return self.image_paths[index]

    def _sample(self, index: int) -> Dict[str, Any]:
        return {"question": self.questions[index], "answers": self.answers[index],
                "weights": self.weights[index]}


class VQAEvalDataset(Dataset):
    """Test (or held-out val) questions: ``{"image", "question", "index", "unreadable"}``.

    Attributes:
        question_ids: the ``question_id`` of each entry (the results file's key).
        questions: pre-processed questions (``pre_question``, ``max_words`` words).
        answers: per question its annotators' answers, or None when the file has none.
        answer_list: the candidate answers (``answer_list.json``).
        answer_processor: tokenises candidates as ``[CLS] answer [SEP]``.
    """

    def __init__(self, ann_files: Files, image_roots: Dict[str, str], transform: Any,
                 answer_list: Sequence[str], answer_processor: Any, max_words: int = 50) -> None:
        self.transform = transform
        self.answer_list = list(answer_list)
        self.answer_processor = answer_processor
        self.image_paths: List[str] = []
        self.question_ids: List[Any] = []
        self.questions: List[str] = []
        self.answers: List[Optional[List[str]]] = []
        self._warned: Set[str] = set()
        seen: Dict[Any, str] = {}
        for file in ann_files:
            path = Path(file)
            for index, entry in enumerate(read_json_list(path, "VQA annotation file")):
                question = _question(entry, index, path)
                qid = _field(entry, index, path, "question_id", "the question's id (the results key)")
                if not isinstance(qid, (int, str)) or isinstance(qid, bool):
                    raise bad_field(path, index, "question_id", qid, "an integer or string id")
                if qid in seen:
                    raise AnnotationError(f"{path}: entry {index} repeats question_id {qid!r} (first "
                                          f"in {seen[qid]}); question ids must be unique.")
                seen[qid] = str(path)
                answer = entry.get("answer")
                if isinstance(answer, str):
                    answer = [answer]
                if answer is not None and (not isinstance(answer, list) or not answer
                                           or not all(isinstance(a, str) for a in answer)):
                    raise bad_field(path, index, "answer", answer, "a non-empty list of answer strings "
                                                              "(or no answer field)")
                root = image_roots[_source(entry, index, path)]
                self.image_paths.append(resolve_image_path(entry["image"], root))
                self.question_ids.append(qid)
                self.questions.append(pre_question(question, max_words))
                self.answers.append(answer)
        self._answer_tokens: Optional[Dict[str, torch.Tensor]] = None
        self._blank: Optional[torch.Tensor] = None

    @property
    def has_answers(self) -> bool:
        """Every question has ground-truth answers (VQA accuracy can be computed)."""
        return bool(self.answers) and all(a is not None for a in self.answers)

    def answer_tokens(self) -> Dict[str, torch.Tensor]:
        """The candidates tokenised once: ``input_ids`` / ``attention_mask`` ``[N, La]``."""
        if self._answer_tokens is None:
            self._answer_tokens = self.answer_processor(self.answer_list)
        return self._answer_tokens

    def __len__(self) -> int:
        return len(self.image_paths)

    def blank_image(self) -> torch.Tensor:
        """What an unreadable image is replaced by: zeros (the mean colour, once normalised) of
        the transform's output size, known without any readable image of the split."""
        if self._blank is None:
            self._blank = torch.zeros_like(self.transform(Image.new("RGB", (32, 32))))
        return self._blank

    def __getitem__(self, index: int) -> Dict[str, Any]:
        path, unreadable = self.image_paths[index], 0
        try:
            image = self.transform(read_rgb(path))
        except UnreadableImageError as exc:
            if path not in self._warned:
                self._warned.add(path)
                logger.warning("Unreadable test image (%s): question %r is answered from a blank "
                               "image and counted.", exc, self.question_ids[index])
            image, unreadable = self.blank_image(), 1
        return {"image": image, "question": self.questions[index], "index": index,
                "unreadable": unreadable}


class VQATrainCollate:
    """Training batch::

        image            float (B, 3, H, W)
        question_ids     long  (B, Lq)     question_mask  long (B, Lq)
        answer_ids       long  (A, La)     [CLS] answer [SEP], padded; answer_mask (A, La)
        answer_question  long  (A,)        the question (row of the batch) of each answer
        answer_weights   float (A,)
        num_skipped      int               unreadable images met while building the batch

    Dropped samples (``on_unreadable: drop``) are replaced by repeating kept ones, so every
    batch has its full size; None when every sample was dropped.
    """

    def __init__(self, question_processor: Any, answer_processor: Any) -> None:
        self.question_processor = question_processor
        self.answer_processor = answer_processor

    def __call__(self, samples: Sequence[Optional[Dict[str, Any]]]) -> Optional[Dict[str, Any]]:
        kept = [s for s in samples if s is not None]
        num_skipped = (len(samples) - len(kept)) + sum(int(s.get("num_skipped", 0)) for s in kept)
        if not kept:
            return None
        kept = [kept[i % len(kept)] for i in range(len(samples))]
        questions = self.question_processor([s["question"] for s in kept])
        answers = self.answer_processor([a for s in kept for a in s["answers"]])
        owner = [row for row, s in enumerate(kept) for _ in s["answers"]]
        return {
            "image": torch.stack([s["image"] for s in kept]),
            "question_ids": questions["input_ids"],
            "question_mask": questions["attention_mask"],
            "answer_ids": answers["input_ids"],
            "answer_mask": answers["attention_mask"],
            "answer_question": torch.tensor(owner, dtype=torch.long),
            "answer_weights": torch.tensor([w for s in kept for w in s["weights"]],
                                           dtype=torch.float),
            "num_skipped": num_skipped,
        }


class VQAEvalCollate:
    """Evaluation batch: ``image``, ``question_ids`` / ``question_mask``, ``index`` (rows of
    the dataset) and ``unreadable`` (blank images in the batch)."""

    def __init__(self, question_processor: Any) -> None:
        self.question_processor = question_processor

    def __call__(self, samples: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        questions = self.question_processor([s["question"] for s in samples])
        return {
            "image": torch.stack([s["image"] for s in samples]),  # unreadable ones already blank
            "question_ids": questions["input_ids"],
            "question_mask": questions["attention_mask"],
            "index": torch.tensor([int(s["index"]) for s in samples], dtype=torch.long),
            "unreadable": sum(int(s["unreadable"]) for s in samples),
        }
