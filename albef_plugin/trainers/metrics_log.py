"""Where a run's numbers go: ``metrics.jsonl``, TensorBoard and ``train.log``.

``metrics.jsonl`` is append-only, one JSON object per line, flushed as written, so a
crash loses nothing already logged. Each record has a ``kind``:

* ``"train"``: ``update``, ``epoch``, ``train/<loss>``..., ``total_loss``, ``lr``,
  ``samples_per_s``, ``num_skipped`` (since the previous record), ``grad_norm`` if clipped;
* ``"eval"``: ``update``, ``epoch``, ``split``, ``<split>/<dataset>/<metric>``...; the test
  splits evaluated after training add ``weights`` (``best`` | ``last``) and
  ``weights_update`` (the update those weights are of; see ``test_weights.py``);
* ``"epoch"``: ``update``, ``epoch`` (the one that ended), ``num_skipped`` in that epoch.

A training run that starts at update ``N`` (resumed from a checkpoint of update ``N``, or
``N = 0``) first drops the records written after that checkpoint by the interrupted run
(:func:`drop_records_after`), so after any number of requeues, kills or node failures each
update appears once, in order. An ``"epoch"`` record carries the update count *before* the
update that drew the epoch's last batch, so one with ``update >= N`` is dropped too.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, List, Mapping, Optional

logger = logging.getLogger(__name__)

__all__ = ["MetricsWriter", "attach_file_log", "detach_file_log", "drop_records_after",
           "METRICS_FILE", "LOG_FILE"]

METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
TENSORBOARD_DIR = "tensorboard"
_NOT_SCALARS = ("kind", "update", "epoch", "split", "weights", "weights_update")


def _written_after(record: Mapping[str, Any], update: int) -> bool:
    done = record.get("update")
    if not isinstance(done, int):
        return True
    return done >= update if record.get("kind") == "epoch" else done > update


def drop_records_after(path: str, update: int) -> List[str]:
    """Remove from ``path`` the records written after the checkpoint of ``update``.

    A last line cut short by a kill is removed too. The file is rewritten atomically.

    Returns:
        the splits whose evaluation at ``update`` is recorded (kept): not to be redone.
    """
    if not os.path.isfile(path):
        return []
    kept, dropped, evaluated = [], 0, []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if _written_after(record, update):
                dropped += 1
                continue
            kept.append(line if line.endswith("\n") else line + "\n")
            if record.get("kind") == "eval" and record.get("update") == update:
                evaluated.append(str(record.get("split")))
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.writelines(kept)
        os.replace(tmp, path)
        logger.info("%s: dropped %d record(s) written after update %d by the interrupted run",
                    path, dropped, update)
    return evaluated


class MetricsWriter:
    """Appends records to ``<save_dir>/metrics.jsonl`` and, optionally, TensorBoard.

    Create it on rank 0 only; other ranks use ``MetricsWriter(None)`` which drops records.

    Args:
        drop_after_update: a training run starting at this update: first remove the records
            an interrupted run wrote after it (see :func:`drop_records_after`).
    """

    def __init__(self, save_dir: Optional[str], tensorboard: bool = False,
                 drop_after_update: Optional[int] = None) -> None:
        self.path = os.path.join(save_dir, METRICS_FILE) if save_dir else None
        self._file = None
        self._tensorboard = None
        self.evaluated_at_start: List[str] = []  # splits already evaluated at the start update
        if save_dir is None:
            return
        os.makedirs(save_dir, exist_ok=True)
        if drop_after_update is not None:
            self.evaluated_at_start = drop_records_after(self.path, drop_after_update)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            # imported here: tensorboard is only needed when enabled
            from torch.utils.tensorboard import SummaryWriter
            self._tensorboard = SummaryWriter(log_dir=os.path.join(save_dir, TENSORBOARD_DIR))

    def write(self, record: Mapping[str, Any]) -> None:
        if self._file is None:
            return
        # NaN / inf are written as JSON null so strict JSON readers can parse every line
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            step = int(record.get("update", 0))
            for key, value in record.items():
                if key not in _NOT_SCALARS and isinstance(value, (int, float)) \
                        and not isinstance(value, bool):
                    tag = f"train/{key}" if "/" not in key else key
                    self._tensorboard.add_scalar(tag, value, step)
            self._tensorboard.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def attach_file_log(save_dir: str, level: str = "info") -> logging.Handler:
    """Send the ``albef_plugin`` loggers to ``<save_dir>/train.log`` (appending)."""
    os.makedirs(save_dir, exist_ok=True)
    handler = logging.FileHandler(os.path.join(save_dir, LOG_FILE), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        raise ValueError(f"env.log_level={level!r}: expected debug, info, warning or error.")
    handler.setLevel(numeric_level)
    package_logger = logging.getLogger("albef_plugin")
    package_logger.addHandler(handler)
    if package_logger.level == logging.NOTSET or package_logger.level > numeric_level:
        package_logger.setLevel(numeric_level)
    return handler


def detach_file_log(handler: Optional[logging.Handler]) -> None:
    if handler is not None:
        logging.getLogger("albef_plugin").removeHandler(handler)
        handler.close()
