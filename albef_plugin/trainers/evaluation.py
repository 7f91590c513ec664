"""Evaluation during and after training, the "best" metric, and early stopping.

Metrics are registered classes (``registry.get_metric_class(name)(config.evaluation)``)
with ``.evaluate(model, dataset, device, precision) -> {name: value}``. Results are
logged as ``<split>/<dataset>/<name>``.

The best checkpoint and early stopping follow ``training.early_stop.criteria`` (as in
MMF, it picks ``best.ckpt`` even when early stopping is disabled). The criteria is a logged
key; ``val/r_mean`` also matches ``val/<dataset>/r_mean`` (first dataset in
``config.datasets`` order) and, failing that, ``val/<dataset>/<stage>_r_mean`` of the
last stage reported (the retrieval metric reports ``itc_*`` then the re-ranked ``itm_*``).
When nothing matches, the first key ending in ``r_mean`` is used, else the first key,
with a warning.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Dict, Mapping, Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from albef_plugin.distributed import broadcast_object
from albef_plugin.registry import registry

logger = logging.getLogger(__name__)

__all__ = ["build_metrics", "evaluate_split", "BestMetricTracker"]


def build_metrics(evaluation_config: Any) -> Dict[str, Any]:
    """``{name: metric}`` for every name in ``evaluation.metrics``."""
    return {name: registry.get_metric_class(name)(evaluation_config)
            for name in (evaluation_config.metrics or [])}


def evaluate_split(model: nn.Module, split: str, datasets: Mapping[str, Dataset],
                   metrics: Mapping[str, Any], device: torch.device, precision: str) -> Dict[str, float]:
    """Run every metric on every dataset of ``split`` with ``model`` in eval mode.

    Every rank runs the metrics (they may shard and gather); rank 0's numbers are
    broadcast so that all ranks take the same best / early-stop decisions.

    Returns:
        ``{"<split>/<dataset>/<name>": value}``.
    """
    was_training = model.training
    model.eval()
    results: Dict[str, float] = {}
    try:
        with torch.no_grad():
            for dataset_name, dataset in datasets.items():
                for metric_name, metric in metrics.items():
                    values = metric.evaluate(model, dataset, device, precision)
                    if not isinstance(values, Mapping):
                        raise TypeError(f"metric {metric_name!r} returned {type(values).__name__}; "
                                        f"evaluate() must return a dict of name -> number")
                    for key, value in values.items():
                        results[f"{split}/{dataset_name}/{key}"] = float(value)
    finally:
        model.train(was_training)
    return broadcast_object(results)


class BestMetricTracker:
    """Remembers the best value of one logged key and decides early stopping.

    Args:
        criteria: the logged key to follow (``training.early_stop.criteria``).
        minimize: lower is better.
        patience: updates without improvement before stopping (when ``enabled``).
        enabled: ``training.early_stop.enabled``.
    """

    def __init__(self, criteria: str, minimize: bool = False, patience: int = 1000,
                 enabled: bool = False) -> None:
        self.criteria = criteria
        self.minimize = minimize
        self.patience = patience
        self.enabled = enabled
        self.key: Optional[str] = None
        self.value: Optional[float] = None
        self.update: Optional[int] = None

    def resolve_key(self, metrics: Mapping[str, float]) -> Optional[str]:
        """The key of ``metrics`` that ``criteria`` designates (see the module doc)."""
        if not metrics:
            return None
        if self.criteria in metrics:
            return self.criteria
        split, _, name = self.criteria.partition("/")
        # "<split>/<dataset>/<metric>" keys of the criteria's split, in the order reported
        in_split = [k for k in metrics if k.count("/") == 2 and k.split("/")[0] == split]
        exact = [k for k in in_split if k.split("/")[2] == name]  # val/r_mean -> val/<ds>/r_mean
        if exact:
            return exact[0]
        # val/r_mean -> val/<ds>/<stage>_r_mean (retrieval reports itc_r_mean, then itm_r_mean):
        # the last stage of the first dataset, i.e. the metric's final (re-ranked) numbers
        staged = [k for k in in_split if re.fullmatch(rf"[^_]+_{re.escape(name)}", k.split("/")[2])]
        if staged:
            first_dataset = staged[0].split("/")[1]
            choice = [k for k in staged if k.split("/")[1] == first_dataset][-1]
            logger.info("training.early_stop.criteria=%r read as %r (set the full key to choose "
                        "another)", self.criteria, choice)
            return choice
        fallback = next((k for k in metrics if k.endswith("r_mean")), next(iter(metrics)))
        logger.warning("training.early_stop.criteria=%r matches no evaluated key (%s); the best "
                       "checkpoint follows %r instead", self.criteria, ", ".join(metrics), fallback)
        return fallback

    def observe(self, metrics: Mapping[str, float], update: int) -> bool:
        """Take an evaluation's results; True when it is a new best."""
        if self.key is None or self.key not in metrics:
            self.key = self.resolve_key(metrics)
            if self.key is None:
                return False
            logger.info("best checkpoint selected by %s (%s is better)", self.key,
                        "lower" if self.minimize else "higher")
        value = metrics[self.key]
        if math.isnan(value):
            return False
        improved = self.value is None or (value < self.value if self.minimize else value > self.value)
        if improved:
            self.value, self.update = value, update
            logger.info("new best %s = %.4f at update %d", self.key, value, update)
        return improved

    def should_stop(self, update: int) -> bool:
        """Early stop: enabled and ``patience`` updates since the best evaluation."""
        if not self.enabled or self.update is None:
            return False
        return update - self.update >= self.patience

    def state_dict(self) -> Dict[str, Any]:
        return {"key": self.key, "value": self.value, "update": self.update}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.key, self.value, self.update = state.get("key"), state.get("value"), state.get("update")
