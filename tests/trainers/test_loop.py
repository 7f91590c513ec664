"""The training loop: counts, accumulation, alpha, skipped samples, outputs, run types."""
import os

import pytest
import torch

from albef_plugin.trainers import compute_max_updates
from albef_plugin.trainers.data import ResumableDistributedSampler
from albef_plugin.trainers.plots import read_metrics

from .toy_components import build_trainer, make_config, read_records, run_trainer


@pytest.mark.parametrize("max_updates, max_epochs, iterations, frequency, expected", [
    (5, 100, 4, 1, 5),       # max_updates wins
    (None, 2, 4, 1, 8),
    (None, 2, 4, 2, 4),
    (None, 1, 4, 3, 1),      # whole updates only: the last batch of the epoch is unused
    (None, 1, 1, 4, 1),      # at least one update
])
def test_compute_max_updates(max_updates, max_epochs, iterations, frequency, expected):
    assert compute_max_updates(max_updates, max_epochs, iterations, frequency) == expected


def test_compute_max_updates_needs_a_limit():
    with pytest.raises(ValueError, match="training.max_updates or training.max_epochs"):
        compute_max_updates(None, None, 4, 1)


@pytest.mark.parametrize("overrides, updates, forwards, end_position", [
    (["training.max_updates=5", "training.max_epochs=9"], 5, 5, (1, 1)),
    (["training.max_updates=null", "training.max_epochs=2", "training.update_frequency=2"], 4, 8, (2, 0)),
    (["training.max_updates=null", "training.max_epochs=1", "training.update_frequency=3"], 1, 3, (0, 3)),
])
def test_loop_counts(tmp_path, overrides, updates, forwards, end_position):
    trainer = run_trainer(make_config(tmp_path, *overrides))   # 16 samples / batch 4: 4 iterations/epoch
    assert trainer.state.update == updates
    assert int(trainer.model.num_train_forwards) == forwards
    assert (trainer.state.epoch, trainer.state.iteration_in_epoch) == end_position
    assert [r["update"] for r in read_records(tmp_path, "train")] == list(range(1, updates + 1))


def test_alpha_follows_the_train_state_of_each_batch(tmp_path):
    trainer = run_trainer(make_config(tmp_path, "training.max_updates=3", "training.update_frequency=2"))
    # toy alpha = 0.4 * epoch_progress of the batch being processed (4 batches per epoch)
    assert trainer.model.alphas == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4])


def test_first_micro_batch_flag_marks_the_start_of_each_update(tmp_path):
    """Models step their EMA on the first micro-batch of an update only (see TrainState)."""
    trainer = build_trainer(make_config(tmp_path, "training.max_updates=2", "training.update_frequency=3"))
    seen = []
    forward = trainer.model.forward

    def recording_forward(batch, train_state=None):
        seen.append(train_state.first_micro_batch)
        return forward(batch, train_state)

    trainer.model.forward = recording_forward
    trainer.run()
    assert seen == [True, False, False, True, False, False]


def _grads_at_first_step(config):
    """Run one update and return the gradients the optimizer steps with."""
    trainer = build_trainer(config)
    seen = {}
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        seen.update({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.run()
    return seen


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """2 micro-batches of 4 give the gradient of 1 batch of 8 (dropout off, same samples)."""
    common = ["training.max_updates=1", "model_config.toy_albef.dropout=0.0"]
    small = _grads_at_first_step(make_config(tmp_path / "a", *common, "training.update_frequency=2"))
    big = _grads_at_first_step(make_config(tmp_path / "b", *common, "training.batch_size=8"))
    assert set(small) == set(big) and "embed.weight" in small
    for name in small:
        if name != "temp":  # temp's loss term draws fresh noise per forward
            assert torch.allclose(small[name], big[name], atol=1e-6), name


def test_gradient_clipping(tmp_path):
    grads = _grads_at_first_step(make_config(tmp_path, "training.max_updates=1",
                                             "training.clip_grad_norm=0.01"))
    total_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
    assert total_norm == pytest.approx(0.01, rel=1e-4)
    (record,) = read_records(tmp_path, "train")
    assert record["grad_norm"] > 0.01                            # the norm before clipping


def test_skipped_samples_are_counted_per_epoch(tmp_path):
    trainer = run_trainer(make_config(tmp_path, "training.max_updates=4",
                                      "dataset_config.toy_data.skip_indices=[1,5,9]"))
    assert int(trainer.model.num_train_forwards) == 4
    (epoch_record,) = read_records(tmp_path, "epoch")
    assert epoch_record["epoch"] == 0 and epoch_record["num_skipped"] == 3
    assert sum(r["num_skipped"] for r in read_records(tmp_path, "train")) == 3
    with open(tmp_path / "train.log") as handle:
        assert "epoch 0 finished: 3 samples skipped" in handle.read()


def test_an_all_skipped_batch_is_passed_over(tmp_path):
    sampler = ResumableDistributedSampler(16, seed=42)
    first_batch = sampler.indices()[:4]                          # the seed of make_config
    trainer = run_trainer(make_config(tmp_path, "training.max_updates=4",
                                      f"dataset_config.toy_data.skip_indices={first_batch}"))
    assert trainer.state.update == 4
    assert int(trainer.model.num_train_forwards) == 3
    first = read_records(tmp_path, "train")[0]
    assert first["num_skipped"] == 4 and "total_loss" not in first


def test_a_batch_collated_to_none_is_passed_over(tmp_path):
    """ImageTextCollate returns None when on_unreadable=drop dropped every sample."""
    trainer = build_trainer(make_config(tmp_path, "training.max_updates=3"))
    collate = trainer.batches.loader.collate_fn
    calls = []

    def first_batch_all_dropped(samples):
        calls.append(len(samples))
        return None if len(calls) == 1 else collate(samples)

    trainer.batches.loader.collate_fn = first_batch_all_dropped
    trainer.run()
    assert trainer.state.update == 3 and int(trainer.model.num_train_forwards) == 2
    first = read_records(tmp_path, "train")[0]
    assert first["num_skipped"] == 4 and "total_loss" not in first


def test_outputs_metrics_tensorboard_log_and_png(tmp_path):
    run_trainer(make_config(tmp_path, "run_type=train_val", "training.max_updates=4",
                            "training.log_interval=2", "training.evaluation_interval=2",
                            "training.tensorboard=true", "training.plot=true",
                            "training.progress_bar=true",
                            f"dataset_config.toy_data.marker_dir={tmp_path / 'data'}"))
    train = read_records(tmp_path, "train")
    assert [r["update"] for r in train] == [2, 4]
    for key in ("train/mse", "train/aux", "total_loss", "lr", "samples_per_s", "epoch"):
        assert key in train[0], key
    assert train[0]["total_loss"] == pytest.approx(train[0]["train/mse"] + train[0]["train/aux"], rel=1e-5)
    evals = read_records(tmp_path, "eval")
    assert [r["update"] for r in evals] == [2, 4]               # the final val reuses update 4
    assert "val/toy_data/r_mean" in evals[0]
    assert (tmp_path / "data" / "prepared.txt").is_file()
    with open(tmp_path / "train.log") as handle:
        log = handle.read()
    assert "update 4/4" in log and "evaluation on val" in log
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))
    with open(tmp_path / "training_curves.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    train_series, eval_series = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [u for u, _ in train_series["total_loss"]] == [2, 4]
    assert [u for u, _ in eval_series["val/toy_data/r_mean"]] == [2, 4]


def test_read_metrics_keeps_the_last_record_of_an_update_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "update": 1, "total_loss": 5.0}\n'
                    '{"kind": "train", "update": 1, "total_loss": 3.0}\n'
                    '{"kind": "train", "update": 2, "total_lo')
    train, _ = read_metrics(str(path))
    assert train["total_loss"] == [(1, 3.0)]


def test_evaluation_only_run_type(tmp_path):
    trainer = run_trainer(make_config(tmp_path, "run_type=test"))
    assert trainer.state.update == 0 and int(trainer.model.num_train_forwards) == 0
    (record,) = read_records(tmp_path, "eval")
    assert record["split"] == "test" and "test/toy_data/mse" in record
    assert not (tmp_path / "current.ckpt").exists()


def test_bad_run_type_is_refused(tmp_path):
    with pytest.raises(ValueError, match="run_type='tran'"):
        run_trainer(make_config(tmp_path, "run_type=tran"))
