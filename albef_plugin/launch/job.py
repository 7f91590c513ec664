"""What runs in each task of a submitit job, and what it does when SLURM stops it.

A training job always runs with ``checkpoint.resume=true`` (set at submission): whatever
requeues it (the USR2 handler below, ``scontrol requeue``, an admin, a node failure), it
continues from ``<save_dir>/current.ckpt``. Only the config travels in the pickle, never a
model.

On a stop signal (see ``albef_plugin.trainers.preemption``) every rank finishes the same
update, rank 0 writes ``current.ckpt``, then:

* ``USR2`` (SLURM's warning before the time limit, or a preemption notice): rank 0 requeues
  the job with submitit's own requeue (``scontrol requeue``, counting time-outs against
  ``launcher.max_num_timeout``); when that count is spent, the job fails with a message
  saying where the checkpoint is.
* ``SIGTERM`` (SLURM requeued or cancelled the job itself, or the node goes down): nothing is
  requeued here; SLURM decides.

The task then exits with ``SystemExit``, which submitit does not report as an exception.
"""
from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, Dict, Optional

from omegaconf import OmegaConf

from albef_plugin.launch.errors import LaunchError
from albef_plugin.launch.slurm_resources import default_signal_delay_s
from albef_plugin.trainers.preemption import STOP_SIGNALS, RunPreempted

logger = logging.getLogger(__name__)

__all__ = ["SubmititJob", "REQUEUE_LOCK_WAIT_S"]

# A requeued job may start while its predecessor still holds the save_dir lock.
REQUEUE_LOCK_WAIT_S = 120.0


def quiet_submitit_logger() -> None:
    """submitit's logger has its own handler: do not also print its lines through ours."""
    logging.getLogger("submitit").propagate = False


def _submitit_signal_handler(signum: int) -> Optional[Any]:
    """submitit's ``SignalHandler`` installed for ``signum`` (before we take the signal over)."""
    current = signal.getsignal(signum)
    return getattr(current, "__self__", None)


def _use_allocated_cpus() -> None:
    """torch would start one thread per CPU of the node, not of the task."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit() and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(int(cpus))


def _run_job(cfg: Any) -> Any:
    from albef_plugin.run import run_job

    # run_job takes the save_dir lock; a requeued job waits for its predecessor to let go
    return run_job(cfg, lock_wait_s=REQUEUE_LOCK_WAIT_S)


class SubmititJob:
    """The picklable callable submitit runs in each task.

    Args:
        config: the resolved config as plain containers (no resolvers needed remotely),
            with ``checkpoint.resume=true``.
    """

    def __init__(self, config: Dict[str, Any]) -> None:
        self.config = config

    def __call__(self) -> Any:
        import submitit

        from albef_plugin.run import setup_console_logging

        env = submitit.JobEnvironment()
        quiet_submitit_logger()
        setup_console_logging(self.config["env"]["log_level"], env.global_rank)
        handler = _submitit_signal_handler(env._usr_sig())
        if env.cluster != "debug":  # (debug runs inside the submitting process)
            STOP_SIGNALS.install()  # after submitit's: USR2 and SIGTERM now only set a flag
            signal.signal(signal.SIGCONT, signal.SIG_DFL)  # sent with SIGTERM; nothing to log
        _use_allocated_cpus()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        save_dir = self.config["env"]["save_dir"]
        try:
            return _run_job(OmegaConf.create(self.config))
        except RunPreempted as stop:
            self._stop_for_requeue(stop, env, handler)
        except Exception as exc:
            logger.error("job %s failed on %s (rank %d of %d): %s: %s. env.save_dir=%s keeps its "
                         "last checkpoint; once fixed, submit again with checkpoint.resume=true.",
                         env.job_id, socket.gethostname(), env.global_rank, env.num_tasks,
                         type(exc).__name__, exc, save_dir)
            raise
        finally:
            # The interpreter's final garbage collection walks every object of torch and
            # transformers: tens of seconds on a busy node, past SLURM's KillWait after a
            # stop. Nothing needs collecting at exit, so leave the objects to the OS.
            if env.cluster != "debug":
                gc.freeze()

    def _stop_for_requeue(self, stop: RunPreempted, env: Any, handler: Optional[Any]) -> None:
        where = f"job {env.job_id} on {socket.gethostname()}"
        # The state is saved: from here on SLURM's SIGTERM (sent to every task once the job is
        # requeued) must not turn a clean exit into "task N: Terminated". SIG_IGN, unlike a
        # Python handler, still holds while the interpreter shuts down.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if env.global_rank != 0:
            logger.info("%s: rank %d stopped after update %d; rank 0 handles the requeue",
                        where, env.global_rank, stop.update)
            raise SystemExit(0)
        if stop.signal_name != "SIGUSR2":  # the signal all ranks agreed on
            logger.warning("%s: %s Not requeued from here: SLURM requeues the job itself if it "
                           "sent %s for a requeue or a preemption (after scancel it stays "
                           "stopped).", where, stop, stop.signal_name)
            raise SystemExit(0)
        self._requeue(stop, env, handler, where)

    def _requeue(self, stop: RunPreempted, env: Any, handler: Optional[Any], where: str) -> None:
        from submitit.core.job_environment import _checkpoint

        if handler is None:  # not started by submitit's process_job (e.g. called directly)
            raise LaunchError(f"{where}: stopped by USR2 after update {stop.update} but there is no "
                              f"submitit job to requeue; resume with checkpoint.resume=true.")
        delayed = handler._delayed
        timed_out = self._near_time_limit(handler)
        countdown = delayed._timeout_countdown - int(timed_out)
        if countdown < 0:
            raise LaunchError(
                f"{where}: reached its time limit again and launcher.max_num_timeout="
                f"{self.config['launcher']['max_num_timeout']} requeues are spent, so it is not "
                f"requeued. Nothing is lost: {stop.checkpoint} holds update {stop.update}. "
                f"Continue by submitting the same command with checkpoint.resume=true (raise "
                f"launcher.timeout_min or launcher.max_num_timeout).")
        reason = _checkpoint(delayed, handler._job_paths.submitted_pickle, countdown)
        if reason:
            raise LaunchError(f"{where}: not requeued ({reason}); {stop.checkpoint} holds update "
                              f"{stop.update}: resume with checkpoint.resume=true.")
        logger.warning("%s: %s after update %d; %s (%s). Requeueing; the job resumes from %s "
                       "(%d time-out requeue(s) left).", where, stop.signal_name, stop.update,
                       "time limit near" if timed_out else "preempted",
                       f"signal received {STOP_SIGNALS.count} time(s)", stop.checkpoint, countdown)
        sys.stdout.flush()
        env._requeue(countdown)  # scontrol requeue (SLURM); the local executor exits here
        raise SystemExit(0)

    def _near_time_limit(self, handler: Any) -> bool:
        """USR2 because the time limit is near (counts against max_num_timeout), or a preemption.

        submitit's own test calls any job shorter than 10 minutes timed out; here the job is
        timed out when the signal came within a minute of when the time-limit warning is due.
        """
        launcher = self.config["launcher"]
        delay = launcher.get("signal_delay_s") or default_signal_delay_s(launcher["timeout_min"])
        received = STOP_SIGNALS.first_time or time.time()  # (another rank may have got it)
        ran_s = received - handler._start_time
        return ran_s >= launcher["timeout_min"] * 60 - delay - 60

    def checkpoint(self) -> Any:
        """What submitit requeues: the same job (it resumes from ``current.ckpt``)."""
        import submitit

        config = dict(self.config)
        config["checkpoint"] = {**config["checkpoint"], "resume": True}
        return submitit.helpers.DelayedSubmission(SubmititJob(config))
