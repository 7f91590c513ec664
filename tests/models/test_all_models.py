"""Every model the package registers (as timm's test_models.py): builds tiny, trains a step,
and every trainable parameter gets a gradient except those the model lists by design.

A model registered later in albef_plugin is picked up automatically; it needs
``tiny_overrides()`` and ``dummy_batch()`` (see ``BaseModel``).
"""
from __future__ import annotations

import re

import pytest
import torch

import albef_plugin.models  # noqa: F401  (registers the package's models)
from albef_plugin.models import build_model
from albef_plugin.registry import registry
from albef_plugin.train_state import TrainState


# Models defined in albef_plugin (test plugins registered by other test modules are not).
MODEL_NAMES = sorted(name for name in registry.list_models()
                     if registry.get_model_class(name).__module__.startswith("albef_plugin."))


def test_the_family_is_registered():
    assert "albef_pretrain" in MODEL_NAMES


@pytest.fixture(scope="module", params=MODEL_NAMES)
def trained_step(request):
    """(model, output) after one training forward + backward at the model's tiny size."""
    cls = registry.get_model_class(request.param)
    torch.manual_seed(0)
    model = build_model(request.param, cls.tiny_overrides()).train()
    batch = model.dummy_batch(batch_size=4)
    model.config = None  # forward reads plain attributes only, never the OmegaConf config
    # as the trainer calls it: a TrainState with alpha from the model's own alpha_for
    state = TrainState(iterations_per_epoch=10)
    state.alpha = model.alpha_for(state) if hasattr(model, "alpha_for") else None
    output = model(batch, train_state=state)
    sum(output["losses"].values()).backward()
    return model, output


def test_forward_gives_finite_scalar_losses(trained_step):
    _, output = trained_step
    assert output["losses"], "no losses in training mode"
    for name, loss in output["losses"].items():
        assert loss.dim() == 0 and torch.isfinite(loss), name


def test_every_trainable_parameter_gets_a_finite_gradient(trained_step):
    model, _ = trained_step
    by_design = [re.compile(p) for p in model.params_without_grad]
    no_grad = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None
               and not any(p_.search(name) for p_ in by_design)]
    assert not no_grad, f"trainable parameters without gradient: {no_grad}"
    non_finite = [name for name, p in model.named_parameters()
                  if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not non_finite, non_finite
    # the listed exceptions are real: each names a parameter that indeed gets no gradient
    for pattern in by_design:
        matched = [n for n, p in model.named_parameters() if pattern.search(n) and p.requires_grad]
        assert matched and all(dict(model.named_parameters())[n].grad is None for n in matched), \
            pattern.pattern


def test_momentum_copies_are_frozen(trained_step):
    model, _ = trained_step
    trainable_ema = [n for n, p in model.named_parameters()
                     if n.split(".")[0].endswith("_m") and p.requires_grad]
    assert not trainable_ema, trainable_ema
