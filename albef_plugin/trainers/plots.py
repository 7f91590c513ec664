"""Training curves as a PNG, read back from ``metrics.jsonl``.

Usable standalone::

    python -m albef_plugin.trainers.plots save/metrics.jsonl [save/training_curves.png]

Left panel: every ``train/<loss>`` and ``total_loss`` against the update. Right panel: the
evaluation metrics against the update. Retrieval reports nine numbers per ranking (TR/IR R@1,
5, 10, their means and ``r_mean``); the panel keeps R@1 both ways and ``r_mean`` per ranking
(``metrics.jsonl`` keeps them all), one colour per number and ranking, periodic ``val``
evaluations as lines and other splits (the final ``test``) as markers. Other metrics (accuracy,
...) are drawn as they are. Legends sit outside the axes so they never hide a curve. Records
repeated after a resume (same kind and update) keep their last version.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections import defaultdict
from typing import Any, Dict, List, Optional, Tuple

logger = logging.getLogger(__name__)

__all__ = ["read_metrics", "plotted_eval_series", "plot_training_curves",
           "draw_training_curves", "main"]

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


# <ranking>_txt_r1 etc. (ranking optional): the retrieval metric's names
_RETRIEVAL = re.compile(r"^(?:(?P<ranking>.+?)_)?(?P<measure>txt_r1|txt_r5|txt_r10|txt_r_mean|"
                        r"img_r1|img_r5|img_r10|img_r_mean|r_mean)$")
_PLOTTED_RETRIEVAL = {"txt_r1": "TR@1", "img_r1": "IR@1", "r_mean": "r_mean"}


def plotted_eval_series(evaluation: Series) -> Dict[str, Tuple[str, str, List[Tuple[int, float]]]]:
    """The evaluation series the right panel draws: ``key -> (split, label, points)``.

    R@1 both ways and ``r_mean`` per ranking of the retrieval metrics, every other metric as
    it is. ``label`` leaves out the split: ``"itc TR@1"``, ``"demo_pretrain/itm r_mean"``
    (the dataset only when several datasets were evaluated), ``"vqa/accuracy"``.
    """
    datasets = {key.split("/")[1] for key in evaluation if key.count("/") >= 2}
    selected: Dict[str, Tuple[str, str, List[Tuple[int, float]]]] = {}
    for key, points in evaluation.items():
        parts = key.split("/")
        split, name = parts[0], parts[-1]
        prefix = "/".join(parts[1:-1])
        if len(datasets) <= 1:
            prefix = ""
        match = _RETRIEVAL.match(name)
        if match:
            if match["measure"] not in _PLOTTED_RETRIEVAL:
                continue
            name = " ".join(filter(None, [match["ranking"], _PLOTTED_RETRIEVAL[match["measure"]]]))
        label = f"{prefix}/{name}" if prefix else name
        selected[key] = (split, label, points)
    return selected


def _eval_styles(labels: List[str]) -> Tuple[Dict[str, str], Dict[str, str], Dict[str, str]]:
    """Colour per measure (TR@1, IR@1, r_mean, or the metric), line style (val) and marker
    (test) per ranking: ``itc TR@1`` and ``itm TR@1`` share a colour and differ by their
    dashes or markers."""
    measures: Dict[str, str] = {}
    rankings: Dict[str, int] = {}
    colours, dashes, markers = {}, {}, {}
    for label in labels:
        ranking, _, measure = label.rpartition(" ")
        colours[label] = measures.setdefault(measure, f"C{len(measures) % 10}")
        order = rankings.setdefault(ranking, len(rankings))
        dashes[label] = ["-", "--", ":", "-."][order % 4]
        markers[label] = ["*", "X", "P", "D"][order % 4]
    return colours, dashes, markers


def plot_training_curves(metrics_path: str, output_path: Optional[str] = None) -> str:
    """Draw the loss and metric curves of ``metrics_path`` into a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters
    import matplotlib.pyplot as plt

    output_path = output_path or os.path.join(os.path.dirname(metrics_path), "training_curves.png")
    figure = draw_training_curves(*read_metrics(metrics_path))
    tmp = output_path + ".tmp.png"
    figure.savefig(tmp, dpi=100, bbox_inches="tight")  # "tight" keeps the outside legends
    plt.close(figure)
    os.replace(tmp, output_path)
    return output_path


def draw_training_curves(train: Series, evaluation: Series) -> Any:
    """The two-panel matplotlib figure (losses | evaluation) of ``read_metrics``' series."""
    import matplotlib.pyplot as plt

    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(14, 4.5))
    for name, points in sorted(train.items()):
        updates, values = zip(*points)
        loss_axis.plot(updates, values, label=name, linewidth=2 if name == "total_loss" else 1)
    loss_axis.set(title="training losses", xlabel="update", ylabel="loss")

    series = plotted_eval_series(evaluation)
    colours, dashes, markers = _eval_styles(sorted({label for _, label, _ in series.values()}))
    for key in sorted(series, key=lambda k: (series[k][0] != "val", series[k][1])):
        split, label, points = series[key]
        updates, values = zip(*points)
        style = ({"marker": "o", "markersize": 3, "linestyle": dashes[label]} if split == "val"
                 else {"marker": markers[label], "markersize": 10, "linestyle": "none"})
        metric_axis.plot(updates, values, color=colours[label], label=f"{split} {label}", **style)
    metric_axis.set(title="evaluation", xlabel="update", ylabel="metric")
    for axis, has_data in ((loss_axis, bool(train)), (metric_axis, bool(series))):
        if has_data:
            axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                        borderaxespad=0.0)
        else:
            axis.text(0.5, 0.5, "no data", ha="center", va="center", transform=axis.transAxes)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Plot the curves of a metrics.jsonl")
    parser.add_argument("metrics", help="path to metrics.jsonl")
    parser.add_argument("output", nargs="?", help="PNG path (default: next to metrics.jsonl)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    logger.info("wrote %s", plot_training_curves(args.metrics, args.output))


if __name__ == "__main__":
    main()
