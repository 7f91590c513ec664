"""Hyperparameter sweeps: a grid of overrides, one run (and one save_dir) per point.

    python tools/sweep.py config=projects/albef/configs/demo/pretrain.yaml launcher.partition=gpu \\
        --grid 'optimizer.params.lr=[1e-4,2e-4]' --grid 'training.batch_size=[32,64]' \\
        --root save/sweeps/lr_bs
    python tools/sweep.py config=... --grid ... --root save/sweeps/lr_bs --summary

Each point runs in ``<root>/<point name>`` (e.g. ``lr0.0001.batch_size32``) and all points
are submitted as one submitit job array (``launcher.array_parallelism`` at a time). Running
the same command again skips the finished points (``current.ckpt`` holds ``max_updates``)
and resubmits the others, which resume from their ``current.ckpt`` (the jobs always run with
``checkpoint.resume=true``). ``--summary`` prints the best value of a metric per point.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from albef_plugin.launch.errors import LaunchError

logger = logging.getLogger(__name__)

__all__ = ["parse_grid", "grid_points", "point_name", "Point", "point_status", "best_metric",
           "plan_sweep", "submit_sweep", "summary_table", "main"]


def parse_grid(specs: Sequence[str]) -> List[Tuple[str, List[Any]]]:
    """``['a.b=[1,2]', 'c=[x,y]']`` -> ``[('a.b', [1, 2]), ('c', ['x', 'y'])]``."""
    grid = []
    for spec in specs:
        key, sep, values_text = spec.partition("=")
        key = key.strip()
        try:
            values = yaml.safe_load(values_text) if sep else None
        except yaml.YAMLError as exc:
            raise LaunchError(f"--grid {spec!r}: cannot read the values ({exc}).") from None
        if not key or not isinstance(values, list) or not values:
            raise LaunchError(f"--grid {spec!r}: expected KEY=[v1,v2,...] with at least one value.")
        if any(k == key for k, _ in grid):
            raise LaunchError(f"--grid: {key} is given twice.")
        if key.startswith("env.save_dir") or key.startswith("launcher."):
            raise LaunchError(f"--grid {key}: the sweep sets env.save_dir per point and shares one "
                              f"launcher setup; vary training or model keys.")
        grid.append((key, values))
    if not grid:
        raise LaunchError("no --grid given: nothing to sweep (e.g. --grid 'optimizer.params.lr=[1e-4,2e-4]').")
    return grid


def grid_points(grid: Sequence[Tuple[str, List[Any]]]) -> List[Dict[str, Any]]:
    """Every combination, in the order of the grid (the last key varies fastest)."""
    keys = [k for k, _ in grid]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in grid))]


def _value_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def point_name(point: Dict[str, Any]) -> str:
    """A folder name: the last part of each key followed by its value, joined by dots."""
    parts = [f"{key.split('.')[-1]}{_value_text(value)}" for key, value in point.items()]
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", ".".join(parts))


@dataclass
class Point:
    name: str
    overrides: Dict[str, Any]
    save_dir: str
    status: str = "new"                # new | partial | finished
    update: int = 0
    max_updates: Optional[int] = None

    def opts(self) -> List[str]:
        return [f"{k}={_value_text(v)}" for k, v in self.overrides.items()] + \
            [f"env.save_dir={self.save_dir}", "checkpoint.resume=true"]


def point_status(save_dir: str) -> Tuple[str, int, Optional[int]]:
    """``(status, update, max_updates)`` read from ``<save_dir>/current.ckpt`` (memory-mapped)."""
    import torch

    from albef_plugin.trainers.trainer import compute_max_updates

    path = os.path.join(save_dir, "current.ckpt")
    if not os.path.isfile(path):
        return "new", 0, None
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    update = int(checkpoint["train_state"]["update"])
    training = checkpoint["config"]["training"]
    data = checkpoint.get("data", {})
    max_updates = compute_max_updates(training.get("max_updates"), training.get("max_epochs"),
                                      int(data.get("iterations_per_epoch", 1)),
                                      int(training.get("update_frequency", 1)))
    return ("finished" if update >= max_updates else "partial"), update, max_updates


def plan_sweep(opts: Sequence[str], grid_specs: Sequence[str], root: str) -> List[Point]:
    """The points of the grid with their save_dir and status."""
    points = []
    for overrides in grid_points(parse_grid(grid_specs)):
        name = point_name(overrides)
        save_dir = os.path.join(root, name)
        status, update, max_updates = point_status(save_dir)
        points.append(Point(name, overrides, save_dir, status, update, max_updates))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise LaunchError("two grid points map to the same folder name; use values that differ "
                          "once written as text.")
    return points


def submit_sweep(opts: Sequence[str], points: Sequence[Point], root: str) -> List[Any]:
    """Submit the points that are not finished as one job array; returns the jobs."""
    from albef_plugin.config import build_config
    from albef_plugin.launch.submitit_launcher import SubmititJob, SubmititLauncher, job_config

    todo = [p for p in points if p.status != "finished"]
    if not todo:
        return []
    configs = [build_config([*opts, *p.opts(), "launcher.type=submitit"]) for p in todo]
    launcher = SubmititLauncher(configs[0])
    executor = launcher.build_executor(folder=os.path.join(root, "submitit"))
    jobs = launcher.submit(executor, [SubmititJob(job_config(cfg)) for cfg in configs])
    for point, job in zip(todo, jobs):
        logger.info("%s: job %s (%s)", point.name, job.job_id,
                    "resumes at update %d" % point.update if point.status == "partial" else "new")
    return jobs


def best_metric(save_dir: str, criteria: str, minimize: bool) -> Tuple[Optional[str], float, Optional[int]]:
    """``(key, best value, its update)`` over the eval records of ``metrics.jsonl``."""
    from albef_plugin.trainers.evaluation import BestMetricTracker

    path = os.path.join(save_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None, math.nan, None
    tracker = BestMetricTracker(criteria, minimize=minimize)
    logging.getLogger("albef_plugin.trainers.evaluation").setLevel(logging.ERROR)
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("kind") == "eval":
                metrics = {k: v for k, v in record.items() if k.count("/") == 2
                           and isinstance(v, (int, float)) and v is not None}
                tracker.observe(metrics, int(record["update"]))
    return tracker.key, (tracker.value if tracker.value is not None else math.nan), tracker.update


def summary_table(points: Sequence[Point], criteria: str, minimize: bool) -> str:
    """One line per point: progress and the best value of ``criteria``, best point first."""
    rows = []
    for point in points:
        key, value, update = best_metric(point.save_dir, criteria, minimize)
        progress = {"new": "not started",
                    "partial": f"{point.update}/{point.max_updates}",
                    "finished": f"done ({point.update})"}[point.status]
        rows.append((point.name, progress, key or "-", value, update))
    rows.sort(key=lambda r: (math.isnan(r[3]), r[3] if minimize else -r[3]))
    header = ("point", "updates", "metric", "best", "at update")
    cells = [header] + [(n, p, k, "-" if math.isnan(v) else f"{v:.4f}", "-" if u is None else str(u))
                        for n, p, k, v, u in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Submit a grid of runs as one submitit job array (see albef_plugin/launch/sweep.py).")
    parser.add_argument("opts", nargs="*", help="config=... and key=value overrides shared by all points")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=[v1,v2]",
                        help="a key and its values; several --grid make a product")
    parser.add_argument("--root", required=True, help="folder holding one save_dir per point")
    parser.add_argument("--summary", action="store_true", help="print the table; submit nothing")
    parser.add_argument("--metric", default=None,
                        help="key of --summary (default: training.early_stop.criteria)")
    parser.add_argument("--minimize", action="store_true", help="lower --metric is better")
    parser.add_argument("--dry-run", action="store_true", help="list the points; submit nothing")
    args = parser.parse_args(argv)

    from albef_plugin.config import build_config
    from albef_plugin.run import setup_console_logging

    setup_console_logging()
    points = plan_sweep(args.opts, args.grid, args.root)
    if args.summary:
        cfg = build_config(list(args.opts))
        metric = args.metric or cfg.training.early_stop.criteria
        minimize = args.minimize or (args.metric is None and cfg.training.early_stop.minimize)
        print(summary_table(points, metric, minimize))
        return 0
    for point in points:
        print(f"{point.name}: {point.status}" + (f" (update {point.update}/{point.max_updates})"
                                                 if point.status != "new" else ""))
    if args.dry_run:
        return 0
    jobs = submit_sweep(args.opts, points, args.root)
    skipped = len(points) - len(jobs)
    print(f"submitted {len(jobs)} point(s) as a job array"
          + (f" ({jobs[0].job_id.split('_')[0]})" if jobs else "")
          + (f"; {skipped} finished point(s) skipped" if skipped else ""))
    return 0
