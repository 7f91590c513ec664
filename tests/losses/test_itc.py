"""ITC loss: plain cross-entropy at alpha 0, soft targets with momentum distillation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from albef_plugin.losses.itc import itc_loss


def _sims(batch=4, queue=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, batch + queue, generator=gen) * 3 for _ in range(4)]


def test_alpha_zero_is_cross_entropy_on_the_diagonal():
    sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m = _sims()
    labels = torch.arange(4)
    expected = (F.cross_entropy(sim_i2t, labels) + F.cross_entropy(sim_t2i, labels)) / 2
    torch.testing.assert_close(itc_loss(sim_i2t, sim_t2i), expected)
    # momentum sims are ignored when alpha is 0
    torch.testing.assert_close(itc_loss(sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m, 0.0), expected)


def test_soft_targets_mix_momentum_softmax_and_one_hot():
    sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m = _sims()
    alpha = 0.4
    one_hot = torch.zeros_like(sim_i2t)
    one_hot[torch.arange(4), torch.arange(4)] = 1

    def direction(sim, sim_m):
        q = alpha * sim_m.softmax(1) + (1 - alpha) * one_hot
        return -(q * sim.log_softmax(1)).sum(1).mean()

    expected = (direction(sim_i2t, sim_i2t_m) + direction(sim_t2i, sim_t2i_m)) / 2
    got = itc_loss(sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m, alpha)
    torch.testing.assert_close(got, expected)
    # = (1 - alpha) * CE + alpha * soft-CE: differs from plain CE
    assert not torch.allclose(got, itc_loss(sim_i2t, sim_t2i))


def test_multi_positive_targets_and_gradient_only_to_online():
    sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m = _sims()
    sim_i2t.requires_grad_(True)
    sim_i2t_m.requires_grad_(True)
    targets = torch.zeros_like(sim_t2i)
    targets[:, :4] = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.]])
    targets = targets / targets.sum(1, keepdim=True)
    loss = itc_loss(sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m, 0.0, targets=targets)
    expected = (-(targets * sim_i2t.log_softmax(1)).sum(1).mean()
                - (targets * sim_t2i.log_softmax(1)).sum(1).mean()) / 2
    torch.testing.assert_close(loss, expected)
    itc_loss(sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m, 0.5).backward()
    assert sim_i2t.grad is not None and sim_i2t_m.grad is None


def test_shape_errors():
    sim = torch.randn(4, 10)
    with pytest.raises(ValueError, match="same shape"):
        itc_loss(sim, torch.randn(4, 9))
    with pytest.raises(ValueError, match="targets"):
        itc_loss(sim, sim, targets=torch.ones(4, 9))
