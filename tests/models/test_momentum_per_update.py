"""The EMA step runs once per optimizer update; the queue takes every micro-batch."""
from __future__ import annotations

import pytest
import torch

from albef_plugin.train_state import TrainState


def _perturb_online(model) -> None:
    """Make online and momentum weights differ, as after an optimizer step."""
    with torch.no_grad():
        for p in model.visual_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))


def _ema_expected(model, before):
    m = model.momentum
    return [m * b + (1 - m) * p.detach() for b, p in zip(before, model.visual_encoder.parameters())]


@pytest.mark.parametrize("update_frequency", [1, 3])
def test_accumulated_update_applies_ema_once_and_enqueues_every_micro_batch(
        tiny_model, batch_factory, update_frequency):
    model = tiny_model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    state = TrainState()
    for update in range(2):
        _perturb_online(model)
        before = [p.detach().clone() for p in model.visual_encoder_m.parameters()]
        pointer = int(model.queue_ptr)
        for micro in range(update_frequency):  # what Trainer.train_step does
            state.first_micro_batch = micro == 0
            losses = model(batch_factory(batch_size=4, seed=10 * update + micro), state)["losses"]
            (sum(losses.values()) / update_frequency).backward()
        # one EMA step (m, not m^k) toward the online weights of this update
        for expected, ema in zip(_ema_expected(model, before), model.visual_encoder_m.parameters()):
            torch.testing.assert_close(ema, expected)
        # every micro-batch's 4 momentum features entered the queue (16 columns)
        assert int(model.queue_ptr) == (pointer + 4 * update_frequency) % 16
        optimizer.step()
        optimizer.zero_grad()


def test_a_loop_of_its_own_gets_an_ema_step_every_forward(tiny_model, batch):
    """train_state=None (or a TrainState left at its default) keeps the official behaviour."""
    model = tiny_model.train()
    for state in (None, TrainState(alpha=0.2)):
        _perturb_online(model)
        before = [p.detach().clone() for p in model.visual_encoder_m.parameters()]
        model(batch, state)
        for expected, ema in zip(_ema_expected(model, before), model.visual_encoder_m.parameters()):
            torch.testing.assert_close(ema, expected)


def test_later_micro_batches_leave_the_momentum_model_alone(tiny_model, batch):
    model = tiny_model.train()
    _perturb_online(model)
    before = {k: v.clone() for k, v in model.state_dict().items() if "_m." in k}
    model(batch, TrainState(first_micro_batch=False))
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert int(model.queue_ptr) == 4
