"""Loss bookkeeping between log intervals, without host syncs in the training step.

Loss sums stay on the device as tensors; ``.item()`` happens only in :meth:`summary`
(log intervals). Non-finite losses are watched the same way: a device flag records the
first update whose losses were NaN/inf and those losses, and :meth:`first_non_finite`
reads it (one sync) at log intervals and before every checkpoint write.
"""
from __future__ import annotations

import time
from typing import Dict, Mapping, Optional, Tuple

import torch

from albef_plugin.distributed import all_reduce_sum, reduce_dict_mean

__all__ = ["NonFiniteLossError", "TrainMeter"]


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or inf; the run stops without saving the broken weights."""


class TrainMeter:
    """Sums of each loss, sample counts and timing since the last :meth:`summary`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._bad_update = torch.full((), -1, dtype=torch.int64, device=device)
        self._bad_names: Tuple[str, ...] = ()
        self._bad_values: Optional[torch.Tensor] = None
        self.reset()

    def reset(self) -> None:
        self._loss_sums: Dict[str, torch.Tensor] = {}
        self._micro_batches = 0
        self._samples = 0
        self._skipped = 0
        self._start = time.perf_counter()

    def add(self, losses: Mapping[str, torch.Tensor], total: torch.Tensor, num_samples: int,
            update: int) -> None:
        """Record one micro-batch's losses (detached, still on the device)."""
        named = {**{name: loss.detach().float() for name, loss in losses.items()},
                 "total_loss": total.detach().float()}
        for name, value in named.items():
            self._loss_sums[name] = self._loss_sums.get(name, 0.0) + value
        self._micro_batches += 1
        self._samples += num_samples
        self._watch(named, update)

    def add_skipped(self, num_skipped: int) -> None:
        self._skipped += num_skipped

    def _watch(self, named: Mapping[str, torch.Tensor], update: int) -> None:
        names = tuple(sorted(named))
        values = torch.stack([named[n] for n in names])
        if names != self._bad_names:  # loss names changed (first call): restart the record
            self._bad_names, self._bad_values = names, torch.zeros_like(values)
        first_bad = (~torch.isfinite(values).all()) & (self._bad_update < 0)
        self._bad_update.masked_fill_(first_bad, update)
        self._bad_values = torch.where(first_bad, values, self._bad_values)

    def first_non_finite(self) -> Optional[Tuple[int, Dict[str, float]]]:
        """``(update, losses)`` of the first non-finite update on any rank, or None (syncs)."""
        flag = all_reduce_sum((self._bad_update >= 0).to(torch.int64))
        if int(flag.item()) == 0:
            return None
        if int(self._bad_update.item()) < 0:  # another rank saw it
            return -1, {}
        values = self._bad_values.tolist() if self._bad_values is not None else []
        return int(self._bad_update.item()), dict(zip(self._bad_names, values))

    def summary(self) -> Dict[str, float]:
        """Mean losses over the micro-batches since the last summary, summed samples/s over
        ranks and skipped samples; a collective (call on every rank), then reset."""
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        count = max(self._micro_batches, 1)
        means = {name: total / count for name, total in sorted(self._loss_sums.items())}
        means = reduce_dict_mean({k: torch.as_tensor(v, device=self.device) for k, v in means.items()})
        counts = all_reduce_sum(torch.tensor([self._samples, self._skipped], dtype=torch.float64,
                                             device=self.device))
        samples, skipped = counts.tolist()
        record = {("total_loss" if name == "total_loss" else f"train/{name}"): float(value)
                  for name, value in means.items()}
        record["samples_per_s"] = samples / elapsed
        record["num_skipped"] = int(skipped)
        self.reset()
        return record
