"""Every user error ends in one ``error:`` line and exit code 2, through the real CLI entry.

Most cases call ``albef_plugin.run.main(argv)`` in this process (each fails at start-up, in
well under a second); one case goes through ``tools/run.py`` in a subprocess to check the
console script end to end.
"""
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from albef_plugin.registry import registry
from albef_plugin.run import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "projects/albef/configs/demo/pretrain.yaml")
PAPER = str(ROOT / "projects/albef/configs/pretrain/albef_4m.yaml")


@registry.register_model("toy_in_batch_negatives", override=True)
class InBatchNegativesToy:
    """Stands for a model with in-batch ITC / ITM negatives: it cannot learn from 1 sample."""

    min_batch_size_per_rank = 2

    @dataclass
    class Config:
        hidden: int = 4

    @classmethod
    def config_path(cls):
        return None


def _error_line(capsys, argv):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("overrides, needles", [
    (["optimizer.params.bogus=1"], ["optimizer.params", "bogus", "allowed keys are lr"]),
    (["optimizer.params.lr=fast"], ["optimizer.params.lr='fast'", "expected a number"]),
    (["optimizer.params.betas=[0.9]"], ["optimizer.params.betas"]),
    (["scheduler.params.warmup_step=5"], ["scheduler.params", "warmup_step",
                                          "Did you mean scheduler.params.warmup_updates"]),
    (["scheduler.params.warmup_updates=abc"], ["scheduler.params.warmup_updates", "integer"]),
    (["training.batch_size=0"], ["training.batch_size=0", ">= 1"]),
    (["training.batch_size=-1"], ["training.batch_size=-1", ">= 1"]),
    (["training.max_updates=-5"], ["training.max_updates=-5", ">= 0"]),
    (["run_type=trian"], ["run_type='trian'"]),
    (["evaluation.test_weights=newest"], ["evaluation.test_weights='newest'", "best or last"]),
    (["model=toy_in_batch_negatives", "training.batch_size=1"],
     ["training.batch_size=1", "at least 2 samples per process"]),
    (["training.batch_size=1"], ["training.batch_size=1", "model albef_pretrain",
                                 "at least 2 samples per process"]),
])
def test_bad_values_are_one_error_line(capsys, tmp_path, overrides, needles):
    line = _error_line(capsys, [f"config={DEMO}", f"env.save_dir={tmp_path}", *overrides])
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "config.yaml").exists()  # refused before anything was written


def test_missing_data_dir_variable_and_missing_data(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("ALBEF_DATA_DIR", raising=False)
    line = _error_line(capsys, [f"config={PAPER}", f"env.save_dir={tmp_path / 'a'}"])
    assert "ALBEF_DATA_DIR is not set" in line and "env.data_dir=" in line
    line = _error_line(capsys, [f"config={PAPER}", f"env.save_dir={tmp_path / 'b'}",
                                f"env.data_dir={tmp_path / 'nowhere'}"])
    assert str(tmp_path / "nowhere") in line and "does not exist" in line


def test_console_script_prints_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "tools/run.py"), f"config={DEMO}",
                           f"env.save_dir={tmp_path}", "optimizer.params.lr=fast"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: optimizer.params.lr='fast': expected a number."
    assert "Traceback" not in done.stdout + done.stderr
