"""Classification accuracy (registered metric ``accuracy``), e.g. for SNLI-VE and NLVR2.

Contract: in eval mode ``model(batch)`` returns ``{"logits": [B, C], ...}`` and every
batch (from the split's collate function) carries ``label`` ``[B]``. The prediction is
the arg-max class. Each rank evaluates its own share of the dataset (no sample twice)
and the correct / total counts are summed over ranks, so the number is the accuracy of
the whole split in any world size. Reported as ``accuracy``, in percent.

With ``save_predictions: true`` rank 0 writes ``<split>_<dataset>_predictions.json`` into
the run's ``save_dir``: ``[{"index", "prediction", "label"}]`` in dataset order, where
``index`` is ``batch["index"]`` when the collate provides it, else the sample's position
(which assumes the collate keeps every sample).

Samples the split's collate dropped (unreadable images, SNLI-VE / NLVR2 val and test) are
left out of the accuracy; a batch that lost every sample is skipped. Both are counted and
reported (``unreadable_samples``, ``skipped_batches``; see ``metrics/base.py``), and a split
with no readable sample at all is one error naming the split and the dataset.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Union

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from albef_plugin.distributed import all_reduce_sum, get_rank, get_world_size
from albef_plugin.metrics.base import (BaseMetric, EvalContext, as_context, autocast_for, to_device,
                                       unreadable_report)
from albef_plugin.registry import registry

__all__ = ["AccuracyMetric"]

logger = logging.getLogger(__name__)


def _gather_lists(rows: List[Any]) -> List[Any]:
    """Every rank's ``rows`` concatenated (rank order). Identity when alone."""
    if get_world_size() == 1:
        return rows
    gathered: List[List[Any]] = [[] for _ in range(get_world_size())]
    dist.all_gather_object(gathered, rows)
    return [row for part in gathered for row in part]


@registry.register_metric("accuracy")
class AccuracyMetric(BaseMetric):
    """Top-1 accuracy of ``model(batch)["logits"]`` against ``batch["label"]`` (see module doc)."""

    @dataclass
    class Config:
        save_predictions: bool = False  # write <split>_<dataset>_predictions.json into save_dir

    def evaluate(self, model: torch.nn.Module, dataset: Dataset,
                 context: Union[EvalContext, str, torch.device] = "cpu") -> Dict[str, float]:
        context = as_context(context)
        device = context.device
        rank, world_size = get_rank(), get_world_size()
        counts = torch.zeros(2, dtype=torch.long, device=device)  # correct, total
        batches = context.readable_batches(dataset, shard=True)
        rows: List[Dict[str, int]] = []
        seen = 0  # samples of this rank so far: its positions are rank + i * world_size
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), autocast_for(device, context.precision):
                for batch in batches:
                    batch = to_device(batch, device)
                    labels = batch.get("label") if isinstance(batch, dict) else None
                    if labels is None:
                        raise KeyError(f"accuracy on {context.split}/{context.dataset_name}: the batch "
                                       f"has no 'label'; the split's collate function must provide "
                                       f"label [B] for an accuracy evaluation.")
                    output = model(batch)
                    logits = output.get("logits") if isinstance(output, dict) else None
                    if logits is None or logits.dim() != 2:
                        raise TypeError(f"accuracy: {type(model).__name__}(batch) in eval mode must return "
                                        f"{{'logits': [B, C], ...}}; got "
                                        f"{sorted(output) if isinstance(output, dict) else type(output).__name__}.")
                    predictions = logits.argmax(dim=-1)
                    labels = labels.view(-1)
                    counts[0] += (predictions == labels).sum()
                    counts[1] += labels.numel()
                    if self.config.save_predictions:
                        index = batch.get("index")
                        index = (index.view(-1).tolist() if index is not None else
                                 [rank + (seen + j) * world_size for j in range(labels.numel())])
                        rows.extend({"index": int(i), "prediction": int(p), "label": int(y)}
                                    for i, p, y in zip(index, predictions.tolist(), labels.tolist()))
                    seen += labels.numel()
        finally:
            model.train(was_training)
        counts = torch.cat([counts, counts.new_tensor([batches.skipped_batches])])
        correct, total, skipped_batches = (int(v) for v in all_reduce_sum(counts).tolist())
        if len(dataset) == 0:
            raise ValueError(f"accuracy on {context.split}/{context.dataset_name}: no samples were "
                             f"evaluated (the dataset is empty).")
        unreadable = unreadable_report(context, len(dataset), total, skipped_batches)
        if self.config.save_predictions:
            rows = sorted(_gather_lists(rows), key=lambda row: row["index"])
            path = context.save_json(rows, kind="predictions")
            if path:
                logger.info("predictions of %s/%s written to %s", context.split, context.dataset_name, path)
        logger.info("accuracy on %s/%s: %d / %d correct", context.split, context.dataset_name,
                    correct, total)
        return {"accuracy": 100.0 * correct / total, **unreadable}
