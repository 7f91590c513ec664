"""Stopping a diverging run with a checkpoint that is really good.

A run that blows up (too high a learning rate, fp16 overflow) first takes an update whose
own loss is still normal but which ruins the weights; the NEXT loss is huge or NaN. So a
checkpoint of update ``U`` is trusted ("verified") only once the loss of update ``U + 1``,
computed from exactly those weights, is known to be finite and not a spike
(:class:`~albef_plugin.trainers.meter.TrainMeter` watches both on the device; the trainer
reads the flag at log intervals and before each checkpoint write, its existing sync points).

:class:`DivergenceGuard` adds what the losses cannot see in time:

* a weight check before every checkpoint write: all parameters finite and their global L2
  norm at most ``max_weight_norm_growth`` x the norm at the previous write (or at the
  start); exploded weights are never written;
* which checkpoint is the last verified one (the stop message names it, and pruning never
  deletes it);
* on a stop, :meth:`roll_back`: ``current.ckpt`` and snapshots newer than the last verified
  checkpoint are renamed ``*.diverged`` and ``current.ckpt`` gets the verified state back, so
  ``checkpoint.resume=true`` continues from it too.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
from typing import List, Optional, Tuple

import torch
from torch import nn

from albef_plugin.trainers.checkpointer import Checkpointer
from albef_plugin.trainers.meter import NonFiniteLossError

logger = logging.getLogger(__name__)

__all__ = ["DivergenceGuard", "weight_norm"]

DIVERGED_SUFFIX = ".diverged"


def weight_norm(model: nn.Module) -> Tuple[float, List[str]]:
    """Global L2 norm of the floating-point parameters and the names of non-finite ones
    (one host sync)."""
    named = [(n, p.detach()) for n, p in model.named_parameters() if p.is_floating_point()]
    if not named:
        return 0.0, []
    norms = torch.stack([torch.linalg.vector_norm(p.float()) for _, p in named])
    finite = torch.stack([torch.isfinite(p).all() for _, p in named])
    total = torch.linalg.vector_norm(norms.double())
    values = torch.cat([total.float().reshape(1), finite.float()]).tolist()
    bad = [name for (name, _), ok in zip(named, values[1:]) if not ok]
    return float(values[0]), bad


class DivergenceGuard:
    """Which checkpoints are trustworthy, and refusal to write exploded weights.

    Args:
        checkpointer: the run's checkpoint files.
        max_weight_norm_growth: largest allowed ratio of the weight norm between two
            checkpoint writes (0 disables the check).
    """

    def __init__(self, checkpointer: Checkpointer, max_weight_norm_growth: float = 0.0) -> None:
        self.checkpointer = checkpointer
        self.max_growth = float(max_weight_norm_growth)
        self.reference_norm: Optional[float] = None
        self.clean_through = 0        # losses of updates <= this are known good
        self.current_update = -1      # update held by current.ckpt (-1: none)

    # ------------------------------------------------------------------ bookkeeping
    def start(self, model: nn.Module, update: int, current_update: int = -1) -> None:
        """At the start of training (or of a resumed run): reference norm, clean so far,
        and the update ``current.ckpt`` holds (-1: none)."""
        self.reference_norm, _ = weight_norm(model)
        self.clean_through = update
        self.current_update = current_update

    @property
    def verified_through(self) -> int:
        """Checkpoints of updates <= this are verified (the next loss was fine)."""
        return self.clean_through - 1

    def last_good(self) -> Optional[Tuple[int, str]]:
        """``(update, path)`` of the newest verified checkpoint (a snapshot when there is one)."""
        limit = self.verified_through
        candidates = [(u, p) for u, p in self.checkpointer.snapshots() if u <= limit]
        if 0 <= self.current_update <= limit and os.path.isfile(self.checkpointer.current_path):
            candidates.append((self.current_update, self.checkpointer.current_path))
        # newest first; at equal updates the snapshot (never overwritten) wins
        candidates.sort(key=lambda c: (c[0], c[1] != self.checkpointer.current_path))
        return candidates[-1] if candidates else None

    # ----------------------------------------------------------------------- checks
    def check_weights(self, model: nn.Module, update: int) -> None:
        """Before a checkpoint write: raise :class:`NonFiniteLossError` for NaN/inf or
        exploding weights (one sync); remember the norm once written."""
        norm, bad = weight_norm(model)
        if bad:
            raise NonFiniteLossError(
                f"parameters became NaN/inf by update {update} ({', '.join(bad[:8])}"
                f"{', ...' if len(bad) > 8 else ''}).")
        reference = self.reference_norm
        if self.max_growth > 0 and reference and (not math.isfinite(norm)
                                                  or norm > self.max_growth * reference):
            raise NonFiniteLossError(
                f"the weights exploded by update {update}: their L2 norm grew from {reference:.4g} "
                f"to {norm:.4g} since the last checkpoint (more than "
                f"training.divergence.max_weight_norm_growth={self.max_growth:g} x).")
        self.reference_norm = norm

    # ------------------------------------------------------------------------ stop
    def roll_back(self) -> Optional[Tuple[int, str]]:
        """Set diverged checkpoint files aside; returns the last verified checkpoint.

        ``current.ckpt`` and snapshots newer than the last verified checkpoint get a
        ``.diverged`` suffix (kept for inspection, ignored by resume and pruning), and the
        verified snapshot is copied to ``current.ckpt``. Nothing moves when no checkpoint
        is verified. Rank 0 only.
        """
        good = self.last_good()
        if good is None:
            return None
        good_update, good_path = good
        for update, path in self.checkpointer.snapshots():
            if update > good_update:
                os.replace(path, path + DIVERGED_SUFFIX)
                logger.warning("%s was written after the last verified checkpoint: renamed %s%s",
                               path, os.path.basename(path), DIVERGED_SUFFIX)
        current = self.checkpointer.current_path
        if self.current_update > good_update and os.path.isfile(current):
            os.replace(current, current + DIVERGED_SUFFIX)
            tmp = current + ".tmp"
            shutil.copyfile(good_path, tmp)
            os.replace(tmp, current)
            self.current_update = good_update
            logger.warning("current.ckpt rolled back to update %d (the diverged state is in "
                           "current.ckpt%s)", good_update, DIVERGED_SUFFIX)
        return good
