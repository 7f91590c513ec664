"""A full disk: the temporary file goes, the previous checkpoint stays, the message says why."""
import errno
import io
import os
import shutil
from collections import namedtuple

import pytest
import torch

from albef_plugin.errors import UserError
from albef_plugin.trainers import checkpointer as checkpointer_module
from albef_plugin.trainers.checkpointer import Checkpointer, DiskFullError

from .toy_components import load_ckpt


def _tmp_files(root):
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".tmp")]


@pytest.fixture
def saved_once(tmp_path):
    checkpointer = Checkpointer(str(tmp_path), max_to_keep=-1)
    checkpointer.save({"x": torch.ones(1)}, update=1)
    return checkpointer


def _assert_disk_full_reported(checkpointer, tmp_path):
    with pytest.raises(DiskFullError) as raised:
        checkpointer.save({"x": torch.zeros(100_000)}, update=2)
    assert f"no space left on device writing {tmp_path / 'models' / 'model_2.ckpt'}" in str(raised.value)
    assert "previous" in str(raised.value) or "no checkpoint was written" in str(raised.value)
    assert isinstance(raised.value, UserError)
    assert _tmp_files(tmp_path) == []
    assert torch.equal(load_ckpt(tmp_path / "current.ckpt")["x"], torch.ones(1))


def test_enospc_from_the_write(saved_once, tmp_path, monkeypatch):
    def full_disk_save(obj, handle):
        handle.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk_save)
    _assert_disk_full_reported(saved_once, tmp_path)


def _disk_fills_after(monkeypatch, writes):
    """Temporary files opened by the checkpointer fail with ENOSPC after ``writes`` writes."""
    real_open = open

    class FillsUp(io.FileIO):
        written = 0

        def write(self, data):
            FillsUp.written += 1
            if FillsUp.written > writes:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    def opening(path, mode="r", *args, **kwargs):
        if str(path).endswith(".tmp") and "w" in mode:
            return FillsUp(path, "wb")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(checkpointer_module, "open", opening, raising=False)


def test_enospc_inside_torch_save(saved_once, tmp_path, monkeypatch):
    """torch.save's C++ writer raises a RuntimeError; the OSError is only in its chain."""
    _disk_fills_after(monkeypatch, 3)
    _assert_disk_full_reported(saved_once, tmp_path)


def test_iostream_error_on_an_almost_full_disk(saved_once, tmp_path, monkeypatch):
    """No errno at all (torch writing to a path): an almost full disk is named as the cause."""
    def iostream_failure(obj, handle):
        handle.write(b"x" * 1000)
        raise RuntimeError("basic_ios::clear: iostream error")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", iostream_failure)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    _assert_disk_full_reported(saved_once, tmp_path)


def test_config_yaml_on_a_full_disk(tmp_path, monkeypatch):
    from albef_plugin.run import save_resolved_config
    from .toy_components import make_config

    (tmp_path / "config.yaml").write_text("old\n")

    _disk_fills_after(monkeypatch, 0)
    with pytest.raises(DiskFullError, match="no space left on device writing .*config.yaml"):
        save_resolved_config(make_config(tmp_path))
    assert (tmp_path / "config.yaml").read_text() == "old\n"
    assert _tmp_files(tmp_path) == []
