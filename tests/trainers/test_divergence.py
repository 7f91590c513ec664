"""A diverging run stops with a checkpoint that is really good (exploded weights are never
trusted, the last verified snapshot is never pruned) and the run continues from it."""
import math
import os
import re

import pytest

from albef_plugin.trainers.meter import NonFiniteLossError

from .toy_components import load_ckpt, make_config, read_records, run_trainer

# dropout off: the losses then only reflect the weights and the data
COMMON = ["model_config.toy_albef.dropout=0.0", "checkpoint.max_to_keep=1",
          "scheduler.params.min_lr=0.01"]


@pytest.mark.parametrize("checks", [
    [],                                                        # every guard on (defaults)
    ["training.divergence.max_weight_norm_growth=0"],          # only the losses can tell
])
@pytest.mark.parametrize("intervals", [
    ["training.checkpoint_interval=1", "training.log_interval=5"],
    ["training.checkpoint_interval=3", "training.log_interval=100"],
])
def test_explosion_stops_and_the_named_checkpoint_resumes_sanely(tmp_path, checks, intervals):
    run_dir = tmp_path / "run"
    run_trainer(make_config(run_dir, *COMMON, *intervals, "training.max_updates=30",
                            "optimizer.params.lr=0.01"))
    before = [r["total_loss"] for r in read_records(run_dir, "train")][-5:]
    pre_divergence = sum(before) / len(before)

    with pytest.raises(NonFiniteLossError) as stopped:
        run_trainer(make_config(run_dir, *COMMON, *intervals, *checks, "training.max_updates=60",
                                "optimizer.params.lr=1e10", "checkpoint.resume=true"))
    named = re.search(r"last good checkpoint: (\S+) \(update (\d+)\)", str(stopped.value))
    assert named, str(stopped.value)
    good_path, good_update = named.group(1), int(named.group(2))
    assert os.path.isfile(good_path) and good_update == 30
    # resume=true would continue from it too: current.ckpt was rolled back
    assert load_ckpt(run_dir / "current.ckpt")["train_state"]["update"] == good_update

    resumed = tmp_path / "resumed"
    run_trainer(make_config(resumed, *COMMON, "training.max_updates=40", "training.log_interval=1",
                            "optimizer.params.lr=0.01", f"checkpoint.resume_file={good_path}"))
    after = [r["total_loss"] for r in read_records(resumed, "train")]
    assert len(after) == 10
    assert all(math.isfinite(v) for v in after), after
    assert max(after) < 3 * pre_divergence + 0.1, (pre_divergence, after)


def test_a_loss_spike_stops_the_run_before_any_nan(tmp_path):
    from albef_plugin.trainers.meter import TrainMeter
    import torch

    meter = TrainMeter(torch.device("cpu"), spike_factor=10.0, window=20)
    for update in range(1, 16):
        meter.add({"a": torch.tensor(1.0 + 0.1 * (update % 3))}, torch.tensor(1.0), 4, update)
    assert meter.first_non_finite() is None
    meter.add({"a": torch.tensor(50.0)}, torch.tensor(50.0), 4, 16)
    meter.add({"a": torch.tensor(float("nan"))}, torch.tensor(float("nan")), 4, 17)
    update, losses = meter.first_non_finite()
    assert update == 16 and losses["total_loss"] == 50.0 and losses["recent_median"] == 1.0


def test_an_objective_joining_late_is_not_a_spike():
    """ITM and MLM join after ``itc_only_updates`` (their losses were exact zeros): the total
    rises by design, so the median restarts there; a later real spike is still caught."""
    from albef_plugin.trainers.meter import TrainMeter
    import torch

    meter = TrainMeter(torch.device("cpu"), spike_factor=10.0, window=20)

    def add(itc: float, itm: float, update: int) -> None:
        meter.add({"itc": torch.tensor(itc), "itm": torch.tensor(itm)}, torch.tensor(itc + itm),
                  4, update)

    for update in range(1, 16):
        add(0.5, 0.0, update)
    for update in range(16, 30):
        add(0.5, 10.0, update)  # 21x the ITC-only median
    assert meter.first_non_finite() is None
    add(0.5, 500.0, 30)
    update, losses = meter.first_non_finite()
    assert update == 30 and losses["recent_median"] == 10.5
