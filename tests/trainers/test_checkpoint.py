"""Checkpoint files, atomic writes, resume precedence, safe loading, NaN stop, best / early stop."""
import logging
import os
from types import SimpleNamespace

import pytest
import torch

from albef_plugin.trainers.checkpointer import (CheckpointError, Checkpointer, group_keys_by_prefix,
                                                resolve_resume_file)
from albef_plugin.trainers.meter import NonFiniteLossError

from .toy_components import build_trainer, load_ckpt, make_config, read_records, run_trainer


class NotATensor:
    """Any python object: makes a file unloadable with weights_only=True."""


def _all_files(root):
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


def test_checkpoint_files_contents_and_pruning(tmp_path):
    run_trainer(make_config(tmp_path, "training.max_updates=7", "training.checkpoint_interval=2",
                            "checkpoint.max_to_keep=2", "training.evaluation_interval=2"))
    assert sorted(os.listdir(tmp_path / "models")) == ["model_6.ckpt", "model_7.ckpt"]
    assert not [f for f in _all_files(tmp_path) if f.endswith(".tmp")]      # atomic writes
    current = load_ckpt(tmp_path / "current.ckpt")                          # weights_only=True
    assert current["format_version"] == 1
    assert current["train_state"]["update"] == 7
    assert {"queue", "num_train_forwards", "head_m.weight", "temp"} <= set(current["model"])
    assert {"optimizer", "lr_scheduler", "scaler", "rng", "data", "best", "config"} <= set(current)
    assert len(current["rng"]) == 1 and isinstance(current["rng"][0]["torch"], torch.Tensor)
    assert current["data"] == {"epoch": 1, "iteration_in_epoch": 3, "skipped_in_epoch": 0,
                               "sampler_seed": 42, "batch_size": 4, "world_size": 1,
                               "iterations_per_epoch": 4}
    assert current["config"]["training"]["max_updates"] == 7
    best = load_ckpt(tmp_path / "best.ckpt")
    assert best["best"]["key"] == "val/toy_data/r_mean"
    assert best["train_state"]["update"] == best["best"]["update"]
    assert best["best"]["value"] == max(r["val/toy_data/r_mean"] for r in read_records(tmp_path, "eval"))


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    checkpointer = Checkpointer(str(tmp_path), max_to_keep=-1)
    checkpointer.save({"x": torch.ones(1)}, update=1)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("the network filesystem went away")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="went away"):
        checkpointer.save({"x": torch.zeros(1)}, update=2)
    assert torch.equal(load_ckpt(tmp_path / "current.ckpt")["x"], torch.ones(1))
    assert not [f for f in _all_files(tmp_path) if f.endswith(".tmp")]


def _checkpoint_config(resume=False, resume_file=None, resume_best=False):
    return SimpleNamespace(resume=resume, resume_file=resume_file, resume_best=resume_best)


@pytest.mark.parametrize("files, resume, resume_file, resume_best, expected", [
    ([], False, None, False, None),                                   # fresh
    (["current.ckpt"], False, None, False, None),                     # resume off: ignore current
    (["current.ckpt"], True, None, False, "current.ckpt"),
    (["current.ckpt", "best.ckpt"], True, None, True, "best.ckpt"),   # resume_best prefers best
    (["current.ckpt"], True, None, True, "current.ckpt"),             # ... falling back to current
    (["best.ckpt"], True, None, False, "best.ckpt"),                  # current missing: best
    ([], True, None, False, None),                                    # nothing to resume: fresh
    (["current.ckpt", "other.ckpt"], False, "other.ckpt", False, "other.ckpt"),  # resume_file
    (["current.ckpt", "other.ckpt"], True, "other.ckpt", False, "current.ckpt"),  # resume wins
    (["other.ckpt"], True, "other.ckpt", False, "other.ckpt"),        # current missing: file
])
def test_resume_precedence(tmp_path, files, resume, resume_file, resume_best, expected):
    for name in files:
        (tmp_path / name).write_bytes(b"x")
    config = _checkpoint_config(resume, str(tmp_path / resume_file) if resume_file else None, resume_best)
    found = resolve_resume_file(config, str(tmp_path))
    assert (found[0] if found else None) == (str(tmp_path / expected) if expected else None)


def test_resume_without_current_takes_the_newest_readable_snapshot(tmp_path, caplog):
    run_trainer(make_config(tmp_path, "training.max_updates=6", "training.checkpoint_interval=2"))
    os.remove(tmp_path / "current.ckpt")
    (tmp_path / "models" / "model_6.ckpt").write_bytes(b"truncated")  # unreadable: passed over
    with caplog.at_level(logging.INFO):
        trainer = build_trainer(make_config(tmp_path, "training.max_updates=8",
                                            "checkpoint.resume=true"))
    assert trainer.state.update == 4
    assert "model_4.ckpt (checkpoint.resume=true and" in caplog.text
    assert "newest readable snapshot" in caplog.text and "model_6.ckpt is unreadable" in caplog.text
    trainer.close()


def test_missing_resume_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint.resume_file=.*does not exist"):
        resolve_resume_file(_checkpoint_config(resume_file=str(tmp_path / "nope.ckpt")), str(tmp_path))


def test_resume_continues_from_current(tmp_path):
    run_trainer(make_config(tmp_path, "training.max_updates=3"))
    trainer = run_trainer(make_config(tmp_path, "training.max_updates=5", "checkpoint.resume=true"))
    assert trainer.state.update == 5
    assert int(trainer.model.num_train_forwards) == 5                 # the buffer came back too
    assert [r["update"] for r in read_records(tmp_path, "train")] == [1, 2, 3, 4, 5]
    with open(tmp_path / "train.log") as handle:
        assert "current.ckpt (checkpoint.resume=true)" in handle.read()


@pytest.mark.parametrize("reset, update, optimizer_state", [
    ("checkpoint.reset.optimizer=true", 3, False),
    ("checkpoint.reset.counts=true", 0, True),
    ("checkpoint.reset.all=true", 0, False),
])
def test_reset_options(tmp_path, reset, update, optimizer_state):
    run_trainer(make_config(tmp_path / "a", "training.max_updates=3"))
    trainer = build_trainer(make_config(tmp_path / "b", "checkpoint.resume_file=" + str(tmp_path / "a/current.ckpt"),
                                        reset))
    assert trainer.state.update == update
    assert bool(trainer.optimizer.state) == optimizer_state
    assert int(trainer.model.num_train_forwards) == 3                 # the weights always load


def test_unsafe_pickle_is_refused_with_instructions(tmp_path):
    model_state = load_ckpt(_trained_checkpoint(tmp_path))["model"]
    path = tmp_path / "foreign.pth"
    torch.save({"model": model_state, "args": NotATensor()}, path)
    config = make_config(tmp_path / "run", f"checkpoint.resume_file={path}", "checkpoint.resume_pretrained=true")
    with pytest.raises(CheckpointError, match="checkpoint.allow_unsafe_pickle=true"):
        build_trainer(config)
    config.checkpoint.allow_unsafe_pickle = True
    assert int(build_trainer(config).model.num_train_forwards) == 2


def _trained_checkpoint(tmp_path):
    run_trainer(make_config(tmp_path / "trained", "training.max_updates=2"))
    return tmp_path / "trained" / "current.ckpt"


def test_resume_pretrained_loads_weights_only_and_lists_key_mismatches(tmp_path, caplog):
    state = load_ckpt(_trained_checkpoint(tmp_path))["model"]
    del state["head.bias"]
    state["extra.layer.weight"] = torch.zeros(1)
    path = tmp_path / "weights.pth"
    torch.save(state, path)                                           # a bare state dict
    with caplog.at_level(logging.WARNING, logger="albef_plugin"):
        trainer = build_trainer(make_config(tmp_path / "run", f"checkpoint.resume_file={path}",
                                            "checkpoint.resume_pretrained=true"))
    assert trainer.state.update == 0 and not trainer.optimizer.state
    assert torch.equal(trainer.model.embed.weight, state["embed.weight"])
    assert "head.bias" in caplog.text and "extra.layer" in caplog.text


def test_foreign_checkpoint_without_resume_pretrained_is_refused(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"model": load_ckpt(_trained_checkpoint(tmp_path))["model"]}, path)
    with pytest.raises(CheckpointError, match="resume_pretrained=true"):
        build_trainer(make_config(tmp_path / "run", f"checkpoint.resume_file={path}"))


def _albef_ve_config(save_dir, checkpoint=None):
    """The toy run with a tiny albef_ve (evaluation-only: the toy data never reaches it)."""
    from albef_plugin.models import model_config
    from albef_plugin.models.albef.ve import ALBEFVisualEntailment as ALBEFVE

    overrides = ALBEFVE.tiny_overrides()
    if checkpoint is not None:
        overrides["checkpoint"] = str(checkpoint)
    config = make_config(save_dir, "run_type=test", "model=albef_ve", "evaluation.metrics=[]")
    config.model_config["albef_ve"] = model_config("albef_ve", overrides)
    return config


@pytest.mark.parametrize("with_checkpoint", [True, False])
def test_an_evaluation_run_names_the_weights_the_model_was_built_with(tmp_path, caplog, with_checkpoint):
    from albef_plugin.models import build_model
    from albef_plugin.models.albef.ve import ALBEFVisualEntailment as ALBEFVE

    path = tmp_path / "ve_weights.pth"
    torch.manual_seed(1234)  # not the run's seed: the run's own initialisation differs from the file
    saved = build_model("albef_ve", ALBEFVE.tiny_overrides()).state_dict()
    torch.save(saved, path)
    with caplog.at_level(logging.INFO, logger="albef_plugin"):
        trainer = build_trainer(_albef_ve_config(tmp_path / "run", path if with_checkpoint else None))
    trainer.close()
    warnings = [r.message for r in caplog.records if r.levelno >= logging.WARNING
                and "initial weights" in r.message]
    named = f"run_type=test evaluates the weights the model was built with: model_config.albef_ve.checkpoint={path}"
    if with_checkpoint:
        assert torch.equal(trainer.model.cls_head[0].weight, saved["cls_head.0.weight"])
        assert not warnings and named in caplog.text
    else:
        assert not torch.equal(trainer.model.cls_head[0].weight, saved["cls_head.0.weight"])
        assert warnings == ["run_type=test evaluates the model's initial weights: no checkpoint was loaded "
                            "(set checkpoint.resume_file=<file> or model_config.albef_ve.checkpoint=<file>)"]
        assert "evaluates the weights the model was built with" not in caplog.text


def test_group_keys_by_prefix():
    text = group_keys_by_prefix(["a.b.c", "a.b.d", "top"])
    assert "a.b.{c, d} (2 keys)" in text and "top" in text


@pytest.mark.parametrize("log_interval", [1, 100])
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, log_interval):
    # NaN from update 3 on; checkpoints every 2: update 2 is good, update 4 must not be written
    config = make_config(tmp_path, "training.max_updates=8", "training.checkpoint_interval=2",
                         f"training.log_interval={log_interval}", "model_config.toy_albef.nan_at_update=3")
    with pytest.raises(NonFiniteLossError, match=r"update 3: .*mse=nan"):
        run_trainer(config)
    assert load_ckpt(tmp_path / "current.ckpt")["train_state"]["update"] == 2
    assert sorted(os.listdir(tmp_path / "models")) == ["model_2.ckpt"]
    with open(tmp_path / "train.log") as handle:
        assert "non-finite training loss at update 3" in handle.read()


def test_best_checkpoint_and_early_stop(tmp_path):
    # toy_worsening never improves after its first evaluation (update 1)
    run_trainer(make_config(tmp_path, "training.max_updates=10", "training.evaluation_interval=1",
                            "evaluation.metrics=[toy_worsening]", "training.early_stop.enabled=true",
                            "training.early_stop.patience=2"))
    assert load_ckpt(tmp_path / "best.ckpt")["train_state"]["update"] == 1
    assert load_ckpt(tmp_path / "current.ckpt")["train_state"]["update"] == 3
    assert read_records(tmp_path, "train")[-1]["update"] == 3


def test_resume_reports_every_changed_key_that_affects_training(tmp_path, caplog):
    run_trainer(make_config(tmp_path, "training.max_updates=2"))
    with caplog.at_level(logging.WARNING):
        trainer = build_trainer(make_config(
            tmp_path, "training.max_updates=4", "checkpoint.resume=true", "optimizer.params.lr=0.02",
            "scheduler.params.min_lr=0.001", "model_config.toy_albef.dropout=0.1",
            "training.log_interval=7", "training.progress_bar=true"))
    trainer.close()
    (line,) = [r.message for r in caplog.records if "differs from the checkpoint" in r.message]
    for change in ("optimizer.params.lr: 0.01 -> 0.02", "scheduler.params.min_lr: 0.0001 -> 0.001",
                   "model_config.toy_albef.dropout: 0.2 -> 0.1", "training.max_updates: 2 -> 4"):
        assert change in line, line
    assert "log_interval" not in line and "progress_bar" not in line and "resume" not in line


def test_a_resumed_run_logs_each_update_once(tmp_path):
    import shutil

    run_trainer(make_config(tmp_path, "training.max_updates=4", "training.checkpoint_interval=2"))
    # as if killed after update 4 was logged but before its checkpoint: current.ckpt is update 2
    shutil.copyfile(tmp_path / "models" / "model_2.ckpt", tmp_path / "current.ckpt")
    run_trainer(make_config(tmp_path, "training.max_updates=6", "training.checkpoint_interval=2",
                            "checkpoint.resume=true"))
    assert [r["update"] for r in read_records(tmp_path, "train")] == [1, 2, 3, 4, 5, 6]
