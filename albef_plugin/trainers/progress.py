"""The training progress bar: live on a terminal, a line every minute or so in a log file.

On a terminal tqdm redraws one line in place. Into a file (a SLURM ``.err`` log, ``make demo
> log 2>&1``) every redraw becomes a new line, one per update; there the bar refreshes at most
every ``LOG_INTERVAL_S`` seconds instead.
"""
from __future__ import annotations

import sys
from typing import IO, Any, Dict, Optional

from tqdm import tqdm

__all__ = ["LOG_INTERVAL_S", "progress_bar", "progress_bar_options"]

LOG_INTERVAL_S = 60.0


def _is_terminal(stream: Optional[IO]) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # closed or wrapped streams without a usable isatty
        return False


def progress_bar_options(stream: Optional[IO] = None) -> Dict[str, Any]:
    """tqdm keyword arguments for writing to ``stream`` (default: ``sys.stderr``, tqdm's own)."""
    stream = sys.stderr if stream is None else stream
    if _is_terminal(stream):
        return {"file": stream, "dynamic_ncols": True}
    # miniters=0 keeps tqdm's time-based throttle; ncols fixes the width without a terminal
    return {"file": stream, "mininterval": LOG_INTERVAL_S, "maxinterval": LOG_INTERVAL_S * 10,
            "miniters": 0, "ncols": 100}


class _ProgressBar(tqdm):
    """tqdm whose ``set_postfix`` redraws at once only on a terminal: the trainer sets the loss
    every log interval, and a forced redraw would add a log-file line each time."""

    def __init__(self, *args: Any, live: bool, **kwargs: Any) -> None:
        self._live = live
        super().__init__(*args, **kwargs)

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=refresh and self._live, **kwargs)


def progress_bar(total: int, initial: int, enabled: bool, stream: Optional[IO] = None) -> tqdm:
    """The ``train`` bar over ``total`` updates, starting at ``initial``."""
    stream = sys.stderr if stream is None else stream
    return _ProgressBar(total=total, initial=initial, desc="train", disable=not enabled,
                        live=_is_terminal(stream), **progress_bar_options(stream))
