"""VQA evaluation (registered metric ``vqa``): answers ranked by the model, an EvalAI results
file, and the standard VQA accuracy where the split has answers.

Contract: the dataset is a :class:`~albef_plugin.datasets.vqa.VQAEvalDataset` (``question_ids``,
``answers``, ``answer_list``, ``answer_tokens()``) and its collate gives ``image``,
``question_ids``, ``question_mask``, ``index`` and ``unreadable``; the model has
``rank_answer(image, question_ids, question_mask, answer_ids, answer_mask, k)`` (``albef_vqa``).
Each question's answer is the top candidate after re-ranking the ``k_test`` candidates with the
best first-token probability (the official ``VQA.py`` evaluation).

Each rank answers its share of the questions; the rows are gathered, so every rank returns the
same numbers. Rank 0 writes ``<save_dir>/<split>_<dataset>_vqa_result.json``:
``[{"question_id": ..., "answer": "..."}]`` for every question, in file order (the format the
EvalAI server takes for test-dev and test-std; it needs every test question). Reported:
``accuracy`` (percent, ``metrics/vqa_accuracy.py``) when every question has ground-truth
answers, ``num_questions``, and ``unreadable_images`` when test images had to be blanked (any
batch, even one with no readable image); a split with no readable image at all is one error
naming the split and the dataset.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple, Union

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from albef_plugin.distributed import get_world_size, unwrap_model
from albef_plugin.metrics.base import (BaseMetric, EvalContext, as_context, autocast_for, require_readable,
                                       to_device)
from albef_plugin.metrics.vqa_accuracy import vqa_accuracy
from albef_plugin.registry import registry

__all__ = ["VQAMetric", "RESULTS_KIND"]

logger = logging.getLogger(__name__)

RESULTS_KIND = "vqa_result"


def _gather(rows: List[Any]) -> List[Any]:
    if get_world_size() == 1:
        return rows
    parts: List[List[Any]] = [[] for _ in range(get_world_size())]
    dist.all_gather_object(parts, rows)
    return [row for part in parts for row in part]


@registry.register_metric("vqa")
class VQAMetric(BaseMetric):
    """Answers by ``rank_answer``, the EvalAI results file and VQA accuracy (module doc)."""

    @dataclass
    class Config:
        k_test: int = 128          # candidates re-ranked per question (official 128)
        save_results: bool = True  # write the EvalAI results file into save_dir

    def check_config(self, config: Any) -> None:
        if config.k_test < 1:
            raise ValueError(f"k_test={config.k_test} must be at least 1")

    def predict(self, model: torch.nn.Module, dataset: Dataset,
                context: EvalContext) -> Tuple[List[int], int]:
        """The index into ``dataset.answer_list`` of every question's answer, and the number of
        unreadable images (both the same on all ranks)."""
        for name in ("answer_tokens", "question_ids", "answer_list"):
            if not hasattr(dataset, name):
                raise TypeError(f"vqa metric on {context.split}/{context.dataset_name}: the dataset "
                                f"({type(dataset).__name__}) has no {name!r}; use a VQA builder "
                                f"(albef_vqa_json, demo_vqa).")
        model = unwrap_model(model)
        if not hasattr(model, "rank_answer"):
            raise TypeError(f"vqa metric: {type(model).__name__} has no rank_answer(); use albef_vqa.")
        device = context.device
        tokens = to_device(dataset.answer_tokens(), device)
        indices, answers, unreadable = [], [], 0
        with torch.no_grad(), autocast_for(device, context.precision):
            for batch in context.loader(dataset, shard=True):
                unreadable += int(batch.get("unreadable", 0))
                batch = to_device(batch, device)
                top_ids, _ = model.rank_answer(batch["image"], batch["question_ids"],
                                               batch["question_mask"], tokens["input_ids"],
                                               tokens["attention_mask"], self.config.k_test)
                indices.append(batch["index"])
                answers.append(top_ids[:, 0])
        rows = []
        if indices:  # one transfer at the end, not one per batch
            rows = list(zip(torch.cat(indices).tolist(), torch.cat(answers).tolist()))
        rows = sorted(_gather(rows))
        unreadable = sum(_gather([unreadable]))
        if [index for index, _ in rows] != list(range(len(dataset))):
            raise RuntimeError(f"vqa metric: {len(rows)} answers for {len(dataset)} questions of "
                               f"{context.split}/{context.dataset_name}; every question must be "
                               f"answered once.")
        return [answer for _, answer in rows], unreadable

    def evaluate(self, model: torch.nn.Module, dataset: Dataset,
                 context: Union[EvalContext, str, torch.device] = "cpu") -> Dict[str, float]:
        context = as_context(context)
        if len(dataset) == 0:
            raise ValueError(f"vqa metric: {context.split}/{context.dataset_name} has no questions.")
        predictions, unreadable = self.predict(model, dataset, context)
        # blank images answer the unreadable questions; none readable at all is an error
        require_readable(context, len(dataset), len(dataset) - unreadable)
        answer_list = dataset.answer_list
        results = [{"question_id": qid, "answer": answer_list[p]}
                   for qid, p in zip(dataset.question_ids, predictions)]
        if self.config.save_results:
            path = context.save_json(results, kind=RESULTS_KIND)
            if path:
                logger.info("VQA results of %s/%s (%d questions, EvalAI format) written to %s",
                            context.split, context.dataset_name, len(results), path)
        values: Dict[str, float] = {"num_questions": float(len(results))}
        if unreadable:
            values["unreadable_images"] = float(unreadable)
            logger.warning("%d unreadable images of %s/%s were answered from a blank image",
                           unreadable, context.split, context.dataset_name)
        if getattr(dataset, "has_answers", False):
            scores = [vqa_accuracy(row["answer"], truth)
                      for row, truth in zip(results, dataset.answers)]
            values["accuracy"] = 100.0 * sum(scores) / len(scores)
        return values
