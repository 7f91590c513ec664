"""Weight-decay grouping (official ALBEF rule) and the LR schedules (table-driven)."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from albef_plugin.registry import UnknownNameError, registry
from albef_plugin.trainers.optim import build_optimizer, weight_decay_param_groups
from albef_plugin.trainers.schedulers import CosineWarmup, build_lr_scheduler

from .toy_components import ToyModel


def _toy_model():
    return ToyModel(OmegaConf.structured(ToyModel.Config))


def test_weight_decay_groups_follow_official_albef_rule():
    groups = weight_decay_param_groups(_toy_model(), weight_decay=0.02)
    decayed, not_decayed = (set(g["names"]) for g in groups)
    # 0-D temp and 3-D pos_embed / cls_token ARE decayed (official code has no skip list)
    assert decayed == {"embed.weight", "pos_embed", "cls_token", "temp", "head.weight"}
    assert not_decayed == {"embed.bias", "norm.weight", "norm.bias", "head.bias"}
    assert [g["weight_decay"] for g in groups] == [0.02, 0.0]
    # frozen momentum parameters are not handed to the optimizer at all
    assert not any(name.startswith("head_m") for name in decayed | not_decayed)


def test_no_weight_decay_keys_of_the_model_are_honoured():
    model = _toy_model()
    model.no_weight_decay_keys = lambda: {"temp"}
    decayed, not_decayed = (set(g["names"]) for g in weight_decay_param_groups(model, 0.1))
    assert "temp" in not_decayed and "temp" not in decayed


def test_adam_w_from_config():
    model = _toy_model()
    config = OmegaConf.create({"type": "adam_w", "params": {"lr": 3e-4, "weight_decay": 0.05,
                                                            "betas": [0.8, 0.9], "eps": 1e-6}})
    optimizer = build_optimizer(model, config)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["lr"] == 3e-4 and optimizer.defaults["betas"] == (0.8, 0.9)
    assert optimizer.defaults["foreach"] is True  # CPU
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    with pytest.raises(KeyError, match="optimizer.params.*momentum"):
        build_optimizer(model, OmegaConf.create({"type": "adam_w", "params": {"lr": 1, "momentum": 0.9}}))
    with pytest.raises(UnknownNameError, match="adam_w"):
        build_optimizer(model, OmegaConf.create({"type": "adam_ww", "params": {"lr": 1}}))


COSINE = dict(lr=1.0, max_updates=12, warmup_updates=2, warmup_lr=0.1, min_lr=0.2)


@pytest.mark.parametrize("update, expected", [
    (0, 0.1),                                         # warm-up starts at warmup_lr
    (1, 0.55),                                        # halfway up
    (2, 1.0),                                         # peak at the end of warm-up
    (7, 0.2 + 0.5 * 0.8 * (1 + math.cos(math.pi * 0.5))),  # halfway down the cosine
    (12, 0.2),                                        # min_lr at max_updates
    (50, 0.2),                                        # held afterwards
])
def test_cosine_warmup_table(update, expected):
    assert CosineWarmup(**COSINE)(update) == pytest.approx(expected)


def test_cosine_without_warmup_starts_at_peak_and_constant_is_flat():
    assert CosineWarmup(lr=0.5, max_updates=10)(0) == pytest.approx(0.5)
    constant = registry.get_scheduler_class("constant")(lr=0.3)
    assert [constant(u) for u in (0, 5, 10**6)] == [0.3, 0.3, 0.3]


def test_lr_scheduler_sets_optimizer_groups_and_is_a_function_of_the_update():
    model = _toy_model()
    optimizer = build_optimizer(model, OmegaConf.create({"type": "adam_w", "params": {"lr": 1.0}}))
    optimizer.param_groups[1]["lr_scale"] = 0.5
    config = OmegaConf.create({"type": "cosine_warmup", "params": {"warmup_updates": 2, "warmup_lr": 0.1,
                                                                  "min_lr": 0.2}})
    scheduler = build_lr_scheduler(optimizer, config, lr=1.0, max_updates=12, updates_per_epoch=3)
    scheduler.step(1)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.55, 0.275])
    other = build_lr_scheduler(optimizer, config, lr=1.0, max_updates=12, updates_per_epoch=3)
    other.load_state_dict(scheduler.state_dict())
    assert other.get_last_lr() == pytest.approx(0.55)
    with pytest.raises(KeyError, match="scheduler.params.*warmup_steps"):
        build_lr_scheduler(optimizer, OmegaConf.create({"type": "cosine_warmup",
                                                        "params": {"warmup_steps": 3}}),
                           lr=1.0, max_updates=5, updates_per_epoch=1)
