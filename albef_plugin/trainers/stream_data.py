"""The training loader for an endless stream (:class:`~albef_plugin.datasets.streams.SampleStream`).

The map-style path (``trainers/data.py``) shuffles indices with a sampler; a stream has no
indices, so its position is what each DataLoader worker (a *slot*) has consumed:

* every item carries its slot's state after it; :class:`StreamCollate` keeps the state of
  the batch's last item, so each batch says where its slot stands;
* :class:`StreamBatchIterator` records the state of every slot as batches arrive (which
  is exactly what the trainer consumed, whatever the workers prefetched) and the slot of
  the next batch (the loader takes batches from its workers in round-robin order);
* a checkpoint stores that per-rank state (:func:`gather_stream_state`, a collective),
  and :meth:`StreamBatchIterator.load_stream_state` gives it back to the stream before
  the workers start.

Granularity: with the same world size and ``num_workers`` the resumed stream continues
at the next *sample*: nothing is repeated or skipped. With a different world size or
worker count the slots no longer match; the stream then continues at the *shard* level
from the earliest shard any old slot was still reading: some shards are read again,
none is skipped.

An epoch is ``samples_per_epoch // (batch_size x world_size)`` batches on every rank. The
stream itself never ends, so epochs do not restart the workers.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from albef_plugin.config.loader import ConfigError
from albef_plugin.datasets.streams import MapStyleSource, SampleStream, StreamSource
from albef_plugin.distributed import get_rank, get_world_size, is_distributed
from albef_plugin.trainers.batch_position import PositionedBatches
from albef_plugin.trainers.preemption import init_signal_free_worker

__all__ = ["StreamCollate", "StreamBatchIterator", "build_stream_batches", "gather_stream_state",
           "mix_training_datasets"]

logger = logging.getLogger(__name__)


class StreamCollate:
    """Wraps a collate function: strips each item's ``_stream`` and puts the batch's last one
    on the batch as ``_stream``."""

    def __init__(self, collate_fn: Optional[Callable]) -> None:
        self.collate_fn = collate_fn or torch.utils.data.default_collate

    def __call__(self, samples: List[Dict[str, Any]]) -> Any:
        position = samples[-1]["_stream"]
        for sample in samples:
            sample.pop("_stream", None)
        batch = self.collate_fn(samples)
        batch["_stream"] = position
        return batch


class StreamBatchIterator(PositionedBatches):
    """Batches of a stream with their position; the interface of ``EpochBatchIterator``
    (``position``, ``start_at``, ``next``, ``close``, ``epoch``, ``iteration``, ...: the
    counting both share is :class:`~albef_plugin.trainers.batch_position.PositionedBatches`).
    ``start_at`` sets the epoch counters only; the stream's own position comes from
    :meth:`load_stream_state`."""

    restart_each_epoch = False  # the stream never ends: epochs do not restart the workers

    def __init__(self, loader: DataLoader, stream: SampleStream, world_size: int,
                 on_epoch_end: Optional[Callable[[int, int], None]] = None) -> None:
        batch_size = int(loader.batch_size or 1)
        iterations_per_epoch = stream.samples_per_epoch // (batch_size * world_size)
        if iterations_per_epoch < 1:
            raise ConfigError(f"samples_per_epoch={stream.samples_per_epoch} of the training stream is "
                             f"less than one global batch ({batch_size} x {world_size} processes): "
                             f"raise the dataset's samples_per_epoch or lower training.batch_size.")
        super().__init__(loader, iterations_per_epoch, on_epoch_end)
        self.stream = stream
        self.sampler = stream  # what decides the order (its ``seed`` goes into checkpoints)
        self.world_size = world_size
        self.slot_states: Dict[int, Dict[str, Any]] = {}
        self.next_slot = 0

    # ------------------------------------------------------------ stream state
    def rank_state(self) -> Dict[str, Any]:
        """This rank's position: per-slot states, the next slot, and the geometry."""
        return {"slots": dict(self.slot_states), "next_slot": self.next_slot,
                "slots_per_rank": self.stream.slots_per_rank, "world_size": self.world_size}

    def load_stream_state(self, ranks: Optional[List[Dict[str, Any]]]) -> None:
        """Continue after the checkpoint's per-rank states (see the module doc for granularity)."""
        if self._iterator is not None:
            raise RuntimeError("load_stream_state() must come before the first batch")
        if not ranks:
            logger.warning("the checkpoint holds no stream position (it was not trained on a "
                           "stream): the stream starts at its beginning")
            return
        same = (len(ranks) == self.world_size
                and all(r["slots_per_rank"] == self.stream.slots_per_rank for r in ranks))
        if same:
            mine = ranks[get_rank()]
            self.slot_states = {int(k): v for k, v in mine["slots"].items()}
            self.next_slot = int(mine["next_slot"])
            return
        starts = _earliest_positions(ranks, self.stream.sources)
        logger.warning("the stream was saved by %d process(es) x %d worker(s), this run has %d x %d: "
                       "it continues from the earliest unfinished shard of each source (some "
                       "samples are read again, none is skipped)", len(ranks),
                       ranks[0]["slots_per_rank"], self.world_size, self.stream.slots_per_rank)
        fresh = (starts[0] if len(starts) == 1
                 else {"draws": 0, "sources": [start for start in starts]})
        self.slot_states = {slot: fresh for slot in range(self.stream.slots_per_rank)}
        self.next_slot = 0

    # ------------------------------------------------------------------ batches
    def next(self) -> Tuple[Tuple[int, int], Dict[str, Any], int]:
        """``(position, batch, num_skipped)`` like ``EpochBatchIterator.next``."""
        if self._iterator is None:
            self.stream.resume_from(self.slot_states, rotation=self.next_slot)
            self._iterator = iter(self.loader)
        batch = next(self._iterator)
        slot, state = batch.pop("_stream")
        self.slot_states[slot] = state
        self.next_slot = (slot + 1) % self.stream.slots_per_rank
        num_skipped = int(batch.pop("num_skipped", 0))
        return self._advance(num_skipped), batch, num_skipped


def _earliest_positions(ranks: List[Dict[str, Any]], sources: List[StreamSource]) -> List[Dict[str, Any]]:
    """Per source, a fresh state starting at the earliest global position any old slot is in."""
    num_slots = len(ranks) * ranks[0]["slots_per_rank"]
    earliest: List[Optional[int]] = [None] * len(sources)
    for rank, rank_state in enumerate(ranks):
        for local in range(rank_state["slots_per_rank"]):
            state = rank_state["slots"].get(local) or rank_state["slots"].get(str(local))
            per_source = (state or {}).get("sources") if len(sources) > 1 else [state]
            per_source = per_source or [None] * len(sources)
            slot = rank * rank_state["slots_per_rank"] + local
            for i, source_state in enumerate(per_source):
                g = sources[i].earliest_position(source_state, slot, num_slots)
                earliest[i] = g if earliest[i] is None else min(earliest[i], g)  # type: ignore[type-var]
    return [{"start": int(g or 0)} for g in earliest]


def build_stream_batches(stream: SampleStream, collate_fn: Optional[Callable], *, batch_size: int,
                         seed: int, rank: int, world_size: int, num_workers: int, pin_memory: bool,
                         on_epoch_end: Optional[Callable[[int, int], None]] = None) -> StreamBatchIterator:
    """The loader of ``stream`` for this rank, wrapped in a :class:`StreamBatchIterator`.

    Workers stay alive for the whole run (the stream never ends), so ``persistent_workers``
    does not apply.
    """
    stream.configure(rank, world_size, num_workers, seed)
    # the loader's own generator draws the workers' base seed: creating the iterator (at the
    # first batch, also after a resume) must not consume the model's random stream
    loader = DataLoader(stream, batch_size=batch_size, collate_fn=StreamCollate(collate_fn),
                        num_workers=num_workers, pin_memory=pin_memory, drop_last=True,
                        generator=torch.Generator().manual_seed(seed),
                        worker_init_fn=init_signal_free_worker if num_workers else None)
    return StreamBatchIterator(loader, stream, world_size, on_epoch_end=on_epoch_end)


def gather_stream_state(batches: Any) -> Optional[List[Dict[str, Any]]]:
    """Every rank's stream position, in rank order (a collective: call on all ranks);
    None when the training data is not a stream."""
    if not isinstance(batches, StreamBatchIterator):
        return None
    mine = batches.rank_state()
    if not is_distributed() or get_world_size() == 1:
        return [mine]
    states: List[Any] = [None] * get_world_size()
    dist.all_gather_object(states, mine)
    return states


def mix_training_datasets(parts: Sequence[Dataset], names: Sequence[str],
                          weights: Sequence[Optional[float]]) -> Optional[SampleStream]:
    """The training datasets as one stream mixed by ``weights``, when any of them is a stream.

    A map-style dataset joins as an endless shuffled stream of its samples; an epoch is then
    the sum of the parts' epochs (each stream's ``samples_per_epoch``, each dataset's length).
    Weights all None (the default) mean "by size": each part's epoch share, so every sample
    of the union is equally likely, as in a shuffled concatenation. Returns None when no
    part is a stream: map-style datasets alone are concatenated.
    """
    given = {name: w for name, w in zip(names, weights) if w is not None}
    if not any(isinstance(part, SampleStream) for part in parts):
        if given:
            logger.warning("dataset weights %s are ignored: weights mix a shard stream with other "
                           "datasets; map-style datasets alone are concatenated", given)
        return None
    if given and len(given) != len(parts):
        missing = [f"dataset_config.{n}.weight" for n, w in zip(names, weights) if w is None]
        raise ConfigError(f"set the sampling weight of every training dataset or of none: "
                          f"{', '.join(missing)} is null while {given} is set.")
    sources: List[StreamSource] = []
    source_weights: List[float] = []
    for part, name, weight in zip(parts, names, weights):
        if weight is None:
            weight = len(part)  # type: ignore[arg-type]
        if float(weight) <= 0:
            raise ConfigError(f"dataset_config.{name}.weight={weight}: must be > 0.")
        if isinstance(part, SampleStream):
            total = sum(part.weights)
            sources.extend(part.sources)
            source_weights.extend(float(weight) * w / total for w in part.weights)
        else:
            sources.append(MapStyleSource(part, name=name))
            source_weights.append(float(weight))
    if len(parts) > 1:
        logger.info("training stream: %s", ", ".join(
            f"{s.name} (weight {w:g}, {s.epoch_samples} samples per epoch)"
            for s, w in zip(sources, source_weights)))
    return SampleStream(sources, source_weights)
