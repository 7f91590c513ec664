"""One run per ``env.save_dir``: refuse to mix runs, lock the folder, clear leftovers.

* :func:`assert_save_dir_usable` refuses a fresh (non-resuming) run into a folder that
  already holds a run's checkpoints or metrics, unless ``checkpoint.overwrite=true``.
* :func:`clear_run_files` is what ``overwrite`` does: it deletes the files a run writes
  (and nothing else, e.g. a launcher's ``submitit/`` folder stays).
* :class:`SaveDirLock` holds the folder for a run's lifetime. It is a lock *file*
  (``<save_dir>/.lock``: host, PID, a token and a heartbeat) created with ``O_EXCL``,
  because ``flock`` is not reliable on the network filesystems clusters use (NFS,
  Lustre). A daemon thread refreshes the heartbeat; a lock whose holder is a dead
  process on this host, or whose heartbeat is older than ``stale_after_s``, is taken
  over (rename, then create, so two candidates cannot both win).
* :func:`remove_stale_temp_files` deletes ``*.tmp`` files left by a killed or failed
  write; call it while holding the lock (then no other writer can own them).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from typing import Any, Dict, List, Optional

from albef_plugin.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["SaveDirError", "SaveDirLock", "assert_save_dir_usable", "holds_a_run",
           "clear_run_files", "remove_stale_temp_files", "LOCK_FILE"]

LOCK_FILE = ".lock"
# What marks a folder as holding a run (a config.yaml or train.log alone does not: a run
# that failed at start writes them and nothing else).
RUN_MARKERS = ("current.ckpt", "best.ckpt", "metrics.jsonl")
SNAPSHOT_DIR = "models"
# Everything a run writes, removed by checkpoint.overwrite=true.
RUN_FILES = RUN_MARKERS + ("config.yaml", "train.log", "training_curves.png")
RUN_DIRS = (SNAPSHOT_DIR, "tensorboard")


class SaveDirError(UserError):
    """The save_dir holds another run, or is locked by a live one."""


# ----------------------------------------------------------------------------- one run
def holds_a_run(save_dir: str) -> List[str]:
    """The run files found in ``save_dir`` (empty: the folder holds no run)."""
    found = [name for name in RUN_MARKERS if os.path.isfile(os.path.join(save_dir, name))]
    snapshots = os.path.join(save_dir, SNAPSHOT_DIR)
    if os.path.isdir(snapshots) and any(n.endswith(".ckpt") for n in os.listdir(snapshots)):
        found.append(SNAPSHOT_DIR + "/")
    return found


def assert_save_dir_usable(save_dir: str, *, resume: bool, overwrite: bool) -> None:
    """Refuse a fresh run into a folder that already holds one.

    A run that resumes (``checkpoint.resume=true``) or overwrites
    (``checkpoint.overwrite=true``: the caller then calls :func:`clear_run_files`) may
    use it; with both, resume wins (a requeued job of an overwriting run resumes).

    Raises:
        SaveDirError: with the three ways out.
    """
    if resume or overwrite:
        return
    found = holds_a_run(save_dir)
    if found:
        raise SaveDirError(
            f"env.save_dir={save_dir} already holds a run ({', '.join(found)}). Choose one: "
            f"continue it with checkpoint.resume=true; use a new env.save_dir; or start it "
            f"again from scratch with checkpoint.overwrite=true (deletes its checkpoints and "
            f"metrics).")


def clear_run_files(save_dir: str) -> List[str]:
    """Delete what a previous run wrote into ``save_dir``; returns the removed names."""
    removed = []
    for name in RUN_FILES:
        path = os.path.join(save_dir, name)
        if os.path.isfile(path):
            os.remove(path)
            removed.append(name)
    for name in RUN_DIRS:
        path = os.path.join(save_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
            removed.append(name + "/")
    for name in os.listdir(save_dir) if os.path.isdir(save_dir) else []:
        if name.endswith(".diverged"):  # set aside by a divergence stop (divergence.py)
            os.remove(os.path.join(save_dir, name))
            removed.append(name)
    removed += remove_stale_temp_files(save_dir)
    if removed:
        logger.warning("checkpoint.overwrite=true: removed the previous run's %s from %s",
                       ", ".join(removed), save_dir)
    return removed


def remove_stale_temp_files(save_dir: str) -> List[str]:
    """Delete ``*.tmp`` files (partial writes) in ``save_dir`` and its ``models/``."""
    removed = []
    for folder in (save_dir, os.path.join(save_dir, SNAPSHOT_DIR)):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if name.endswith(".tmp") and os.path.isfile(path):
                size = os.path.getsize(path)
                os.remove(path)
                removed.append(os.path.relpath(path, save_dir))
                logger.info("removed %s (%.1f MB), left by an interrupted write", path, size / 2**20)
    return removed


# -------------------------------------------------------------------------------- lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class SaveDirLock:
    """Exclusive use of ``save_dir`` by this process, across hosts sharing the folder.

    Use as a context manager (``with SaveDirLock(save_dir): ...``).

    Args:
        save_dir: the run folder (created if missing).
        wait_s: how long to wait for a live holder to release (0: fail at once; a
            requeued job waits for its predecessor, e.g. 120 s).
        heartbeat_s: how often the holder refreshes the lock file.
        stale_after_s: a lock not refreshed for this long is taken over (its holder is
            dead or hung). Compared with this host's clock: clusters keep clocks in sync.
    """

    def __init__(self, save_dir: str, *, wait_s: float = 0.0, heartbeat_s: float = 10.0,
                 stale_after_s: float = 60.0) -> None:
        self.save_dir = str(save_dir)
        self.path = os.path.join(self.save_dir, LOCK_FILE)
        self.wait_s = float(wait_s)
        self.heartbeat_s = float(heartbeat_s)
        self.stale_after_s = max(float(stale_after_s), 2 * self.heartbeat_s)
        self.token = uuid.uuid4().hex
        self.held = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -------------------------------------------------------------- public
    def acquire(self) -> "SaveDirLock":
        os.makedirs(self.save_dir, exist_ok=True)
        deadline = time.monotonic() + self.wait_s
        while True:
            if self._try_create():
                break
            holder = self._read()
            if self._is_stale(holder):
                self._take_over(holder)
                continue
            if time.monotonic() >= deadline:
                raise SaveDirError(self._busy_message(holder))
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        self.held = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="save-dir-lock", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self._read()
        if holder is not None and holder.get("token") == self.token:
            with _ignore_missing():
                os.remove(self.path)
        self.held = False

    def __enter__(self) -> "SaveDirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # ------------------------------------------------------------- internals
    def _record(self) -> Dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                "heartbeat": time.time()}

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump(self._record(), handle)
        return True

    def _read(self) -> Optional[Dict[str, Any]]:
        """The lock file's record; ``{}`` if unreadable (being written), None if absent."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                record = json.load(handle)
            return record if isinstance(record, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _age(self, holder: Dict[str, Any]) -> float:
        beat = holder.get("heartbeat")
        if not isinstance(beat, (int, float)):  # torn or foreign content: judge by mtime
            try:
                beat = os.path.getmtime(self.path)
            except FileNotFoundError:
                return float("inf")
        return time.time() - float(beat)

    def _is_stale(self, holder: Optional[Dict[str, Any]]) -> bool:
        if holder is None:  # released meanwhile
            return False
        pid = holder.get("pid")
        if holder.get("host") == socket.gethostname() and isinstance(pid, int) \
                and holder.get("token") != self.token and not _pid_alive(pid):
            return True
        return self._age(holder) > self.stale_after_s

    def _take_over(self, holder: Dict[str, Any]) -> None:
        # rename is atomic: of several candidates only one moves the stale file away
        aside = f"{self.path}.stale.{self.token}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        logger.warning("%s: took over a stale lock of PID %s on host %s (heartbeat %.0f s ago)",
                       self.save_dir, holder.get("pid"), holder.get("host"), self._age(holder))
        with _ignore_missing():
            os.remove(aside)

    def _busy_message(self, holder: Optional[Dict[str, Any]]) -> str:
        holder = holder or {}
        waited = f" (waited {self.wait_s:.0f} s)" if self.wait_s > 0 else ""
        return (f"env.save_dir={self.save_dir} is in use by another run: PID {holder.get('pid', '?')} "
                f"on host {holder.get('host', '?')}, heartbeat {self._age(holder):.0f} s ago"
                f"{waited}. Wait for it to finish, stop it, or use another env.save_dir. (The lock "
                f"file {self.path} is taken over automatically once its heartbeat is "
                f"{self.stale_after_s:.0f} s old.)")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = self._read()
            if holder is not None and holder and holder.get("token") != self.token:
                logger.error("%s: the save_dir lock was taken over by PID %s on host %s; this "
                             "run no longer holds it", self.save_dir, holder.get("pid"),
                             holder.get("host"))
                return
            tmp = f"{self.path}.{self.token}.beat"
            try:
                with open(tmp, "w", encoding="utf-8") as handle:
                    json.dump(self._record(), handle)
                os.replace(tmp, self.path)
            except OSError as exc:  # a full disk or a network hiccup must not kill the run
                logger.warning("could not refresh the save_dir lock %s: %s", self.path, exc)
                with _ignore_missing():
                    os.remove(tmp)


class _ignore_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return exc_type is not None and issubclass(exc_type, OSError) \
            and getattr(exc, "errno", None) == errno.ENOENT
