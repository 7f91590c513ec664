"""EMA update and feature queues."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from albef_plugin.models.momentum import make_momentum_copy, momentum_update, paired_parameters
from albef_plugin.models.queue import enqueue, register_feature_queues


def test_momentum_copy_is_frozen_and_keeps_ties():
    online = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    online[1].weight = online[0].weight
    copy = make_momentum_copy(online)
    assert all(not p.requires_grad for p in copy.parameters())
    assert copy[1].weight is copy[0].weight
    assert copy[0].weight is not online[0].weight


def test_momentum_update_is_the_ema_formula():
    torch.manual_seed(0)
    online = nn.Linear(3, 2)
    ema = make_momentum_copy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in ema.parameters()]
    momentum_update(*paired_parameters([(online, ema)]), 0.9)
    for old, new, target in zip(before, ema.parameters(), online.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * target)


def test_paired_parameters_rejects_mismatched_copies():
    with pytest.raises(ValueError, match="shape"):
        paired_parameters([(nn.Linear(3, 2), nn.Linear(3, 4))])


def _queue_owner(dim=4, size=8):
    owner = nn.Module()
    register_feature_queues(owner, dim, size, with_idx_queue=True)
    return owner


def test_queues_start_as_unit_columns():
    owner = _queue_owner()
    torch.testing.assert_close(owner.image_queue.norm(dim=0), torch.ones(8))
    assert owner.queue_ptr.dtype == torch.long and owner.queue_ptr.shape == (1,)
    assert (owner.idx_queue == -100).all()


def test_enqueue_writes_at_pointer_and_wraps():
    owner = _queue_owner()
    queues = [owner.image_queue, owner.text_queue, owner.idx_queue]
    for step in range(5):  # 5 batches of 2 in a queue of 8: wraps after 4
        image = torch.full((2, 4), float(step))
        text = -image
        ids = torch.tensor([10 * step, 10 * step + 1])
        enqueue(queues, owner.queue_ptr, [image, text, ids])
    assert owner.queue_ptr.item() == 2  # (5 * 2) % 8
    # columns 0-1 hold the 5th batch, 2-7 the 2nd-4th
    expected_steps = torch.tensor([4, 4, 1, 1, 2, 2, 3, 3], dtype=torch.float)
    torch.testing.assert_close(owner.image_queue, expected_steps.expand(4, 8))
    torch.testing.assert_close(owner.text_queue, -expected_steps.expand(4, 8))
    assert owner.idx_queue.tolist() == [[40, 41, 10, 11, 20, 21, 30, 31]]


def test_enqueue_rejects_queue_not_multiple_of_batch():
    owner = _queue_owner(size=8)
    with pytest.raises(ValueError, match="queue_size=8 is not a multiple"):
        enqueue([owner.image_queue], owner.queue_ptr, [torch.zeros(3, 4)])
