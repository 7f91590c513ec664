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


@pytest.mark.parametrize("content, reason", [
    (b"", "is empty (0 bytes)"),
    (bytes(range(256)) * 40, "neither a torch zip archive nor a valid pickle"),
    (b"\x80\x02garbage after a pickle header", "neither a torch zip archive nor a valid pickle"),
])
def test_garbage_is_corrupt_not_unsafe(tmp_path, content, reason):
    """A corrupt file is named as such; the message never suggests unsafe loading."""
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        safe_torch_load(path)
    assert not isinstance(info.value, UnsafeCheckpointError)
    assert reason in str(info.value) and str(path) in str(info.value)
    assert "allow_unsafe_pickle" not in str(info.value)


def test_random_bytes_are_corrupt_and_a_legacy_pickle_with_objects_is_unsafe(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError) as info:
        safe_torch_load(path)
    assert not isinstance(info.value, UnsafeCheckpointError)
    legacy = tmp_path / "legacy.pth"
    torch.save({"args": Payload()}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError):
        safe_torch_load(legacy)
