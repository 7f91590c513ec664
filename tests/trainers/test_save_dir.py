"""One run per save_dir: refusal of a second fresh run, overwrite, the lock, stale files."""
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from albef_plugin.errors import UserError
from albef_plugin.run import run_job
from albef_plugin.trainers.save_dir import (LOCK_FILE, SaveDirError, SaveDirLock,
                                            assert_save_dir_usable)

from .toy_components import load_ckpt, make_config, read_records


def _job(save_dir, *extra):
    return make_config(save_dir, "training.checkpoint_interval=1", "checkpoint.max_to_keep=1", *extra)


def test_a_second_fresh_run_is_refused_overwrite_starts_clean_resume_continues(tmp_path):
    run_job(_job(tmp_path, "training.max_updates=3"))
    before = (tmp_path / "metrics.jsonl").read_text()

    with pytest.raises(SaveDirError) as refused:
        run_job(_job(tmp_path, "training.max_updates=2"))
    message = str(refused.value)
    for choice in ("checkpoint.resume=true", "new env.save_dir", "checkpoint.overwrite=true"):
        assert choice in message
    assert isinstance(refused.value, UserError)
    # nothing of the first run was touched
    assert load_ckpt(tmp_path / "current.ckpt")["train_state"]["update"] == 3
    assert (tmp_path / "metrics.jsonl").read_text() == before
    # max_to_keep=1, plus the newest snapshot verified by the next loss (divergence.py)
    assert sorted(os.listdir(tmp_path / "models")) == ["model_2.ckpt", "model_3.ckpt"]

    (tmp_path / "current.ckpt.diverged").write_bytes(b"set aside by a divergence stop")
    run_job(_job(tmp_path, "training.max_updates=2", "checkpoint.overwrite=true"))
    assert not (tmp_path / "current.ckpt.diverged").exists()
    assert load_ckpt(tmp_path / "current.ckpt")["train_state"]["update"] == 2
    assert [r["update"] for r in read_records(tmp_path, "train")] == [1, 2]
    assert sorted(os.listdir(tmp_path / "models")) == ["model_1.ckpt", "model_2.ckpt"]

    run_job(_job(tmp_path, "training.max_updates=4", "checkpoint.resume=true"))
    assert [r["update"] for r in read_records(tmp_path, "train")] == [1, 2, 3, 4]
    assert not (tmp_path / LOCK_FILE).exists()  # released at the end


def test_config_alone_does_not_count_as_a_run_and_eval_runs_are_not_refused(tmp_path):
    (tmp_path / "config.yaml").write_text("left by a run that failed at start\n")
    assert_save_dir_usable(str(tmp_path), resume=False, overwrite=False)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(SaveDirError):
        assert_save_dir_usable(str(tmp_path), resume=False, overwrite=False)
    run_job(make_config(tmp_path, "run_type=val"))  # evaluation-only: writes no checkpoint


def test_a_second_run_fails_at_start_naming_the_holder(tmp_path):
    with SaveDirLock(str(tmp_path)):
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with pytest.raises(SaveDirError) as busy:
            run_job(_job(tmp_path, "training.max_updates=1"))
        assert f"PID {os.getpid()}" in str(busy.value)
        assert socket.gethostname() in str(busy.value)
    assert not (tmp_path / "current.ckpt").exists()  # the second run wrote nothing
    assert not (tmp_path / "config.yaml").exists()
    assert not (tmp_path / LOCK_FILE).exists()


def _dead_pid():
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("host, pid, age, stale", [
    ("this", "dead", 0, True),          # a killed run on this host
    ("other-node", 123, 3600, True),    # no heartbeat for an hour
    ("other-node", 123, 1, False),      # alive elsewhere
    ("this", "self", 1, False),         # another lock of this very process
])
def test_stale_locks_are_taken_over_live_ones_are_not(tmp_path, host, pid, age, stale):
    host = socket.gethostname() if host == "this" else host
    pid = {"dead": _dead_pid(), "self": os.getpid()}.get(pid, pid)
    (tmp_path / LOCK_FILE).write_text(json.dumps(
        {"host": host, "pid": pid, "token": "someone", "heartbeat": time.time() - age}))
    lock = SaveDirLock(str(tmp_path))
    if stale:
        with lock:
            assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == lock.token
    else:
        with pytest.raises(SaveDirError, match=f"PID {pid} on host {host}"):
            lock.acquire()
        assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == "someone"


def test_waiting_for_the_holder_and_heartbeat(tmp_path):
    holder = SaveDirLock(str(tmp_path), heartbeat_s=0.05).acquire()
    first_beat = json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"]
    time.sleep(0.3)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"] > first_beat
    threading.Timer(0.5, holder.release).start()
    started = time.monotonic()
    with SaveDirLock(str(tmp_path), wait_s=10) as waiter:
        assert 0.3 < time.monotonic() - started < 5
        assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == waiter.token


def test_stale_temporary_files_are_removed_at_start(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "current.ckpt.tmp").write_bytes(b"x" * 1000)
    (tmp_path / "models" / "model_7.ckpt.tmp").write_bytes(b"x" * 1000)
    run_job(_job(tmp_path, "training.max_updates=1"))
    assert not (tmp_path / "current.ckpt.tmp").exists()
    assert not (tmp_path / "models" / "model_7.ckpt.tmp").exists()
    assert (tmp_path / "current.ckpt").is_file()
