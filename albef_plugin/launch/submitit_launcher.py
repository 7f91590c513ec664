"""The submitit launcher: one command from a laptop to SLURM.

``launcher.type=submitit`` submits the job through submitit's ``AutoExecutor``:
SLURM when ``srun`` is on the PATH (or ``launcher.cluster=slurm``), else local
subprocesses (``launcher.cluster=local``) or in-process (``debug``). Each task
exports the torch distributed environment and calls ``run_job``. On preemption or
time-out the job is requeued with ``checkpoint.resume=true``, so it continues from
``<save_dir>/current.ckpt``; no model is pickled.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

from omegaconf import DictConfig, OmegaConf

from albef_plugin.registry import registry

logger = logging.getLogger(__name__)


class SubmititJob:
    """The picklable callable submitit runs in each task."""

    def __init__(self, config: Dict[str, Any]) -> None:
        self.config = config  # a plain, resolved container: no resolvers needed remotely

    def __call__(self) -> Any:
        import submitit

        from albef_plugin.run import run_job

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return run_job(OmegaConf.create(self.config))

    def checkpoint(self) -> Any:
        """Called by submitit on preemption/time-out: requeue, resuming from current.ckpt."""
        import submitit

        config = dict(self.config)
        config["checkpoint"] = {**config["checkpoint"], "resume": True}
        return submitit.helpers.DelayedSubmission(SubmititJob(config))


@registry.register_launcher("submitit")
class SubmititLauncher:
    def __init__(self, config: DictConfig) -> None:
        self.config = config

    def build_executor(self) -> Any:
        import submitit

        launcher = self.config.launcher
        folder = Path(launcher.folder)
        folder.mkdir(parents=True, exist_ok=True)
        executor = submitit.AutoExecutor(folder=str(folder), cluster=launcher.cluster,
                                         slurm_max_num_timeout=launcher.max_num_timeout)
        params: Dict[str, Any] = {
            "nodes": launcher.nodes,
            "tasks_per_node": launcher.tasks_per_node,
            "cpus_per_task": launcher.cpus_per_task,
            "timeout_min": launcher.timeout_min,
            "name": Path(self.config.env.save_dir).name or "albef",
        }
        if launcher.gpus_per_node:
            params["gpus_per_node"] = launcher.gpus_per_node
        if launcher.mem_gb:
            params["mem_gb"] = launcher.mem_gb
        slurm_only = {"slurm_partition": launcher.partition, "slurm_account": launcher.account,
                      "slurm_qos": launcher.qos, "slurm_constraint": launcher.constraint}
        if executor.cluster == "slurm":
            params.update({k: v for k, v in slurm_only.items() if v})
            params["slurm_signal_delay_s"] = 120
        executor.update_parameters(**params)
        return executor

    def launch(self) -> Any:
        executor = self.build_executor()
        config = OmegaConf.to_container(self.config, resolve=True)
        job = executor.submit(SubmititJob(config))
        logger.info("submitted job %s (%s) ; logs in %s", job.job_id, executor.cluster,
                    self.config.launcher.folder)
        if self.config.launcher.wait or executor.cluster == "debug":
            return job.results() if self.config.launcher.tasks_per_node * self.config.launcher.nodes > 1 \
                else job.result()
        return job
