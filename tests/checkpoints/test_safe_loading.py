"""Checkpoints are read with weights_only=True; arbitrary pickles are refused unless allowed."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from albef_plugin.models import build_model, load_checkpoint
from albef_plugin.models.checkpoints import (CheckpointError, UnsafeCheckpointError,
                                             safe_torch_load)

from .official_layout import Sizes, official_pretrain_state

SIZES = Sizes()


class Payload:
    """A class pickled by reference: unpickling it means importing and running this module."""

    def __init__(self) -> None:
        self.note = "arbitrary object"


def test_arbitrary_object_is_refused_with_the_file_name_reason_and_flag(tmp_path):
    path = tmp_path / "suspicious.pth"
    torch.save({"model": official_pretrain_state(SIZES), "args": Payload()}, path)
    model = build_model("albef_pretrain", SIZES.model_overrides())
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(model, path)
    message = str(info.value)
    assert str(path) in message and "run arbitrary code" in message
    assert "checkpoint.allow_unsafe_pickle=true" in message
    assert "allow_unsafe_pickle=True" in message
    assert isinstance(info.value, CheckpointError)

    result = load_checkpoint(model, path, strict=True, allow_unsafe_pickle=True)
    assert result.missing == [] and result.unexpected == []


def test_model_config_flag_allows_a_trusted_file(tmp_path):
    path = tmp_path / "trusted.pth"
    torch.save({"model": official_pretrain_state(SIZES), "args": Payload()}, path)
    overrides = {**SIZES.model_overrides(), "checkpoint": str(path)}
    with pytest.raises(UnsafeCheckpointError, match="model_config.<model>.allow_unsafe_pickle"):
        build_model("albef_pretrain", overrides)
    model = build_model("albef_pretrain", {**overrides, "allow_unsafe_pickle": True})
    assert model.pretrained_cfg["text_form"] == "official"


def test_harmless_records_load_without_the_flag(tmp_path):
    """Official / DeiT files store their args and numpy values next to the weights."""
    path = tmp_path / "with_args.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1e-4),
                "epoch": np.int64(29), "best": np.float64(0.5), "table": np.arange(3)}, path)
    loaded = safe_torch_load(path)
    assert loaded["args"].lr == 1e-4 and int(loaded["epoch"]) == 29
    assert loaded["table"].tolist() == [0, 1, 2]


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        safe_torch_load(tmp_path / "nope.pth")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="broken.pth"):
        safe_torch_load(broken)
