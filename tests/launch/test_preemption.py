"""What a job does once training stopped on a signal: requeue, or stop with a clear message."""
import signal
import time
from types import SimpleNamespace

import pytest
from submitit.core.utils import DelayedSubmission

from albef_plugin.launch.errors import LaunchError
from albef_plugin.launch.job import SubmititJob
from albef_plugin.trainers.metrics_log import drop_records_after
from albef_plugin.trainers.preemption import STOP_SIGNALS, RunPreempted, StopAgreement

CONFIG = {"env": {"save_dir": "/runs/a", "log_level": "info"},
          "checkpoint": {"resume": True},
          "launcher": {"max_num_timeout": 2, "timeout_min": 60, "signal_delay_s": None}}


class FakeEnv:
    job_id, global_rank = "77", 0

    def __init__(self):
        self.requeued = []

    def _requeue(self, countdown):
        self.requeued.append(countdown)


def _handler(tmp_path, countdown, ran_s):
    delayed = DelayedSubmission(SubmititJob(CONFIG))
    delayed.set_timeout(60, countdown)
    paths = SimpleNamespace(submitted_pickle=tmp_path / "77_submitted.pkl")
    return SimpleNamespace(_delayed=delayed, _job_paths=paths, _start_time=time.time() - ran_s)


@pytest.fixture
def usr2():
    STOP_SIGNALS.reset()
    previous = signal.getsignal(signal.SIGTERM)
    STOP_SIGNALS._handle(signal.SIGUSR2)
    STOP_SIGNALS._handle(signal.SIGUSR2)  # twice, as SLURM may send it
    yield
    STOP_SIGNALS.reset()
    signal.signal(signal.SIGTERM, previous)


def test_preempted_job_requeues_itself_resuming(tmp_path, usr2):
    env, stop = FakeEnv(), RunPreempted("SIGUSR2", 12, "/runs/a/current.ckpt")
    with pytest.raises(SystemExit) as exit_info:   # not an Exception: no "triggered an exception"
        SubmititJob(CONFIG)._stop_for_requeue(stop, env, _handler(tmp_path, 2, ran_s=600))
    assert exit_info.value.code == 0
    assert env.requeued == [2]                      # a preemption does not use up a time-out
    requeued = DelayedSubmission.load(tmp_path / "77_submitted.pkl")
    assert requeued.function.config["checkpoint"]["resume"] is True
    assert STOP_SIGNALS.count == 2


def test_time_outs_count_and_the_last_one_stops_with_the_checkpoint_named(tmp_path, usr2):
    env, stop = FakeEnv(), RunPreempted("SIGUSR2", 12, "/runs/a/current.ckpt")
    near_limit = 60 * 60 - 100                      # the time-limit warning is due
    with pytest.raises(SystemExit):
        SubmititJob(CONFIG)._stop_for_requeue(stop, env, _handler(tmp_path, 2, ran_s=near_limit))
    assert env.requeued == [1]
    with pytest.raises(LaunchError, match=r"max_num_timeout=2 .*/runs/a/current.ckpt holds update 12"):
        SubmititJob(CONFIG)._stop_for_requeue(stop, env, _handler(tmp_path, 0, ran_s=near_limit))
    assert env.requeued == [1]


def test_sigterm_is_left_to_slurm(tmp_path):
    STOP_SIGNALS.reset()
    previous = signal.getsignal(signal.SIGTERM)
    STOP_SIGNALS._handle(signal.SIGTERM)
    env = FakeEnv()
    try:
        with pytest.raises(SystemExit):
            SubmititJob(CONFIG)._stop_for_requeue(RunPreempted("SIGTERM", 3, "c"), env,
                                                  _handler(tmp_path, 2, ran_s=10))
    finally:
        STOP_SIGNALS.reset()
        signal.signal(signal.SIGTERM, previous)
    assert env.requeued == []


def test_single_process_agreement_needs_no_collective():
    STOP_SIGNALS.reset()
    agreement = StopAgreement()
    assert agreement.group is None and not agreement.after_update()
    STOP_SIGNALS._handle(signal.SIGTERM)
    assert agreement.after_update() and agreement.signal_name == "SIGTERM"
    STOP_SIGNALS.reset()


def test_metrics_after_the_checkpoint_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = ['{"kind": "train", "update": 1}', '{"kind": "epoch", "update": 1}',
             '{"kind": "train", "update": 2}', '{"kind": "eval", "split": "val", "update": 2}',
             '{"kind": "epoch", "update": 2}',   # drawn during update 3: after the checkpoint
             '{"kind": "train", "update": 3}', '{"kind": "eval", "split": "val", "upd']  # cut by a kill
    path.write_text("\n".join(lines))
    assert drop_records_after(str(path), 2) == ["val"]
    assert path.read_text().splitlines() == lines[:4]
    assert drop_records_after(str(path), 2) == ["val"] and len(path.read_text().splitlines()) == 4
