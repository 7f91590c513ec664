"""Training curves as a PNG, read back from ``metrics.jsonl``.

Usable standalone::

    python -m albef_plugin.trainers.plots save/metrics.jsonl [save/training_curves.png]

Left panel: every ``train/<loss>`` and ``total_loss`` against the update. Right panel: every
evaluation metric against the update (one line per key). Records repeated after a resume
(same kind and update) keep their last version.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

logger = logging.getLogger(__name__)

__all__ = ["read_metrics", "plot_training_curves", "main"]

Series = Dict[str, List[Tuple[int, float]]]


def read_metrics(path: str) -> Tuple[Series, Series]:
    """``(train_series, eval_series)``: key -> sorted ``[(update, value)]`` from a metrics.jsonl."""
    latest: Dict[Tuple[str, int, str], Dict] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # a run killed mid-write leaves a partial last line: skip it, keep the rest
                logger.warning("%s:%d is not valid JSON; skipped", path, line_number)
                continue
            key = (record.get("kind", "train"), int(record.get("update", 0)), record.get("split", ""))
            latest[key] = record
    train: Series = defaultdict(list)
    evaluation: Series = defaultdict(list)
    for (kind, update, _), record in sorted(latest.items(), key=lambda item: item[0][1]):
        for name, value in record.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if kind == "train" and (name.startswith("train/") or name == "total_loss"):
                train[name].append((update, float(value)))
            elif kind == "eval" and "/" in name:
                evaluation[name].append((update, float(value)))
    return dict(train), dict(evaluation)


def plot_training_curves(metrics_path: str, output_path: Optional[str] = None) -> str:
    """Draw the loss and metric curves of ``metrics_path`` into a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters
    import matplotlib.pyplot as plt

    output_path = output_path or os.path.join(os.path.dirname(metrics_path), "training_curves.png")
    train, evaluation = read_metrics(metrics_path)
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, points in sorted(train.items()):
        updates, values = zip(*points)
        loss_axis.plot(updates, values, label=name, linewidth=2 if name == "total_loss" else 1)
    loss_axis.set(title="training losses", xlabel="update", ylabel="loss")
    for name, points in sorted(evaluation.items()):
        updates, values = zip(*points)
        metric_axis.plot(updates, values, marker="o", label=name)
    metric_axis.set(title="evaluation", xlabel="update", ylabel="metric")
    for axis, series in ((loss_axis, train), (metric_axis, evaluation)):
        if series:
            axis.legend(fontsize="small")
        else:
            axis.text(0.5, 0.5, "no data", ha="center", va="center", transform=axis.transAxes)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    tmp = output_path + ".tmp.png"
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    os.replace(tmp, output_path)
    return output_path


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Plot the curves of a metrics.jsonl")
    parser.add_argument("metrics", help="path to metrics.jsonl")
    parser.add_argument("output", nargs="?", help="PNG path (default: next to metrics.jsonl)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    logger.info("wrote %s", plot_training_curves(args.metrics, args.output))


if __name__ == "__main__":
    main()
