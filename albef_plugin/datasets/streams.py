"""Endless, resumable training streams: tar shards, map-style datasets, and mixes of them.

How a stream is split. Every DataLoader worker of every rank is one *slot*
(``num_slots = world_size x num_workers``). A source deals its units (shards, or dataset
indices) from one endless global sequence: pass ``p`` is a permutation of all units seeded by
``(seed, p)``; global position ``g`` is unit ``perm_{g // n}[g % n]``; slot ``s`` reads the
positions ``start + s, start + s + num_slots, start + s + 2 num_slots, ...``. No slot ever
runs dry, whatever the number of shards, so every rank yields the same number of batches
per epoch, where an *epoch* of a stream is a configured number of samples
(``samples_per_epoch``). Fewer shards than slots works, but then one shard is read by
several slots within a pass.

Position. A slot's state (for shards: the slot's shards being read, as ``[k, offset]`` =
its ``k``-th shard, ``offset`` samples in, plus the next ``k`` and the draw count;
``{"start", "k"}`` for a map-style dataset; the draw count and one state per source for a
mix) is attached to every item, so the trainer knows exactly what it consumed, and a
resumed stream continues at the next sample: no shard, and no sample, is repeated or
skipped (see :mod:`albef_plugin.trainers.stream_data`).

Randomness. Each item's augmentation and caption choice are seeded from ``(seed, source,
g, offset)``; which open shard gives the next sample, and which source in a mix, are drawn
from ``(seed, slot, draw)``: the stream does not depend on which worker reads what, nor on
what ran before.
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from albef_plugin.datasets.images import ON_UNREADABLE_CHOICES
from albef_plugin.datasets.shards import ShardError, decode_pair, read_shard

__all__ = ["StreamSource", "ShardSource", "MapStyleSource", "SampleStream", "seeded_words"]

logger = logging.getLogger(__name__)

State = Dict[str, Any]
# Different shards that a slot finds empty or broken in a row before the stream gives up
# (or all of them, when fewer): that means the shard list is wrong, which deserves an
# error, not a silent spin. Counting distinct shards keeps a single broken shard among
# few from ever tripping it, however often the slot meets it.
_MAX_DISTINCT_BAD_SHARDS = 64


def seeded_words(*words: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy's SeedSequence hash)."""
    state = np.random.SeedSequence([int(w) % (1 << 63) for w in words]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _call_seeded(seed: int, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` with python / numpy / torch seeded from ``seed``.

    In a worker the generators belong to the data alone; in the main process they are
    saved and restored, so the data never shifts the model's random stream.
    """
    def call() -> Any:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        # the CPU generator only: data transforms run on the CPU, and torch.manual_seed would
        # also queue lazy CUDA seeding with a captured stack trace (~0.4 ms per sample)
        torch.random.default_generator.manual_seed(seed)
        return fn(*args)

    if torch.utils.data.get_worker_info() is not None:
        return call()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            return call()
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class _PassOrder:
    """The endless unit sequence of a source: ``unit(g)`` (one cached permutation per pass)."""

    def __init__(self, num_units: int, seed: int, shuffle: bool) -> None:
        self.num_units, self.seed, self.shuffle = num_units, seed, shuffle
        self._pass: Optional[int] = None
        self._perm: Optional[np.ndarray] = None

    def unit(self, g: int) -> int:
        pass_index, position = divmod(g, self.num_units)
        if not self.shuffle:
            return position
        if pass_index != self._pass:
            rng = np.random.default_rng([self.seed, pass_index])
            self._perm, self._pass = rng.permutation(self.num_units), pass_index
        return int(self._perm[position])  # type: ignore[index]


class StreamSource:
    """One source of a stream. ``items(slot, num_slots, state)`` yields ``(item, state_after)``
    forever; items are dicts with ``num_skipped`` (bad samples met since the previous item)."""

    name: str = "source"
    epoch_samples: int = 0  # this source's share of an epoch

    def items(self, slot: int, num_slots: int, state: Optional[State]) -> Iterator[Tuple[Dict[str, Any], State]]:
        raise NotImplementedError

    def earliest_position(self, state: Optional[State], slot: int, num_slots: int) -> int:
        """Global position ``g`` of the earliest unit a slot has not finished."""
        state = state or {}
        return int(state.get("start", 0)) + int(state.get("k", 0)) * num_slots + slot


@dataclass
class _Lane:
    """One shard a slot is reading: its ``k`` among the slot's shards, global position ``g``,
    samples read (``offset``; -1 once the shard broke), and the reader."""

    k: int
    offset: int
    g: int
    url: str
    samples: Iterator[Tuple[int, Optional[Dict[str, Any]], Optional[str]]]
    from_start: bool
    yielded: bool = False


class ShardSource(StreamSource):
    """Image-caption pairs from tar shards (see :mod:`albef_plugin.datasets.shards`).

    A slot reads ``open_shards`` of its shards at once (lanes) and takes each sample from a
    lane drawn at random (seeded by ``(seed, slot, draw)``): a batch mixes several shards
    instead of holding consecutive samples of one. A lane that ends opens the slot's next
    shard. The state is exact: ``{"start", "next_k", "lanes": [[k, offset], ...], "draws"}``.

    Args:
        shards: shard paths / URLs (already expanded).
        transform: PIL image -> tensor.
        samples_per_epoch: this source's contribution to an epoch (> 0).
        on_unreadable: ``error`` raises on the first bad shard or sample; ``substitute`` and
            ``drop`` both skip it and count it (the next good sample takes its place).
        open_shards: shards read at once by one slot (>= 1).
    """

    def __init__(self, shards: Sequence[str], transform: Any, samples_per_epoch: int,
                 on_unreadable: str = "substitute", shuffle_shards: bool = True, open_shards: int = 4,
                 name: str = "shards") -> None:
        if not shards:
            raise ValueError(f"{name}: the shard list is empty")
        if on_unreadable not in ON_UNREADABLE_CHOICES:
            raise ValueError(f"on_unreadable={on_unreadable!r}; choose one of {', '.join(ON_UNREADABLE_CHOICES)}.")
        if samples_per_epoch <= 0:
            raise ValueError(f"{name}: samples_per_epoch={samples_per_epoch} must be > 0")
        if open_shards < 1:
            raise ValueError(f"{name}: open_shards={open_shards} must be >= 1")
        self.open_shards = int(open_shards)
        self.shards = list(shards)
        folders = {os.path.dirname(s): None for s in self.shards}  # in order of appearance
        self._folder_of = {folder: i for i, folder in enumerate(folders)}
        self.transform = transform
        self.epoch_samples = int(samples_per_epoch)
        self.seed = 0  # set by SampleStream.configure()
        self.on_unreadable = on_unreadable
        self.shuffle_shards = shuffle_shards
        self.name = name

    def __len__(self) -> int:
        return self.epoch_samples

    def _bad(self, what: str) -> None:
        if self.on_unreadable == "error":
            raise ShardError(f"{what}. Fix or remove it, or set the dataset's on_unreadable to "
                             f"'substitute' or 'drop' to skip such shards and samples.")
        logger.warning("skipping %s; counted in batch['num_skipped']", what)

    def earliest_position(self, state: Optional[State], slot: int, num_slots: int) -> int:
        state = state or {}
        ks = [int(k) for k, _ in state.get("lanes", [])] or [int(state.get("next_k", 0))]
        return int(state.get("start", 0)) + min(ks) * num_slots + slot

    def items(self, slot: int, num_slots: int, state: Optional[State]) -> Iterator[Tuple[Dict[str, Any], State]]:
        state = dict(state or {})
        start, next_k, draws = int(state.get("start", 0)), int(state.get("next_k", 0)), int(state.get("draws", 0))
        order = _PassOrder(len(self.shards), seeded_words(self.seed, 1), self.shuffle_shards)

        def open_lane(k: int, offset: int) -> _Lane:
            g = start + k * num_slots + slot
            url = self.shards[order.unit(g)]
            samples = read_shard(url, skip=offset) if offset >= 0 else iter(())  # -1: it broke
            return _Lane(k, offset, g, url, samples, from_start=offset == 0)

        if state.get("lanes"):
            lanes = [open_lane(int(k), int(offset)) for k, offset in state["lanes"]]
        else:
            lanes = [open_lane(next_k + j, 0) for j in range(self.open_shards)]
            next_k += self.open_shards
        pending, bad_in_a_row = 0, set()
        while True:
            j = int(np.random.default_rng([self.seed, 6, slot, draws]).integers(len(lanes)))
            draws += 1
            lane = lanes[j]
            position, raw, problem = next(lane.samples, (None, None, None))
            if position is None:  # the lane's shard is finished: open the slot's next one
                if lane.yielded or not lane.from_start:
                    bad_in_a_row = set()
                else:
                    bad_in_a_row.add(lane.url)
                    if len(bad_in_a_row) >= min(_MAX_DISTINCT_BAD_SHARDS, len(self.shards)):
                        raise ShardError(f"{len(bad_in_a_row)} different shards in a row gave no readable "
                                         f"sample (the last: {lane.url}): the shard list is probably wrong.")
                lanes[j] = open_lane(next_k, 0)
                next_k += 1
                continue
            lane.offset = position
            if problem is not None:  # the rest of this shard is lost; a resume must not reopen it
                lane.offset = -1
                self._bad(problem)
                pending += 1
                continue
            item = self._decode(raw, lane.url, lane.g, position)  # type: ignore[arg-type]
            if item is None:
                pending += 1
                continue
            item["num_skipped"], pending, lane.yielded = pending, 0, True
            yield item, {"start": start, "next_k": next_k, "draws": draws,
                         "lanes": [[other.k, other.offset] for other in lanes]}

    def _decode(self, raw: Dict[str, Any], url: str, g: int, position: int) -> Optional[Dict[str, Any]]:
        seed = seeded_words(self.seed, 2, g, position)
        try:
            return _call_seeded(seed, decode_pair, raw, self.transform, lambda n: int(torch.randint(n, ())),
                                self._folder_of[os.path.dirname(url)], len(self._folder_of))
        except Exception as exc:  # PIL / JSON / UTF-8 errors of one sample
            self._bad(f"sample {raw.get('__key__')!r} of shard {url} ({type(exc).__name__}: {exc})")
            return None


class MapStyleSource(StreamSource):
    """A map-style dataset (e.g. pretrain JSON) dealt as an endless shuffled stream.

    ``dataset[i]`` may return None (``on_unreadable: drop``): it is counted and skipped.
    """

    def __init__(self, dataset: Dataset, shuffle: bool = True, name: str = "dataset") -> None:
        self.dataset = dataset
        self.epoch_samples = len(dataset)  # type: ignore[arg-type]
        if self.epoch_samples <= 0:
            raise ValueError(f"{name}: the training dataset is empty")
        self.seed, self.shuffle, self.name = 0, shuffle, name  # seed: set by SampleStream.configure()

    def items(self, slot: int, num_slots: int, state: Optional[State]) -> Iterator[Tuple[Dict[str, Any], State]]:
        state = dict(state or {})
        start, k = int(state.get("start", 0)), int(state.get("k", 0))
        order = _PassOrder(self.epoch_samples, seeded_words(self.seed, 3), self.shuffle)
        pending = 0
        while True:
            g = start + k * num_slots + slot
            k += 1
            item = _call_seeded(seeded_words(self.seed, 4, g), self.dataset.__getitem__, order.unit(g))
            if item is None:
                pending += 1
                continue
            item["num_skipped"] = int(item.get("num_skipped", 0)) + pending
            pending = 0
            yield item, {"start": start, "k": k}


class SampleStream(IterableDataset):
    """The training stream: one source, or several mixed by weight (see the module doc).

    The trainer's loader calls :meth:`configure` (rank, world size, workers) and
    :meth:`resume_from` before iterating. Items carry ``"_stream": (local_slot, state)``.

    Args:
        sources: the sources; with several, each item comes from source ``i`` with
            probability ``weights[i] / sum(weights)``, drawn independently per item.
        weights: sampling weights (> 0), one per source.
        samples_per_epoch: samples of one epoch over all ranks (default: the sum of the
            sources' ``epoch_samples``).
    """

    def __init__(self, sources: Sequence[StreamSource], weights: Optional[Sequence[float]] = None,
                 samples_per_epoch: Optional[int] = None) -> None:
        super().__init__()
        self.sources = list(sources)
        weights = [1.0] * len(self.sources) if weights is None else [float(w) for w in weights]
        if len(weights) != len(self.sources) or any(w <= 0 for w in weights):
            raise ValueError(f"stream weights {weights} must be > 0, one per source "
                             f"({', '.join(s.name for s in self.sources)})")
        total = sum(weights)
        self.cumulative = np.cumsum([w / total for w in weights]).tolist()
        self.weights = weights
        self.seed = 0  # set by configure()
        self.samples_per_epoch = int(samples_per_epoch or sum(s.epoch_samples for s in self.sources))
        self.rank, self.world_size, self.num_workers = 0, 1, 0
        self.slot_states: Dict[int, State] = {}
        self.rotation = 0

    def __len__(self) -> int:
        return self.samples_per_epoch

    @property
    def slots_per_rank(self) -> int:
        return max(1, self.num_workers)

    def configure(self, rank: int, world_size: int, num_workers: int, seed: int) -> None:
        """Where this copy runs, and the seed of the whole stream (the same on every rank)."""
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.seed = seed
        for index, source in enumerate(self.sources):
            source.seed = seeded_words(seed, 100 + index)

    def resume_from(self, slot_states: Dict[int, State], rotation: int) -> None:
        """Start each local slot after ``slot_states[slot]``; worker ``w`` plays slot
        ``(w + rotation) % slots_per_rank`` so the loader's round-robin continues in order."""
        self.slot_states = {int(k): v for k, v in slot_states.items()}
        self.rotation = int(rotation)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        local = (worker + self.rotation) % self.slots_per_rank
        slot = self.rank * self.slots_per_rank + local
        num_slots = self.world_size * self.slots_per_rank
        for item, state in self._items(slot, num_slots, self.slot_states.get(local)):
            item["_stream"] = (local, state)
            yield item

    def _items(self, slot: int, num_slots: int, state: Optional[State]) -> Iterator[Tuple[Dict[str, Any], State]]:
        if len(self.sources) == 1:
            yield from self.sources[0].items(slot, num_slots, state)
            return
        state = state or {}
        draws = int(state.get("draws", 0))
        states: List[Optional[State]] = list(state.get("sources", [None] * len(self.sources)))
        iterators = [s.items(slot, num_slots, st) for s, st in zip(self.sources, states)]
        num_sources = len(self.sources)
        while True:
            u = np.random.default_rng([self.seed, 5, slot, draws]).random()
            index = min(int(np.searchsorted(self.cumulative, u, side="right")), num_sources - 1)
            item, states[index] = next(iterators[index])
            draws += 1
            # ids of different sources never collide (same id = same image for ITM)
            item["image_id"] = int(item["image_id"]) * num_sources + index
            yield item, {"draws": draws, "sources": list(states)}
