"""Stopping a run cleanly on a signal: every rank finishes the same update, then a checkpoint.

SLURM announces the end of a job with a signal: ``USR2`` some time before the time limit or
a preemption (``sbatch --signal``, set by the submitit launcher), ``SIGTERM`` when the job
is requeued (``scontrol requeue``, an admin, a node going down) or cancelled, followed by
``SIGKILL`` after ``KillWait`` (30 s by default).

* :class:`StopSignals` turns those signals into a flag. The handler does nothing else (no
  I/O, no collective: a signal handler runs between two bytecodes of whatever the main
  thread was doing), so a signal arriving twice is harmless.
* Ranks do not all receive the signal at the same moment (or at all). :class:`StopAgreement`
  makes them agree: after each update every rank sends its flag in one small all-reduce
  (MAX) on a separate gloo group and reads the result of the *previous* update's
  all-reduce, which has long finished, so the training step never waits for it. All ranks
  therefore see the stop at the same update, one update after the signal.
* The trainer then leaves its loop, writes ``current.ckpt`` (rank 0) and raises
  :class:`RunPreempted`; the launcher decides whether to requeue.
* DataLoader workers ignore these signals (:func:`ignore_stop_signals`): the main process
  shuts them down itself, instead of a worker dying with "killed by signal: Terminated".
"""
from __future__ import annotations

import logging
import signal
import time
from typing import Any, Dict, Optional, Tuple

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = ["StopSignals", "STOP_SIGNALS", "StopAgreement", "RunPreempted", "ignore_stop_signals",
           "STOP_SIGNAL_NUMBERS"]

STOP_SIGNAL_NUMBERS = (signal.SIGUSR2, signal.SIGTERM)
# What a rank sends in the all-reduce (MAX wins): SIGTERM outranks USR2, because SLURM is then
# ending (or requeueing) the job itself and the job must not requeue it a second time.
_FLAG_OF = {"SIGUSR2": 1, "SIGTERM": 2}
_NAME_OF = {value: name for name, value in _FLAG_OF.items()}


class RunPreempted(Exception):
    """Training stopped on a signal after writing its checkpoint; the run is not finished."""

    def __init__(self, signal_name: str, update: int, checkpoint: str) -> None:
        super().__init__(f"stopped by {signal_name} after update {update}; state saved in "
                         f"{checkpoint}. Continue with checkpoint.resume=true (same env.save_dir).")
        self.signal_name = signal_name
        self.update = update
        self.checkpoint = checkpoint


class StopSignals:
    """Records stop signals (USR2, SIGTERM) received by this process."""

    def __init__(self) -> None:
        self.first: Optional[str] = None
        self.count = 0
        self.first_time = 0.0
        self._previous: Dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.first is not None

    def install(self) -> None:
        """Route USR2 and SIGTERM here (main thread only); idempotent."""
        for signum in STOP_SIGNAL_NUMBERS:
            current = signal.getsignal(signum)
            if current != self._handle:
                self._previous.setdefault(signum, current)
                signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def reset(self) -> None:
        self.first, self.count, self.first_time = None, 0, 0.0

    def _handle(self, signum: int, frame: Any = None) -> None:
        # only assignments: safe whatever the main thread was doing
        self.count += 1
        if self.first is None:
            self.first = signal.Signals(signum).name
            self.first_time = time.time()


STOP_SIGNALS = StopSignals()  # one per process: signals are per process


def ignore_stop_signals() -> None:
    """For DataLoader workers: the main process decides when they stop."""
    for signum in STOP_SIGNAL_NUMBERS:
        signal.signal(signum, signal.SIG_IGN)


class StopAgreement:
    """All ranks agree on "stop after this update", without waiting inside the step.

    Call :meth:`after_update` once per update on every rank, at the same point of the loop.
    It returns True on every rank at the same update; :attr:`signal_name` is then the
    same on every rank too (SIGTERM if any rank got it, else USR2). Create it on every rank at
    the same time (it builds a process group).
    """

    def __init__(self, signals: StopSignals = STOP_SIGNALS) -> None:
        self.signals = signals
        self.world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        # a gloo group on CPU tensors: the flag never touches the GPU streams
        self.group = dist.new_group(backend="gloo") if self.world_size > 1 else None
        self._pending: Optional[Tuple[Any, torch.Tensor]] = None
        self.agreed_flag = 0

    def after_update(self) -> bool:
        local = _FLAG_OF.get(self.signals.first or "", 0)
        if self.group is None:
            self.agreed_flag = local
            return local > 0
        if self._pending is not None:
            work, flag = self._pending
            work.wait()                 # sent one update ago: already done
            self.agreed_flag = int(flag[0])
        flag = torch.tensor([local], dtype=torch.int32)
        self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group,
                                         async_op=True), flag)
        return self.agreed_flag > 0

    def close(self) -> None:
        """Wait for the last all-reduce (every rank sent it) before the group goes away."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None

    @property
    def signal_name(self) -> str:
        """The agreed stop signal (``SIGTERM`` or ``SIGUSR2``)."""
        return _NAME_OF.get(self.agreed_flag, "no signal")
