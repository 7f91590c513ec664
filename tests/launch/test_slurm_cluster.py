"""A real SLURM cluster (tools/ci/slurm_local.sh): requeue and preemption lose no update.

Through the project's submitit launcher, two 2-task gloo DDP jobs train a tiny demo model:
an uninterrupted reference, and a job that is first requeued by force (``scontrol requeue``:
SIGTERM, no help from submitit) and then preempted (USR2, sent twice, as SLURM did in the
field). The interrupted job must end with the reference's loss at every update, each
update logged once, and clean logs. CI starts the cluster in ``.ci/run``; elsewhere the
test starts it when it runs as root, and skips (saying why) when it cannot.
"""
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "projects/albef/configs/demo/pretrain.yaml"
MAX_UPDATES = 60
TINY = [
    "dataset_config.demo_pretrain.synthetic.num_train=64",
    "dataset_config.demo_pretrain.synthetic.num_val=4",
    "dataset_config.demo_pretrain.synthetic.num_test=4",
    "dataset_config.demo_pretrain.image_size=32",
    "model_config.albef_pretrain.image_encoder.image_size=32",
    "model_config.albef_pretrain.image_encoder.width=32",
    "model_config.albef_pretrain.image_encoder.depth=1",
    "model_config.albef_pretrain.image_encoder.num_heads=2",
    "model_config.albef_pretrain.text_encoder.hidden_size=32",
    "model_config.albef_pretrain.text_encoder.num_hidden_layers=2",
    "model_config.albef_pretrain.text_encoder.fusion_layer=1",
    "model_config.albef_pretrain.text_encoder.num_attention_heads=2",
    "model_config.albef_pretrain.text_encoder.intermediate_size=64",
    "model_config.albef_pretrain.embed_dim=32",
    "run_type=train", "training.batch_size=4", f"training.max_updates={MAX_UPDATES}",
    "training.log_interval=1", "training.checkpoint_interval=1000", "training.num_workers=1",
    "training.progress_bar=false", "training.tensorboard=false", "training.plot=false",
    "distributed.backend=gloo",
    "launcher.type=submitit", "launcher.cluster=slurm", "launcher.tasks_per_node=2",
    "launcher.cpus_per_task=1", "launcher.timeout_min=20",
]


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return result.returncode == 0 and bool(re.search(r"idle|mix|alloc", result.stdout))


@pytest.fixture(scope="module")
def slurm_cluster():
    if _cluster_up():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("no SLURM cluster, and this is not a root Debian/Ubuntu machine where "
                    "tools/ci/slurm_local.sh could install one")
    result = subprocess.run(["bash", str(ROOT / "tools/ci/slurm_local.sh")], capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0 or not _cluster_up():
        reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"SLURM could not be installed/started here: {reason[0]}")


def _submit(save_dir: Path, data_dir: Path):
    from albef_plugin.run import run

    return run([f"config={DEMO}", f"env.save_dir={save_dir}", f"env.data_dir={data_dir}", *TINY])


def _train_records(save_dir: Path):
    path = save_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return [r for r in records if r.get("kind") == "train"]


def _squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], capture_output=True,
                         text=True).stdout.strip()
    return out


def _wait(predicate, what: str, timeout: float = 150.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _release_requeued(job_id: str) -> None:
    """SLURM holds a requeued job ~2 minutes (BeginTime); let it start now."""
    _wait(lambda: "PENDING" in _squeue_state(job_id) or not _squeue_state(job_id),
          f"job {job_id} back in the queue")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)


def _resumed_at(log: str):
    return [int(u) for u in re.findall(r"resumed at update (\d+)", log)]


def _result(job):
    """Task 0's result pickle, read directly (this cluster keeps no accounting for sacct)."""
    import cloudpickle

    with open(job.paths.result_pickle, "rb") as handle:
        return cloudpickle.load(handle)


def _job_done(job) -> bool:
    return Path(job.paths.result_pickle).is_file() and not _squeue_state(job.job_id)


def test_forced_requeue_and_preemption_lose_no_update(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")
    data_dir = tmp_path / "data"
    reference = _submit(tmp_path / "reference", data_dir)
    interrupted_dir = tmp_path / "interrupted"
    _wait(lambda: _job_done(reference), "the reference job", timeout=180)
    job = _submit(interrupted_dir, data_dir)
    out_log = Path(job.paths.folder) / f"{job.job_id}_0_log.out"

    # 1. forced requeue mid-run: SLURM sends SIGTERM; the job resumes from the checkpoint
    _wait(lambda: len(_train_records(interrupted_dir)) >= 5, "5 updates of the job")
    subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    _release_requeued(job.job_id)
    first = _wait(lambda: _resumed_at(out_log.read_text()), "the job to resume after the requeue")[0]
    assert 5 <= first < MAX_UPDATES

    # 2. preemption: USR2 twice, 30 ms apart; rank 0 requeues after the checkpoint
    _wait(lambda: len(_train_records(interrupted_dir)) >= first + 5, "5 updates after the resume")
    for _ in range(2):
        subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
        time.sleep(0.03)
    _wait(lambda: "Requeueing" in out_log.read_text(), "the USR2 requeue")
    _release_requeued(job.job_id)
    _wait(lambda: _job_done(job), "the interrupted job to finish", timeout=180)

    log = out_log.read_text()
    resumed = _resumed_at(log)
    assert len(resumed) == 2 and resumed[0] == first and first < resumed[1] < MAX_UPDATES, resumed
    assert "SIGTERM received: stopping after update" in log
    assert "SIGUSR2 received: stopping after update" in log
    # each update once, in order, with the loss of the uninterrupted run
    got, want = _train_records(interrupted_dir), _train_records(tmp_path / "reference")
    assert [r["update"] for r in got] == list(range(1, MAX_UPDATES + 1))
    assert [r["update"] for r in want] == list(range(1, MAX_UPDATES + 1))
    for a, b in zip(got, want):
        for key in ("train/itc", "train/itm", "train/mlm", "total_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["update"], key)
    # the rank line shows once console logging exists; submitit's lines are not doubled
    assert log.count("distributed: rank 0 of 2, backend gloo") == 3
    assert log.count("Starting with JobEnvironment") == 3
    # clean logs: no exception report after a working requeue, no killed DataLoader worker
    errors = "".join(p.read_text() for p in out_log.parent.glob(f"{job.job_id}_*_log.err"))
    assert "Submitted job triggered an exception" not in errors + log
    assert "killed by signal" not in errors and "Traceback" not in errors, errors[-2000:]
    assert "task 1: Terminated" not in errors
    assert _result(job) == ("success", None)  # the job itself succeeded
