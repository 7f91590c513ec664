"""Epoch / iteration bookkeeping shared by the two training batch iterators.

:class:`~albef_plugin.trainers.data.EpochBatchIterator` (map-style data, a sampler) and
:class:`~albef_plugin.trainers.stream_data.StreamBatchIterator` (an endless stream) differ
in how they get batches, not in how they count them: both know the position
``(epoch, iteration_in_epoch)`` of the next batch (what a checkpoint stores), count the
samples each epoch lost, call ``on_epoch_end`` after an epoch's last batch, and stop their
loader's workers on :meth:`close`. That part lives here, once.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Tuple

from torch.utils.data import DataLoader

__all__ = ["PositionedBatches"]


class PositionedBatches:
    """Base of the batch iterators: position, epoch counting, worker shutdown.

    Subclasses set ``iterations_per_epoch`` and implement ``next()``, which draws a batch
    from ``self._iterator`` and returns ``(self._advance(num_skipped), batch, num_skipped)``.

    ``restart_each_epoch``: whether a new epoch needs a new loader iterator (map-style data:
    the sampler has a new permutation per epoch) or the iterator runs on (a stream).
    """

    restart_each_epoch: bool = True

    def __init__(self, loader: DataLoader, iterations_per_epoch: int,
                 on_epoch_end: Optional[Callable[[int, int], None]] = None) -> None:
        self.loader = loader
        self.batch_size = int(loader.batch_size or 1)
        self.iterations_per_epoch = iterations_per_epoch
        self.on_epoch_end = on_epoch_end
        self.epoch = 0
        self.iteration = 0
        self.skipped_in_epoch = 0
        self._iterator: Optional[Iterator[Any]] = None

    @property
    def position(self) -> Tuple[int, int]:
        """``(epoch, iteration_in_epoch)`` of the NEXT batch."""
        return self.epoch, self.iteration

    def start_at(self, epoch: int, iteration: int) -> None:
        """Continue from a saved position; an iteration past the epoch's end starts the next epoch."""
        if iteration >= self.iterations_per_epoch:
            epoch, iteration = epoch + 1, 0
        self.epoch, self.iteration = epoch, iteration
        if self.restart_each_epoch:
            self._iterator = None

    def _advance(self, num_skipped: int) -> Tuple[int, int]:
        """Count a drawn batch that lost ``num_skipped`` samples; returns the batch's own
        position. After an epoch's last batch, ``on_epoch_end(epoch, skipped)`` runs (on every
        rank: it may run a collective) and the next epoch begins."""
        self.skipped_in_epoch += num_skipped
        position = self.position
        self.iteration += 1
        if self.iteration >= self.iterations_per_epoch:
            if self.on_epoch_end is not None:
                self.on_epoch_end(self.epoch, self.skipped_in_epoch)
            self.epoch, self.iteration, self.skipped_in_epoch = self.epoch + 1, 0, 0
            if self.restart_each_epoch:
                self._iterator = None
        return position

    def close(self) -> None:
        """Stop the loader's worker processes now.

        Left to the garbage collector, an iterator caught in a reference cycle is finalised
        after its queues, and each worker then waits out a 5 s timeout before exiting (an
        endless stream's workers too).
        """
        iterator, self._iterator = self._iterator, None
        persistent = getattr(self.loader, "_iterator", None)  # kept by persistent_workers
        for candidate in {id(i): i for i in (iterator, persistent) if i is not None}.values():
            shutdown = getattr(candidate, "_shutdown_workers", None)  # multi-process iterators only
            if shutdown is not None:
                shutdown()
        if persistent is not None:
            self.loader._iterator = None
