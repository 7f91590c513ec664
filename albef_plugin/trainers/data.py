"""Data loading that can resume exactly in the middle of an epoch.

Three pieces make the data stream a pure function of ``(seed, epoch, position)``:

* :class:`ResumableDistributedSampler` shuffles with ``seed + epoch`` (like torch's
  ``DistributedSampler``) and can start ``skip`` samples into this rank's share of the
  epoch, so a resumed run never loads the samples it already consumed.
* It yields ``(epoch, index)`` keys instead of bare indices; :class:`SeededSamples`
  turns each key back into ``dataset[index]`` after seeding ``random``, ``numpy`` and
  torch's CPU generator (never the CUDA ones) from a hash of ``(seed, epoch, index)``. Random augmentations therefore do
  not depend on which worker loads the sample, nor on what ran before. In the main process
  (``num_workers=0``) the global generators are saved and restored around the call, so
  the data never shifts the model's random stream (dropout, MLM masking, hard negatives).
  The epoch travels in the key (not in an attribute of the dataset) because persistent
  workers hold their own copy of the dataset.
* :class:`EpochBatchIterator` walks the loader epoch after epoch and knows the position
  ``(epoch, iteration_in_epoch)`` of the next batch, which is what checkpoints store (the
  counting is shared with the stream iterator: ``trainers/batch_position.py``).

Randomness inside a ``collate_fn`` running in a worker is NOT covered (it follows the
worker's seed); keep augmentations in ``__getitem__``.
"""
from __future__ import annotations

import logging
import math
import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from albef_plugin.trainers.batch_position import PositionedBatches
from albef_plugin.trainers.preemption import ignore_stop_signals

logger = logging.getLogger(__name__)

__all__ = [
    "sample_seed",
    "ResumableDistributedSampler",
    "SeededSamples",
    "build_train_loader",
    "EpochBatchIterator",
    "batch_size_of",
    "every_rank_has_data",
    "pad_batch",
]

SampleKey = Tuple[int, int]  # (epoch, dataset index)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch (numpy's SeedSequence hash)."""
    words = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class ResumableDistributedSampler(Sampler[SampleKey]):
    """This rank's share of a shuffled epoch, as ``(epoch, index)`` keys.

    The permutation depends only on ``seed + epoch``; it is padded (by repeating its
    head) to a multiple of the world size, then rank ``r`` takes every ``world_size``-th
    element starting at ``r``, like ``torch.utils.data.DistributedSampler``.

    Args:
        dataset_size: number of samples.
        num_replicas / rank: world size and this process's rank.
        seed: the same on every rank (it defines the shared permutation).
        shuffle: False keeps the dataset order.
    """

    def __init__(self, dataset_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True) -> None:
        if dataset_size <= 0:
            raise ValueError("the training dataset is empty: check the dataset's annotation "
                             "files and the dataset_config of the training datasets.")
        self.dataset_size = dataset_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.num_samples = math.ceil(dataset_size / num_replicas)  # per rank, per epoch
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch and how many of this rank's samples to leave out at its start."""
        if not 0 <= skip <= self.num_samples:
            raise ValueError(f"skip={skip} is outside this rank's epoch of {self.num_samples} samples")
        self.epoch = epoch
        self.skip = skip

    def indices(self) -> List[int]:
        """This rank's full list of dataset indices for the current epoch (no skip)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        total = self.num_samples * self.num_replicas
        while len(order) < total:  # pad so every rank gets the same count
            order += order[: total - len(order)]
        return order[self.rank:total:self.num_replicas]

    def __iter__(self) -> Iterator[SampleKey]:
        for index in self.indices()[self.skip:]:
            yield self.epoch, index

    def __len__(self) -> int:
        return self.num_samples - self.skip


class SeededSamples(Dataset):
    """Wraps a dataset so that ``self[(epoch, index)]`` is reproducible (see module doc)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey) -> Any:
        epoch, index = key
        seed = sample_seed(self.seed, epoch, index)
        in_worker = torch.utils.data.get_worker_info() is not None
        if in_worker:  # the worker's generators belong to the data alone: just reseed
            return self._load_seeded(index, seed)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                return self._load_seeded(index, seed)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)

    def _load_seeded(self, index: int, seed: int) -> Any:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        # the CPU generator only: torch.manual_seed would also reseed every CUDA generator,
        # which fork_rng(devices=[]) does not restore (the model's dropout / masking stream)
        torch.default_generator.manual_seed(seed)
        return self.dataset[index]


def _seed_worker(worker_id: int) -> None:
    """Seed ``random``/``numpy`` of a worker from its torch seed (set by the loader generator)."""
    worker_seed = torch.initial_seed() % 2**32
    ignore_stop_signals()  # USR2/SIGTERM: the main process stops the workers itself
    random.seed(worker_seed)
    np.random.seed(worker_seed)


def build_train_loader(dataset: Dataset, collate_fn: Optional[Callable], *, batch_size: int,
                       seed: int, rank: int, world_size: int, num_workers: int,
                       pin_memory: bool, persistent_workers: bool,
                       ) -> Tuple[DataLoader, ResumableDistributedSampler]:
    """The training loader: shuffled, distributed, ``drop_last`` (as the official code).

    Returns:
        ``(loader, sampler)``; call ``sampler.set_epoch(epoch, skip)`` before ``iter(loader)``.
    """
    sampler = ResumableDistributedSampler(len(dataset), world_size, rank, seed=seed)  # type: ignore[arg-type]
    if sampler.num_samples < batch_size:
        raise ValueError(f"training.batch_size={batch_size} is larger than this rank's share of "
                         f"the training data ({sampler.num_samples} samples of {len(dataset)} "  # type: ignore[arg-type]
                         f"over {world_size} processes): lower training.batch_size.")
    # the loader's own generator (not the global one) draws the workers' base seed, so
    # creating an iterator never consumes the model's random stream
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        SeededSamples(dataset, seed), batch_size=batch_size, sampler=sampler,
        collate_fn=collate_fn, num_workers=num_workers, drop_last=True,
        pin_memory=pin_memory, persistent_workers=persistent_workers and num_workers > 0,
        worker_init_fn=_seed_worker if num_workers > 0 else None, generator=generator,
    )
    return loader, sampler


def pad_batch(batch: Dict[str, Any], batch_size: int) -> Dict[str, Any]:
    """``batch`` with its rows repeated cyclically up to ``batch_size`` (as it is when full
    or empty). Every tensor / list whose first dimension is the batch is padded; a repeated
    sample keeps its ``image_id``, so ITM never takes it as a negative of itself."""
    size = batch_size_of(batch)
    if size == 0 or size >= batch_size:
        return batch
    rows = [i % size for i in range(batch_size)]
    padded: Dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == size:
            padded[key] = value[rows]
        elif isinstance(value, (list, tuple)) and len(value) == size:
            padded[key] = type(value)(value[i] for i in rows)
        else:
            padded[key] = value
    return padded


def flag_group() -> Any:
    """A gloo process group for host-side flags (the default group when it is gloo already)."""
    import torch.distributed as dist

    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    return dist.new_group(backend="gloo")  # a collective: every rank creates it together


def every_rank_has_data(has_data: bool, group: Any) -> bool:
    """Whether no rank's batch is empty: one all-reduce of a CPU int per batch.

    Why a collective per batch: a rank whose batch was entirely dropped cannot run the
    forward, and DDP (gradient all-reduce) and the feature-queue all-gather would hang or
    fail if the other ranks ran theirs. Partial batches need no agreement (the collate pads
    them to full size), but emptiness is only known after loading. The flag is exchanged
    host-side in the data path, before the step, over gloo, so it never waits for the GPU
    (unlike an NCCL all-reduce read with ``.item()``); it costs well under a millisecond
    within a node.
    """
    import torch.distributed as dist

    flag = torch.tensor([0 if has_data else 1], dtype=torch.int32)
    dist.all_reduce(flag, group=group)
    return int(flag.item()) == 0


def batch_size_of(batch: Dict[str, Any]) -> int:
    """Samples in a collated batch: dim 0 of its first tensor (0 when it holds no tensor)."""
    if not isinstance(batch, dict):
        return 0
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 0


class EpochBatchIterator(PositionedBatches):
    """Endless batches from the training loader, epoch after epoch, with their position.

    ``position`` is ``(epoch, iteration_in_epoch)`` of the NEXT batch: what a checkpoint
    stores and what :meth:`start_at` takes back (both from
    :class:`~albef_plugin.trainers.batch_position.PositionedBatches`). Each batch's
    ``num_skipped`` (samples the dataset dropped, e.g. unreadable images) is popped and
    counted here.

    Args:
        loader / sampler: from :func:`build_train_loader`.
        on_epoch_end: called as ``on_epoch_end(epoch, num_skipped_in_epoch)`` once an epoch's
            last batch has been drawn (on every rank: it may run a collective).
    """

    restart_each_epoch = True  # each epoch is a new pass of the sampler

    def __init__(self, loader: DataLoader, sampler: ResumableDistributedSampler,
                 on_epoch_end: Optional[Callable[[int, int], None]] = None) -> None:
        batch_size = int(loader.batch_size or 1)
        super().__init__(loader, sampler.num_samples // batch_size, on_epoch_end)  # drop_last
        self.sampler = sampler
        self._flag_group: Any = None

    def next(self) -> Tuple[Tuple[int, int], Dict[str, Any], int]:
        """The next batch.

        A batch that lost samples (``on_unreadable: drop``) is padded back to full size by
        repeating its samples (:func:`pad_batch`), so every batch of every rank has the same
        size: the feature queues (filled in whole global batches) and DDP's all-gathers need
        that, and it takes no communication. A batch whose samples were all dropped (a
        collate returning None or no tensors) comes back as ``{}``; with several processes, it is ``{}`` on every rank as soon as
        it is empty on one (see :func:`every_rank_has_data`), so all ranks skip that step
        together.

        Returns:
            ``(position, batch, num_skipped)``: the batch's own ``(epoch, iteration)``,
            the collated dict (``num_skipped`` removed) and how many samples it lost.
        """
        if self._iterator is None:
            self.sampler.set_epoch(self.epoch, skip=self.iteration * self.batch_size)
            self._iterator = iter(self.loader)
        batch = next(self._iterator)
        if batch is None:  # every sample dropped: the collate counted nothing
            batch = {"num_skipped": self.batch_size}
        num_skipped = int(batch.pop("num_skipped", 0)) if isinstance(batch, dict) else 0
        batch = pad_batch(batch, self.batch_size)
        if self.sampler.num_replicas > 1:
            if self._flag_group is None:
                self._flag_group = flag_group()
            if not every_rank_has_data(batch_size_of(batch) > 0, self._flag_group):
                num_skipped += batch_size_of(batch)  # left out so that all ranks skip together
                batch = {}
        return self._advance(num_skipped), batch, num_skipped


def concat_or_single(datasets: Sequence[Dataset]) -> Dataset:
    """One dataset as is, several as a ``ConcatDataset``."""
    if len(datasets) == 1:
        return datasets[0]
    return torch.utils.data.ConcatDataset(list(datasets))
