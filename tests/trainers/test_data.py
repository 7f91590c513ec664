"""Resumable sampler, per-sample seeding and the epoch iterator."""
import random

import numpy as np
import pytest
import torch

from albef_plugin.trainers.data import (EpochBatchIterator, ResumableDistributedSampler,
                                        SeededSamples, build_train_loader)

from .toy_components import ToyDataset, toy_collate


def test_sampler_order_is_a_function_of_seed_and_epoch():
    a, b = ResumableDistributedSampler(10, seed=3), ResumableDistributedSampler(10, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    assert [index for _, index in a] != list(range(10))          # shuffled
    assert {epoch for epoch, _ in a} == {2}                       # keys carry the epoch
    b.set_epoch(3)
    assert list(a) != list(b)


def test_sampler_skip_yields_the_tail_of_the_epoch():
    sampler = ResumableDistributedSampler(10, seed=0)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.set_epoch(1, skip=4)
    assert list(sampler) == full[4:] and len(sampler) == 6
    with pytest.raises(ValueError, match="skip"):
        sampler.set_epoch(1, skip=11)


def test_sampler_ranks_partition_the_padded_epoch():
    shares = [ResumableDistributedSampler(7, num_replicas=2, rank=r, seed=1) for r in range(2)]
    indices = [[i for _, i in s] for s in shares]
    assert len(indices[0]) == len(indices[1]) == 4                # padded to 8
    assert set(indices[0]) | set(indices[1]) == set(range(7))


def test_seeded_samples_are_reproducible_and_leave_global_rngs_alone():
    dataset = SeededSamples(ToyDataset(4, []), seed=5)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    expected = (torch.rand(()).item(), random.random(), np.random.rand())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    first = dataset[(1, 2)]["image"]
    assert torch.equal(first, dataset[(1, 2)]["image"])        # same key, same augmentation
    assert not torch.equal(first, dataset[(2, 2)]["image"])    # another epoch, another draw
    assert (torch.rand(()).item(), random.random(), np.random.rand()) == expected


def test_epoch_iterator_positions_skips_and_resume():
    dataset = ToyDataset(10, skip=[3])
    loader, sampler = build_train_loader(dataset, toy_collate, batch_size=3, seed=0, rank=0, world_size=1,
                                         num_workers=0, pin_memory=False, persistent_workers=False)
    ended = []
    batches = EpochBatchIterator(loader, sampler, on_epoch_end=lambda e, n: ended.append((e, n)))
    assert batches.iterations_per_epoch == 3                       # drop_last: 10 // 3
    drawn = [batches.next() for _ in range(4)]
    assert [position for position, _, _ in drawn] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert ended == [(0, sum(n for _, _, n in drawn[:3]))]
    assert all("num_skipped" not in batch for _, batch, _ in drawn)
    # a new iterator started at (1, 1) gives the same batch as the uninterrupted one
    expected = batches.next()[1]
    again = EpochBatchIterator(loader, sampler)
    again.start_at(1, 1)
    position, batch, _ = again.next()
    assert position == (1, 1) and torch.equal(batch["index"], expected["index"])
    assert torch.equal(batch["image"], expected["image"])


def test_loader_refuses_batch_larger_than_the_data():
    with pytest.raises(ValueError, match="training.batch_size=8"):
        build_train_loader(ToyDataset(5, []), toy_collate, batch_size=8, seed=0, rank=0, world_size=1,
                           num_workers=0, pin_memory=False, persistent_workers=False)


def test_seeding_a_sample_never_touches_the_cuda_generators(monkeypatch):
    """A batch loaded in the main process must not reset the model's CUDA random stream."""
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: reseeded.append(seed))
    dataset = SeededSamples(ToyDataset(4, []), seed=5)
    first = dataset[(1, 2)]["image"]
    assert torch.equal(first, dataset[(1, 2)]["image"])
    assert reseeded == []


def test_partial_batches_are_padded_to_full_size_and_empty_ones_stay_empty():
    from albef_plugin.trainers.data import pad_batch

    batch = {"image": torch.arange(2.0).view(2, 1), "image_id": torch.tensor([7, 9]),
             "text": ["a", "b"], "num_skipped": 2}
    padded = pad_batch(batch, 4)
    assert padded["image"].flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    assert padded["image_id"].tolist() == [7, 9, 7, 9]        # repeats keep their image id
    assert padded["text"] == ["a", "b", "a", "b"] and padded["num_skipped"] == 2
    assert pad_batch({}, 4) == {}

    dataset = ToyDataset(8, skip=[0, 1, 2])                     # the first batch loses 3 of 4
    loader, sampler = build_train_loader(dataset, toy_collate, batch_size=4, seed=0, rank=0,
                                         world_size=1, num_workers=0, pin_memory=False,
                                         persistent_workers=False)
    sampler.shuffle = False
    position, first, skipped = EpochBatchIterator(loader, sampler).next()
    assert skipped == 3 and first["index"].tolist() == [3, 3, 3, 3]


def test_shared_position_counting_of_both_batch_iterators():
    """PositionedBatches: the counting EpochBatchIterator and StreamBatchIterator share; only
    the map-style one starts a new loader iterator at an epoch boundary or a start_at."""
    from torch.utils.data import DataLoader

    from albef_plugin.trainers.batch_position import PositionedBatches

    ends = []

    class Counting(PositionedBatches):
        def next(self, num_skipped):
            self._iterator = self._iterator or iter(range(100))
            next(self._iterator)
            return self._advance(num_skipped)

    for restart in (True, False):
        batches = Counting(DataLoader(range(6), batch_size=2), iterations_per_epoch=3,
                           on_epoch_end=lambda epoch, skipped: ends.append((epoch, skipped)))
        batches.restart_each_epoch = restart
        assert [batches.next(n) for n in (1, 0, 2)] == [(0, 0), (0, 1), (0, 2)]
        assert ends == [(0, 3)] and batches.position == (1, 0)
        assert (batches._iterator is None) is restart  # the epoch's end
        assert batches.next(5) == (1, 0) and batches.skipped_in_epoch == 5
        kept = batches._iterator
        batches.start_at(4, 3)  # past the epoch's end: the next epoch
        assert batches.position == (5, 0) and (batches._iterator is kept) is not restart
        batches.close()
        assert batches._iterator is None
        ends.clear()
