"""tools/convert_checkpoint.py never replaces an existing output folder silently."""
from __future__ import annotations

import pytest
import torch

from .official_layout import Sizes, official_pretrain_state
from .test_convert_checkpoint import HEADS, convert_main


def test_existing_destination_needs_overwrite(tmp_path, capsys):
    source = tmp_path / "ALBEF.pth"
    torch.save({"model": official_pretrain_state(Sizes(), grid=6)}, source)
    destination = tmp_path / "converted"
    destination.mkdir()
    (destination / "config.yaml").write_text("someone else's\n")
    convert = convert_main()

    with pytest.raises(SystemExit) as refused:
        convert([str(source), str(destination), *HEADS])
    assert refused.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and "--overwrite" in error[0]
    assert (destination / "config.yaml").read_text() == "someone else's\n"

    convert([str(source), str(destination), *HEADS, "--overwrite"])
    assert "albef_pretrain" in (destination / "config.yaml").read_text()
    assert (destination / "model.safetensors").is_file()
