"""Where a run's numbers go: ``metrics.jsonl``, TensorBoard and ``train.log``.

``metrics.jsonl`` is append-only, one JSON object per line, flushed as written, so a
crash loses nothing already logged. Each record has a ``kind``:

* ``"train"``: ``update``, ``epoch``, ``train/<loss>``..., ``total_loss``, ``lr``,
  ``samples_per_s``, ``num_skipped`` (since the previous record), ``grad_norm`` if clipped;
* ``"eval"``: ``update``, ``epoch``, ``split``, ``<split>/<dataset>/<metric>``...;
* ``"epoch"``: ``update``, ``epoch`` (the one that ended), ``num_skipped`` in that epoch.

On a resume, the records of the interrupted run past the checkpoint are removed first
(``resume.drop_metrics_after``), so each update is logged once; readers (see ``plots.py``)
still keep the last record of each ``(kind, update)`` should a file hold repeats.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping, Optional

logger = logging.getLogger(__name__)

__all__ = ["MetricsWriter", "attach_file_log", "detach_file_log", "METRICS_FILE", "LOG_FILE"]

METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
TENSORBOARD_DIR = "tensorboard"
_NOT_SCALARS = ("kind", "update", "epoch", "split")


class MetricsWriter:
    """Appends records to ``<save_dir>/metrics.jsonl`` and, optionally, TensorBoard.

    Create it on rank 0 only; other ranks use ``MetricsWriter(None)`` which drops records.
    """

    def __init__(self, save_dir: Optional[str], tensorboard: bool = False) -> None:
        self.path = os.path.join(save_dir, METRICS_FILE) if save_dir else None
        self._file = None
        self._tensorboard = None
        if save_dir is None:
            return
        os.makedirs(save_dir, exist_ok=True)
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
