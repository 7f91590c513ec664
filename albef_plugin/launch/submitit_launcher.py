"""The submitit launcher: one command from a login node to SLURM.

``launcher.type=submitit`` submits the job through submitit's ``AutoExecutor``: SLURM
when ``srun`` is on the PATH (or ``launcher.cluster=slurm``), else local subprocesses
(``launcher.cluster=local``) or in-process (``debug``). The same config runs on one CPU
task, N GPU tasks per node (``launcher.tasks_per_node=N launcher.gpus_per_node=N``) or
N nodes (``launcher.nodes=N``): each task is one process of the torch process group.

At submission the launcher

* refuses an ``env.save_dir`` that already holds a run unless ``checkpoint.resume=true``
  or ``checkpoint.overwrite=true`` (which clears it now, under the save_dir lock);
* checks the request against the partition (``sinfo``) and fills unset resources, so a job
  never pends forever on resources no node has (``slurm_resources.py``);
* submits the job with ``checkpoint.resume=true`` (see ``job.py``) and turns an sbatch
  refusal into one ``error:`` line.

Every SLURM option is reachable: the keys of ``LauncherConfig`` and, for the rest,
``launcher.slurm_additional_parameters`` (passed to sbatch as ``--key=value``).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from albef_plugin.launch.errors import LaunchError
from albef_plugin.launch.job import SubmititJob, quiet_submitit_logger
from albef_plugin.launch.slurm_resources import (default_signal_delay_s, query_partition,
                                                 resolve_resources)
from albef_plugin.registry import registry

logger = logging.getLogger(__name__)

__all__ = ["SubmititLauncher", "SubmititJob", "default_signal_delay_s", "job_config",
           "check_save_dir"]

# Parameters LauncherConfig sets itself: passing them again through
# slurm_additional_parameters would silently win over the typed keys.
_TYPED_SBATCH_KEYS = {"partition", "account", "qos", "constraint", "time", "nodes",
                      "ntasks_per_node", "cpus_per_task", "gpus_per_node", "mem", "job_name",
                      "comment", "signal"}


def job_config(config: DictConfig) -> Dict[str, Any]:
    """The config the job runs with: resolved, plain, and resuming when it trains.

    (An evaluation-only job keeps its checkpoint keys: forcing ``resume`` would make it
    evaluate ``<save_dir>/current.ckpt`` instead of its ``checkpoint.resume_file``.)
    """
    from albef_plugin.trainers.build import parse_run_type

    plain = OmegaConf.to_container(config, resolve=True)
    assert isinstance(plain, dict)
    if parse_run_type(config.run_type)[0]:
        plain["checkpoint"]["resume"] = True
    plain["checkpoint"]["overwrite"] = False  # done at submission; a requeue must not clear
    return plain


def check_save_dir(config: DictConfig) -> None:
    """Refuse a save_dir holding a run unless resuming; overwrite clears it now."""
    from albef_plugin.trainers.build import parse_run_type
    from albef_plugin.trainers.save_dir import SaveDirLock, assert_save_dir_usable, clear_run_files

    if not parse_run_type(config.run_type)[0]:
        return  # evaluation only: writes nothing a run would lose
    save_dir = str(config.env.save_dir)
    resume = bool(config.checkpoint.resume)
    overwrite = bool(config.checkpoint.overwrite)
    assert_save_dir_usable(save_dir, resume=resume, overwrite=overwrite)
    if overwrite and not resume and os.path.isdir(save_dir):
        with SaveDirLock(save_dir, wait_s=0.0):  # fails if a live run holds it
            clear_run_files(save_dir)


@registry.register_launcher("submitit")
class SubmititLauncher:
    def __init__(self, config: DictConfig) -> None:
        self.config = config
        self.cpus_per_task: Optional[int] = None

    # ------------------------------------------------------------------ executor
    def build_executor(self, folder: Optional[str] = None) -> Any:
        import submitit

        launcher = self.config.launcher
        folder = folder or str(launcher.folder)
        Path(folder).mkdir(parents=True, exist_ok=True)
        executor = submitit.AutoExecutor(folder=folder, cluster=launcher.cluster,
                                         slurm_max_num_timeout=launcher.max_num_timeout)
        executor.update_parameters(**self.parameters(executor.cluster))
        return executor

    def parameters(self, cluster: str) -> Dict[str, Any]:
        """``update_parameters`` arguments for ``cluster``; checks SLURM requests with sinfo."""
        launcher = self.config.launcher
        for key in ("nodes", "tasks_per_node", "timeout_min"):
            if int(launcher[key]) < 1:
                raise LaunchError(f"launcher.{key}={launcher[key]}: must be at least 1.")
        if launcher.gpus_per_node and launcher.tasks_per_node != launcher.gpus_per_node:
            raise LaunchError(
                f"launcher.gpus_per_node={launcher.gpus_per_node} with launcher.tasks_per_node="
                f"{launcher.tasks_per_node}: runs scale as one process per GPU; set "
                f"launcher.tasks_per_node={launcher.gpus_per_node}.")
        cpus = launcher.cpus_per_task
        if cluster == "slurm":
            info = query_partition(launcher.partition)
            cpus = resolve_resources(info, nodes=launcher.nodes,
                                     tasks_per_node=launcher.tasks_per_node,
                                     gpus_per_node=launcher.gpus_per_node, cpus_per_task=cpus,
                                     timeout_min=launcher.timeout_min, mem_gb=launcher.mem_gb)
            logger.info("partition %s: %d CPU(s) and %d GPU(s) per node; asking for %d node(s) x "
                        "%d task(s) x %d CPU(s)", info.name, info.cpus_per_node, info.gpus_per_node,
                        launcher.nodes, launcher.tasks_per_node, cpus)
        self.cpus_per_task = cpus = int(cpus or 1)
        params: Dict[str, Any] = {
            "nodes": launcher.nodes,
            "tasks_per_node": launcher.tasks_per_node,
            "cpus_per_task": cpus,
            "timeout_min": launcher.timeout_min,
            "name": launcher.job_name or Path(str(self.config.env.save_dir)).name or "albef",
        }
        if launcher.gpus_per_node:
            params["gpus_per_node"] = launcher.gpus_per_node
        if launcher.mem_gb:
            params["mem_gb"] = launcher.mem_gb
        if cluster == "slurm":
            params.update(self._slurm_parameters())
        return params

    def _slurm_parameters(self) -> Dict[str, Any]:
        launcher = self.config.launcher
        delay = launcher.signal_delay_s
        if delay is None:
            delay = default_signal_delay_s(launcher.timeout_min)
        elif not 0 < delay < launcher.timeout_min * 60:
            raise LaunchError(f"launcher.signal_delay_s={delay}: the warning signal must come "
                              f"between 0 and launcher.timeout_min x 60 = {launcher.timeout_min * 60} "
                              f"seconds before the time limit.")
        extra = dict(OmegaConf.to_container(launcher.slurm_additional_parameters, resolve=True))
        clash = sorted(k for k in extra if k.replace("-", "_") in _TYPED_SBATCH_KEYS)
        if clash:
            raise LaunchError(f"launcher.slurm_additional_parameters sets {', '.join(clash)}: use the "
                              f"launcher key instead (see LauncherConfig), so one value wins.")
        params: Dict[str, Any] = {"slurm_signal_delay_s": int(delay)}
        typed = {"slurm_partition": launcher.partition, "slurm_account": launcher.account,
                 "slurm_qos": launcher.qos, "slurm_constraint": launcher.constraint,
                 "slurm_comment": launcher.comment,
                 "slurm_array_parallelism": launcher.array_parallelism}
        params.update({k: v for k, v in typed.items() if v})
        if launcher.setup:
            params["slurm_setup"] = [str(line) for line in launcher.setup]
        if launcher.srun_args:
            params["slurm_srun_args"] = [str(arg) for arg in launcher.srun_args]
        if extra:
            params["slurm_additional_parameters"] = extra
        return params

    # ------------------------------------------------------------------ submission
    def submit(self, executor: Any, jobs: List[SubmititJob]) -> List[Any]:
        """Submit ``jobs`` (one, or an array); sbatch errors become a LaunchError."""
        from submitit.core.utils import FailedJobError

        quiet_submitit_logger()
        captured = io.StringIO()  # submitit prints sbatch's stderr before raising
        try:
            with contextlib.redirect_stderr(captured):
                if len(jobs) == 1:
                    return [executor.submit(jobs[0])]
                with executor.batch():
                    futures = [executor.submit(job) for job in jobs]
                return futures
        except FailedJobError as exc:
            message = " ".join(str(exc).split()) or captured.getvalue().strip()
            raise LaunchError(f"sbatch refused the job ({message}); check launcher.partition, "
                              f"launcher.account, launcher.qos and "
                              f"launcher.slurm_additional_parameters.") from None

    def launch(self) -> Any:
        check_save_dir(self.config)
        executor = self.build_executor()
        job = self.submit(executor, [SubmititJob(job_config(self.config))])[0]
        folder = self.config.launcher.folder
        logger.info("submitted job %s (%s, %d node(s) x %d task(s)); logs: %s/%s_0_log.out, "
                    "run: %s", job.job_id, executor.cluster, self.config.launcher.nodes,
                    self.config.launcher.tasks_per_node, folder, job.job_id,
                    self.config.env.save_dir)
        if self.config.launcher.wait or executor.cluster == "debug":
            return wait_for(job, self.config)
        return job


def wait_for(job: Any, config: DictConfig) -> Any:
    """The job's result (all tasks' if several); a failure becomes a LaunchError."""
    from submitit.core.utils import UncompletedJobError

    launcher = config.launcher
    try:
        return job.results() if launcher.tasks_per_node * launcher.nodes > 1 else job.result()
    except UncompletedJobError as exc:
        raise LaunchError(
            f"job {job.job_id} failed: {_exception_line(str(exc))}. Full log: "
            f"{launcher.folder}/{job.job_id}_0_log.err. env.save_dir={config.env.save_dir} keeps "
            f"its checkpoints; once fixed, submit again with checkpoint.resume=true.") from None


def _exception_line(report: str) -> str:
    """``Type: message`` of the traceback inside submitit's failure report (else its first line)."""
    parts = report.split("-" * 22)  # submitit frames the trace with dashes
    trace = parts[1] if len(parts) >= 3 else report
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    return lines[-1] if lines else report.strip()
