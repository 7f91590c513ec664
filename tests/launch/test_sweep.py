"""Sweeps: grid -> one save_dir per point, finished points skipped, summary of the best metric."""
import json
from pathlib import Path

import pytest
import torch

from albef_plugin.launch.errors import LaunchError
from albef_plugin.launch.sweep import (grid_points, main, parse_grid, plan_sweep, point_name,
                                       submit_sweep, summary_table)

PLUGIN = str(Path(__file__).resolve().parent.parent / "plugins" / "launch_toy_plugin.py")
OPTS = [f"env.user_dir={PLUGIN}", "model=launch_toy_model", "datasets=launch_toy_data",
        "training.trainer=launch_toy_trainer", "launcher.cluster=debug", "training.max_updates=10"]
GRID = ["model_config.launch_toy_model.size=[1,2]", "optimizer.params.lr=[0.1,0.2]"]


def _fake_checkpoint(save_dir: Path, update: int, max_updates: int = 10) -> None:
    save_dir.mkdir(parents=True)
    torch.save({"train_state": {"update": update},
                "config": {"training": {"max_updates": max_updates, "max_epochs": None,
                                        "update_frequency": 1}},
                "data": {"iterations_per_epoch": 5}}, save_dir / "current.ckpt")


def _eval(save_dir: Path, *values) -> None:
    with open(save_dir / "metrics.jsonl", "a") as handle:
        for update, value in enumerate(values, 1):
            handle.write(json.dumps({"kind": "eval", "split": "val", "update": update * 5,
                                     "val/toy/itm_r_mean": value}) + "\n")


def test_grid_parsing_and_point_names():
    grid = parse_grid(GRID)
    assert grid == [("model_config.launch_toy_model.size", [1, 2]), ("optimizer.params.lr", [0.1, 0.2])]
    points = grid_points(grid)
    assert len(points) == 4 and points[1] == {"model_config.launch_toy_model.size": 1,
                                              "optimizer.params.lr": 0.2}
    assert point_name(points[1]) == "size1.lr0.2"
    for bad in ["lr", "lr=3", "lr=[]", "env.save_dir=[a,b]", "launcher.nodes=[1,2]"]:
        with pytest.raises(LaunchError, match="--grid"):
            parse_grid([bad])


def test_sweep_skips_finished_points_resumes_partial_ones_and_summarises(tmp_path, capsys):
    root = tmp_path / "sweep"
    _fake_checkpoint(root / "size1.lr0.1", update=10)   # finished
    _fake_checkpoint(root / "size1.lr0.2", update=4)    # interrupted
    _eval(root / "size1.lr0.1", 40.0, 55.5)
    _eval(root / "size1.lr0.2", 61.0)
    points = plan_sweep(OPTS, GRID, str(root))
    assert [(p.name, p.status, p.update) for p in points] == [
        ("size1.lr0.1", "finished", 10), ("size1.lr0.2", "partial", 4),
        ("size2.lr0.1", "new", 0), ("size2.lr0.2", "new", 0)]

    jobs = submit_sweep(OPTS, points, str(root))
    assert len(jobs) == 3                                # the finished point is not submitted
    assert [job.result() for job in jobs] == ["finished"] * 3
    assert not (root / "size1.lr0.1" / "ran.json").exists()
    ran = json.loads((root / "size2.lr0.2" / "ran.json").read_text())
    assert ran == {"resume": True, "size": 2}            # every point runs with resume=true
    assert json.loads((root / "size1.lr0.2" / "ran.json").read_text())["resume"] is True

    table = summary_table(points, "val/r_mean", minimize=False).splitlines()
    assert table[0].split() == ["point", "updates", "metric", "best", "at", "update"]
    assert table[1].split() == ["size1.lr0.2", "4/10", "val/toy/itm_r_mean", "61.0000", "5"]
    assert table[2].split() == ["size1.lr0.1", "done", "(10)", "val/toy/itm_r_mean", "55.5000", "10"]
    assert table[3].split()[:3] == ["size2.lr0.1", "not", "started"]

    assert main([*OPTS, *sum((["--grid", g] for g in GRID), []), "--root", str(root), "--summary"]) == 0
    assert "size1.lr0.2" in capsys.readouterr().out
