"""Loss bookkeeping between log intervals, without host syncs in the training step.

Loss sums stay on the device as tensors; ``.item()`` happens only in :meth:`summary`
(log intervals). Diverging losses are watched the same way: a device flag records the
first update whose losses were NaN/inf, or whose total loss spiked above
``spike_factor`` x the median of the last ``window`` micro-batches (a run blowing up often
shows huge but finite losses first), with those losses; :meth:`first_non_finite` reads it
(one sync) at log intervals and before every checkpoint write. When an objective joins (a
loss that was exactly zero becomes non-zero, e.g. ITM after ``itc_only_updates``), the
median restarts from that micro-batch: the total rises by design, not by divergence.
"""
from __future__ import annotations

import math
import time
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from albef_plugin.distributed import all_reduce_sum, reduce_dict_mean

__all__ = ["NonFiniteLossError", "TrainMeter"]


class NonFiniteLossError(FloatingPointError):
    """Training diverged (NaN/inf or exploding loss or weights); the run stops without
    saving the broken weights."""


class TrainMeter:
    """Sums of each loss, sample counts and timing since the last :meth:`summary`.

    Args:
        device: where the losses live.
        spike_factor: a total loss above this multiple of the recent median counts as
            divergence (0 disables); only once ``min(window, 10)`` losses were seen.
        window: how many recent micro-batch total losses the median covers.
    """

    def __init__(self, device: torch.device, spike_factor: float = 0.0, window: int = 100) -> None:
        self.device = device
        self.spike_factor = float(spike_factor)
        self._history = torch.full((max(1, int(window)),), float("nan"), device=device)
        self._seen = 0
        self._min_history = min(len(self._history), 10)
        self._bad_update = torch.full((), -1, dtype=torch.int64, device=device)
        self._bad_names: Tuple[str, ...] = ()
        self._bad_values: Optional[torch.Tensor] = None
        self._bad_median = torch.full((), float("nan"), device=device)
        self._most_active: Optional[torch.Tensor] = None  # most non-zero losses seen at once
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
        """Device-side only: no value reaches the host here."""
        names = tuple(sorted(named))
        values = torch.stack([named[n] for n in names])
        if names != self._bad_names:  # loss names changed (first call): restart the record
            self._bad_names, self._bad_values = names, torch.zeros_like(values)
        total = named["total_loss"]
        bad = ~torch.isfinite(values).all()
        active = (values != 0).sum()
        if self._most_active is None:
            self._most_active = active
        joined = active > self._most_active  # an objective started: restart the median
        self._most_active = torch.maximum(self._most_active, active)
        self._history = self._history.masked_fill(joined, float("nan"))
        median = torch.nanmedian(self._history)
        if self.spike_factor > 0 and self._seen >= self._min_history:
            bad = bad | ((median > 0) & (total > self.spike_factor * median))
        first_bad = bad & (self._bad_update < 0)
        self._bad_update.masked_fill_(first_bad, update)
        self._bad_values = torch.where(first_bad, values, self._bad_values)
        self._bad_median = torch.where(first_bad, median, self._bad_median)
        # a diverged loss must not drag the median up: keep the slot's old value instead
        slot = self._seen % len(self._history)
        self._history[slot] = torch.where(bad, self._history[slot], total)
        self._seen += 1

    def history_state(self) -> Dict[str, Any]:
        """The recent losses behind the spike median, for checkpoints (a resumed run keeps
        watching for spikes from its first update)."""
        return {"losses": self._history.detach().cpu(), "seen": self._seen}

    def load_history_state(self, state: Mapping[str, Any]) -> None:
        losses = torch.as_tensor(state["losses"], dtype=self._history.dtype).flatten()
        keep = losses[-len(self._history):]
        self._history.fill_(float("nan"))
        self._history[: len(keep)] = keep.to(self.device)
        self._seen = int(state.get("seen", 0))  # (the median does not care about slot order)

    def first_non_finite(self) -> Optional[Tuple[int, Dict[str, float]]]:
        """``(update, losses)`` of the first diverged update on any rank, or None (syncs).

        The losses include ``"recent_median"`` (of the total loss) when they spiked.
        """
        flag = all_reduce_sum((self._bad_update >= 0).to(torch.int64))
        if int(flag.item()) == 0:
            return None
        if int(self._bad_update.item()) < 0:  # another rank saw it
            return -1, {}
        values = self._bad_values.tolist() if self._bad_values is not None else []
        losses = dict(zip(self._bad_names, values))
        if all(math.isfinite(v) for v in values):  # a spike, not a NaN
            losses["recent_median"] = float(self._bad_median.item())
        return int(self._bad_update.item()), losses

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
