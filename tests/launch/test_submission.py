"""Submission-side checks of the submitit launcher (no cluster needed: sinfo/sbatch are faked)."""
import json
import os
import stat
from pathlib import Path

import pytest

from albef_plugin.config import build_config
from albef_plugin.launch import slurm_resources
from albef_plugin.launch.errors import LaunchError
from albef_plugin.trainers.save_dir import SaveDirError
from albef_plugin.launch.slurm_resources import (parse_gpu_count, parse_sinfo, parse_time_limit_min,
                                                 resolve_resources)
from albef_plugin.launch.submitit_launcher import (SubmititLauncher, default_signal_delay_s,
                                                   job_config)

PLUGIN = str(Path(__file__).resolve().parent.parent / "plugins" / "launch_toy_plugin.py")
SINFO_LINES = ["debug*|up|2|1|(null)|infinite|16000", "gpu|up|64|4|gpu:a100:8(S:0-1)|2-00:00:00|512000",
               "gpu|up|32|2|gpu:v100:4|2-00:00:00|256000", "old|down|8|3|(null)|30:00|8000"]


def _config(tmp_path, *extra):
    return build_config([f"env.user_dir={PLUGIN}", "model=launch_toy_model",
                         "datasets=launch_toy_data", "training.trainer=launch_toy_trainer",
                         f"env.save_dir={tmp_path / 'run'}", "launcher.type=submitit", *extra])


def test_sinfo_parsing_takes_the_largest_node_of_the_partition():
    gpu = parse_sinfo(SINFO_LINES, "gpu")
    assert (gpu.cpus_per_node, gpu.gpus_per_node, gpu.num_nodes, gpu.time_limit_min) == (64, 8, 6, 2880)
    default = parse_sinfo(SINFO_LINES, None)
    assert default.name == "debug" and default.cpus_per_node == 2 and default.time_limit_min is None
    assert parse_sinfo(SINFO_LINES, "nope") is None
    assert parse_time_limit_min("1:30:00") == 90 and parse_time_limit_min("45") == 45
    assert parse_gpu_count("gpu:8,shard:4") == 8 and parse_gpu_count("(null)") == 0


def test_requests_no_node_can_grant_fail_with_the_reason():
    debug = parse_sinfo(SINFO_LINES, None)
    # the default of the old launcher (4 CPUs) on a 2-CPU node: pending forever before
    with pytest.raises(LaunchError, match=r"cpus_per_task=4 .*at most 2.*PartitionConfig"):
        resolve_resources(debug, nodes=1, tasks_per_node=1, gpus_per_node=0, cpus_per_task=4,
                          timeout_min=10)
    assert resolve_resources(debug, nodes=1, tasks_per_node=2, gpus_per_node=0, cpus_per_task=None,
                             timeout_min=10) == 1
    gpu = parse_sinfo(SINFO_LINES, "gpu")
    assert resolve_resources(gpu, nodes=2, tasks_per_node=8, gpus_per_node=8, cpus_per_task=None,
                             timeout_min=60) == 8
    with pytest.raises(LaunchError, match="gpus_per_node=16"):
        resolve_resources(gpu, nodes=1, tasks_per_node=8, gpus_per_node=16, cpus_per_task=None,
                          timeout_min=60)
    with pytest.raises(LaunchError, match="launcher.nodes=9"):
        resolve_resources(gpu, nodes=9, tasks_per_node=1, gpus_per_node=0, cpus_per_task=1,
                          timeout_min=60)
    with pytest.raises(LaunchError, match="timeout_min=5000.*2880"):
        resolve_resources(gpu, nodes=1, tasks_per_node=1, gpus_per_node=0, cpus_per_task=1,
                          timeout_min=5000)
    with pytest.raises(LaunchError, match=r"mem_gb=600: .* at most 500 GB"):
        resolve_resources(gpu, nodes=1, tasks_per_node=1, gpus_per_node=0, cpus_per_task=1,
                          timeout_min=60, mem_gb=600)
    with pytest.raises(LaunchError, match="not up"):
        resolve_resources(parse_sinfo(SINFO_LINES, "old"), nodes=1, tasks_per_node=1,
                          gpus_per_node=0, cpus_per_task=1, timeout_min=5)


def _fake_slurm_bin(tmp_path, sbatch_stderr=None):
    """sinfo / sbatch / srun stand-ins on the PATH: sbatch records its script."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "sinfo": "printf '%s\\n' " + " ".join(f"'{line}'" for line in SINFO_LINES),
        "srun": "exit 0",
        "sbatch": (f"echo '{sbatch_stderr}' >&2; exit 1" if sbatch_stderr else
                   f"cp \"$1\" {tmp_path}/submitted.sh; echo 'Submitted batch job 4242'"),
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_every_slurm_option_reaches_the_sbatch_script(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{_fake_slurm_bin(tmp_path)}:{os.environ['PATH']}")
    cfg = _config(tmp_path, "launcher.cluster=slurm", "launcher.partition=gpu", "launcher.nodes=2",
                  "launcher.tasks_per_node=8", "launcher.gpus_per_node=8", "launcher.timeout_min=3",
                  "launcher.job_name=albef-pt", "launcher.comment=ablation-3",
                  "launcher.setup=[module load cuda/12,source ~/venv/bin/activate]",
                  "launcher.srun_args=[--cpu-bind=none]",
                  "launcher.slurm_additional_parameters.exclude=node7",
                  "launcher.slurm_additional_parameters.reservation=albef",
                  "launcher.slurm_additional_parameters.exclusive=true",
                  "launcher.slurm_additional_parameters.gres=gpu:a100:8")
    job = SubmititLauncher(cfg).launch()
    assert job.job_id == "4242"
    script = (tmp_path / "submitted.sh").read_text()
    for line in ["--partition=gpu", "--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8",
                 "--cpus-per-task=8", "--time=3", "--job-name=albef-pt", "--comment=ablation-3",
                 "--exclude=node7", "--reservation=albef", "#SBATCH --exclusive", "--gres=gpu:a100:8",
                 "--signal=USR2@45", "module load cuda/12", "source ~/venv/bin/activate",
                 "--cpu-bind=none"]:
        assert line in script, line
    assert default_signal_delay_s(3) == 45 and default_signal_delay_s(600) == 120


def test_job_always_resumes_and_a_taken_save_dir_is_refused(tmp_path):
    cfg = _config(tmp_path, "launcher.cluster=local")
    plain = job_config(cfg)
    assert plain["checkpoint"]["resume"] is True and cfg.checkpoint.resume is False
    # an evaluation-only job evaluates what it was given, not the save_dir's current.ckpt
    evaluation = _config(tmp_path, "launcher.cluster=local", "run_type=test",
                         "checkpoint.resume_file=/weights/albef.pth")
    assert job_config(evaluation)["checkpoint"]["resume"] is False
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "current.ckpt").write_bytes(b"x")
    with pytest.raises(SaveDirError, match="already holds a run"):
        SubmititLauncher(cfg).launch()
    assert (run_dir / "current.ckpt").read_bytes() == b"x"  # nothing lost


@pytest.mark.parametrize("extra, message", [
    (["launcher.cpus_per_task=4"], "cpus_per_task=4 x launcher.tasks_per_node=1"),
    (["launcher.partition=nope"], "launcher.partition=nope: no such partition .*debug, gpu, old"),
    (["launcher.gpus_per_node=8", "launcher.partition=gpu"], "one process per GPU; set launcher.tasks_per_node=8"),
    (["launcher.signal_delay_s=900", "launcher.timeout_min=10"], "signal_delay_s=900"),
    (["launcher.slurm_additional_parameters.time=5"], "sets time: use the launcher key"),
])
def test_bad_requests_fail_at_submission_with_the_key(tmp_path, monkeypatch, extra, message):
    monkeypatch.setenv("PATH", f"{_fake_slurm_bin(tmp_path)}:{os.environ['PATH']}")
    cfg = _config(tmp_path, "launcher.cluster=slurm", *extra)
    with pytest.raises(LaunchError, match=message):
        SubmititLauncher(cfg).launch()
    assert not (tmp_path / "submitted.sh").exists()


def test_sbatch_refusal_is_one_clean_error_line(tmp_path, monkeypatch, capsys):
    from albef_plugin.run import main

    bin_dir = _fake_slurm_bin(tmp_path, sbatch_stderr="sbatch: error: Invalid account or "
                              "account/partition combination specified")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr("sys.argv", ["albef-run", f"env.user_dir={PLUGIN}", "model=launch_toy_model",
                                     "datasets=launch_toy_data", "training.trainer=launch_toy_trainer",
                                     f"env.save_dir={tmp_path / 'run'}", "launcher.type=submitit",
                                     "launcher.cluster=slurm", "launcher.account=nobody"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: sbatch refused the job"), err
    assert "Invalid account" in err[0] and "launcher.account" in err[0]


def test_a_job_failing_on_the_node_is_reported_with_where_and_what(tmp_path):
    failing = str(Path(__file__).resolve().parent / "failing_plugin.py")
    cfg = build_config([f"env.user_dir={failing}", "model=launch_fail_model",
                        "datasets=launch_fail_data", "training.trainer=launch_fail_trainer",
                        f"env.save_dir={tmp_path / 'run'}", "launcher.type=submitit",
                        "launcher.cluster=local", "launcher.wait=true", "launcher.timeout_min=5"])
    with pytest.raises(LaunchError) as failure:
        SubmititLauncher(cfg).launch()
    message = str(failure.value)
    assert "failed: RuntimeError: the toy trainer broke on purpose" in message
    assert "_0_log.err" in message and str(tmp_path / "run") in message
    assert "checkpoint.resume=true" in message
    node_log = "".join(p.read_text() for p in (tmp_path / "run" / "submitit").glob("*_0_log.out"))
    assert "failed on" in node_log and "RuntimeError: the toy trainer broke on purpose" in node_log


def test_overwrite_clears_the_previous_run_at_submission(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "models").mkdir(parents=True)
    (run_dir / "current.ckpt").write_bytes(b"old")
    (run_dir / "models" / "model_5.ckpt").write_bytes(b"old")
    cfg = _config(tmp_path, "launcher.cluster=debug", "checkpoint.overwrite=true")
    assert SubmititLauncher(cfg).launch() == "finished"
    assert not (run_dir / "current.ckpt").exists() and not (run_dir / "models").exists()
    # the job itself resumes (nothing to resume yet) and never clears again on a requeue
    assert json.loads((run_dir / "ran.json").read_text())["resume"] is True
    assert job_config(cfg)["checkpoint"]["overwrite"] is False
