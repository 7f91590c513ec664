"""Device / precision resolution and the single autocast context."""
import pytest
import torch

from albef_plugin.trainers.precision import (build_grad_scaler, get_autocast, resolve_device,
                                             resolve_precision)

from .toy_components import make_config, read_records, run_trainer

CPU = torch.device("cpu")


@pytest.mark.parametrize("requested, expected", [("auto", "fp32"), ("fp32", "fp32"), ("bf16", "bf16"),
                                                 ("fp16", "fp16")])
def test_resolve_precision_on_cpu(requested, expected):
    assert resolve_precision(requested, CPU) == expected


def test_bad_precision_and_device_names_are_refused():
    with pytest.raises(ValueError, match="training.precision='fp8'"):
        resolve_precision("fp8", CPU)
    with pytest.raises(ValueError, match="training.device='tpu'"):
        resolve_device("tpu")
    assert resolve_device("cpu") == CPU


def test_autocast_and_scaler_follow_the_precision():
    layer = torch.nn.Linear(4, 4)
    with get_autocast("bf16", CPU):
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    with get_autocast("fp32", CPU):
        assert layer(torch.randn(2, 4)).dtype == torch.float32
    assert build_grad_scaler("fp16", CPU).is_enabled()
    assert not build_grad_scaler("bf16", CPU).is_enabled()


def test_bf16_training_runs_on_cpu(tmp_path):
    run_trainer(make_config(tmp_path, "training.max_updates=2", "training.precision=bf16"))
    assert all(r["total_loss"] > 0 for r in read_records(tmp_path, "train"))
