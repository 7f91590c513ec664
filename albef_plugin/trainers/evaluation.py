"""Evaluation during and after training, the "best" metric, and early stopping.

Metrics are the registered classes listed in ``evaluation.metrics`` (names or
``{type, params}``; see :mod:`albef_plugin.metrics.base`), each built once from its
``params``. Every metric runs on every dataset of a split; results are logged as
``<split>/<dataset>/<name>``.

The best checkpoint and early stopping follow ``training.early_stop.criteria`` (as in
MMF, it picks ``best.ckpt`` even when early stopping is disabled), matched against the
results of the val-role splits:

- a full key, ``val/<dataset>/<name>``, matches itself;
- a short form ``<split>/<name>`` designates the first dataset reported in that split
  (``config.datasets`` order): its ``<name>`` if reported, else its last reported
  ``<stage>_<name>``, i.e. the final ranking of a staged metric (``val/r_mean`` is the ITM
  re-ranked ``itm_r_mean`` when re-ranking runs, else ``itc_r_mean``).

A criterion that matches none of the reported keys is an error at the evaluation that
fails to report it, naming the criterion and the keys that were reported.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from albef_plugin.config.loader import ConfigError
from albef_plugin.distributed import broadcast_object
from albef_plugin.metrics.base import EvalContext, parse_metric_specs
from albef_plugin.registry import registry

logger = logging.getLogger(__name__)

__all__ = ["build_metrics", "evaluate_split", "BestMetricTracker"]


def build_metrics(evaluation_config: Any) -> Dict[str, Any]:
    """``{name: metric}`` for every entry of ``evaluation.metrics``, built from its params.

    Raises:
        ConfigError: unknown metric, unknown or invalid parameter (the message names
            ``evaluation.metrics[i]...``).
    """
    return {spec.type: registry.get_metric_class(spec.type)(spec.params)
            for spec in parse_metric_specs(evaluation_config.metrics)}


def evaluate_split(model: nn.Module, split: str, datasets: Mapping[str, Dataset],
                   metrics: Mapping[str, Any], context: EvalContext,
                   collate_fns: Optional[Mapping[str, Any]] = None) -> Dict[str, float]:
    """Run every metric on every dataset of ``split`` with ``model`` in eval mode.

    Every rank runs the metrics (they may shard and gather); rank 0's numbers are
    broadcast so that all ranks take the same best / early-stop decisions.

    Args:
        context: device, precision, loader sizes and output dir; its ``split``,
            ``dataset_name`` and ``collate_fn`` are filled in per dataset.
        collate_fns: dataset name -> the builder's collate function for ``split``.

    Returns:
        ``{"<split>/<dataset>/<name>": value}``.
    """
    was_training = model.training
    model.eval()
    results: Dict[str, float] = {}
    try:
        with torch.no_grad():
            for dataset_name, dataset in datasets.items():
                dataset_context = EvalContext(
                    device=context.device, precision=context.precision, split=split,
                    dataset_name=dataset_name, output_dir=context.output_dir,
                    collate_fn=(collate_fns or {}).get(dataset_name), batch_size=context.batch_size,
                    num_workers=context.num_workers)
                for metric_name, metric in metrics.items():
                    values = metric.evaluate(model, dataset, dataset_context)
                    if not isinstance(values, Mapping):
                        raise TypeError(f"metric {metric_name!r} returned {type(values).__name__}; "
                                        f"evaluate() must return a dict of name -> number")
                    for key, value in values.items():
                        results[f"{split}/{dataset_name}/{key}"] = float(value)
    finally:
        model.train(was_training)
    return broadcast_object(results)


def resolve_criteria(criteria: str, metrics: Mapping[str, float]) -> Optional[str]:
    """The key of ``metrics`` that ``criteria`` designates (see the module doc), or None."""
    if criteria in metrics:
        return criteria
    split, _, name = criteria.partition("/")
    if not name or "/" in name:
        return None  # a full key that was not reported
    datasets: List[str] = []
    for key in metrics:
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == split and parts[1] not in datasets:
            datasets.append(parts[1])
    if not datasets:
        return None
    prefix = f"{split}/{datasets[0]}/"
    if prefix + name in metrics:
        return prefix + name
    staged = [k for k in metrics if k.startswith(prefix)
              and re.fullmatch(rf"[^_/]+_{re.escape(name)}", k[len(prefix):])]
    return staged[-1] if staged else None


class BestMetricTracker:
    """Remembers the best value of one logged key and decides early stopping.

    Args:
        criteria: the logged key to follow (``training.early_stop.criteria``), full or short
            (see the module doc).
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

    def resolve_key(self, metrics: Mapping[str, float]) -> str:
        """The key of ``metrics`` that ``criteria`` designates.

        Raises:
            ConfigError: nothing reported matches; the message lists the reported keys.
        """
        key = resolve_criteria(self.criteria, metrics)
        if key is None:
            reported = ", ".join(metrics) or "(none: no metric reported anything)"
            raise ConfigError(
                f"training.early_stop.criteria={self.criteria!r} matches no metric reported by the "
                f"evaluation. Reported: {reported}. Set training.early_stop.criteria to one of these "
                f"keys, or to a short form <split>/<name> (e.g. val/accuracy, val/r_mean).")
        if key != self.criteria:
            logger.info("training.early_stop.criteria=%r read as %r (set the full key to choose "
                        "another)", self.criteria, key)
        return key

    def observe(self, metrics: Mapping[str, float], update: int) -> bool:
        """Take an evaluation's results; True when it is a new best."""
        if self.key is None or self.key not in metrics:
            self.key = self.resolve_key(metrics)
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
