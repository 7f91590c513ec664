"""Checkpoint files: where they go, how they are written and read, which one a run resumes.

Layout under ``<save_dir>``::

    current.ckpt              the latest state (resume=true continues from here)
    best.ckpt                 the state with the best validation metric so far
    models/model_<update>.ckpt  periodic snapshots, the oldest pruned beyond max_to_keep

Every file is written to ``<file>.tmp`` and renamed with ``os.replace`` (atomic on POSIX),
so a crash while writing leaves the previous file intact. Files hold only tensors,
primitives and containers and are read with ``torch.load(weights_only=True)``: loading a
checkpoint can never run code. Only rank 0 writes.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import zipfile
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

# one error type and one safe torch.load for trainer checkpoints and model weights
from albef_plugin.errors import UserError
from albef_plugin.models.checkpoints import CheckpointError, safe_torch_load
from albef_plugin.models.checkpoints.mapping import group_keys_by_prefix

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "CheckpointError",
    "Checkpointer",
    "atomic_torch_save",
    "load_checkpoint_file",
    "resolve_resume_file",
    "load_model_state",
    "group_keys_by_prefix",
]

CHECKPOINT_FORMAT_VERSION = 1
CURRENT = "current.ckpt"
BEST = "best.ckpt"
MODELS_DIR = "models"
_MODEL_FILE = re.compile(r"^model_(\d+)\.ckpt$")


class DiskFullError(UserError, OSError):
    """A write failed for lack of space (or quota); the previous file is intact."""


_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_LOW_SPACE_BYTES = 16 * 2**20


def _caused_by_full_disk(exc: BaseException, folder: str) -> bool:
    """Whether ``exc`` (or what it wraps) means the disk or quota is full.

    ``torch.save`` reports a failed write as a RuntimeError from its C++ writer, with the
    Python OSError of our file object only in the exception chain; when no errno is found
    at all, an almost full disk is taken as the cause.
    """
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    if isinstance(exc, (OSError, RuntimeError)):
        try:
            return shutil.disk_usage(folder).free < _LOW_SPACE_BYTES
        except OSError:
            return False
    return False


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def atomic_write(path: str, write: Callable[[BinaryIO], None], *, what: str = "file") -> None:
    """``write(handle)`` into ``<path>.tmp``, then rename over ``path``.

    On any failure the temporary file is removed (a partial checkpoint must not keep a
    disk full) and ``path`` keeps its previous content; a full disk raises
    :class:`DiskFullError` naming ``path``.
    """
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException as exc:
        _remove_quietly(tmp)
        folder = os.path.dirname(os.path.abspath(path))
        if isinstance(exc, Exception) and _caused_by_full_disk(exc, folder):
            free = shutil.disk_usage(folder).free / 2**20 if os.path.isdir(folder) else 0.0
            kept = f"the previous {what} is intact" if os.path.exists(path) else f"no {what} was written"
            raise DiskFullError(errno.ENOSPC, f"no space left on device writing {path} "
                                f"({free:.0f} MB free; {kept}). Free some space (e.g. a lower "
                                f"checkpoint.max_to_keep) and start again (checkpoint.resume=true "
                                f"continues a run).") from exc
        raise


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``<path>.tmp``, then rename over ``path`` (see :func:`atomic_write`).

    The file object is ours (not a path handed to torch's C++ writer) so that a failed write
    keeps its errno.
    """
    atomic_write(path, lambda handle: torch.save(obj, handle), what="checkpoint")


def _atomic_copy(src: str, dst: str) -> None:
    def copy(handle: BinaryIO) -> None:
        with open(src, "rb") as source:
            shutil.copyfileobj(source, handle, 2**22)

    atomic_write(dst, copy, what="checkpoint")


def load_checkpoint_file(path: str, allow_unsafe_pickle: bool = False) -> Dict[str, Any]:
    """Read a checkpoint on CPU with ``weights_only=True`` (one helper for every checkpoint
    read: :func:`albef_plugin.models.checkpoints.safe_torch_load`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file needs full unpickling and ``allow_unsafe_pickle`` is off.
    """
    return safe_torch_load(path, allow_unsafe_pickle)


class Checkpointer:
    """Writes and prunes the checkpoint files of one run directory."""

    def __init__(self, save_dir: str, max_to_keep: int = -1) -> None:
        self.save_dir = save_dir
        self.max_to_keep = max_to_keep
        self.current_path = os.path.join(save_dir, CURRENT)
        self.best_path = os.path.join(save_dir, BEST)
        self.models_dir = os.path.join(save_dir, MODELS_DIR)

    def model_path(self, update: int) -> str:
        return os.path.join(self.models_dir, f"model_{update}.ckpt")

    def save(self, payload: Mapping[str, Any], update: int, *, current: bool = True,
             snapshot: bool = True, best: bool = False, verified_through: int = -1) -> List[str]:
        """Serialize ``payload`` once and place it under each requested name.

        Args:
            current: write ``current.ckpt``.
            snapshot: write ``models/model_<update>.ckpt`` (unless max_to_keep == 0) and prune.
            best: write ``best.ckpt``.
            verified_through: pruning keeps the newest snapshot of an update <= this (the
                last one known good, see ``divergence.py``) whatever ``max_to_keep`` says.

        Returns:
            The paths written.
        """
        targets = []
        if snapshot and self.max_to_keep != 0:
            os.makedirs(self.models_dir, exist_ok=True)
            targets.append(self.model_path(update))
        if current:
            targets.append(self.current_path)
        if best:
            targets.append(self.best_path)
        if not targets:
            return []
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_torch_save(dict(payload), targets[0])
        for path in targets[1:]:
            _atomic_copy(targets[0], path)
        if snapshot:
            self.prune(verified_through)
        logger.info("checkpoint of update %d written to %s", update, ", ".join(targets))
        return targets

    def snapshots(self) -> List[Tuple[int, str]]:
        """``(update, path)`` of the files in ``models/``, oldest first."""
        if not os.path.isdir(self.models_dir):
            return []
        found = []
        for name in os.listdir(self.models_dir):
            match = _MODEL_FILE.match(name)
            if match:
                found.append((int(match.group(1)), os.path.join(self.models_dir, name)))
        return sorted(found)

    def prune(self, verified_through: int = -1) -> None:
        """Delete the oldest snapshots beyond ``max_to_keep`` (-1 keeps all), except the
        newest one of an update <= ``verified_through``."""
        if self.max_to_keep < 0:
            return
        snapshots = self.snapshots()
        verified = [path for update, path in snapshots if update <= verified_through]
        protected = verified[-1] if verified else None
        for _, path in snapshots[: max(0, len(snapshots) - self.max_to_keep)]:
            if path == protected:
                continue
            os.remove(path)
            logger.info("removed old checkpoint %s (checkpoint.max_to_keep=%d)", path, self.max_to_keep)


def resolve_resume_file(checkpoint_config: Any, save_dir: str) -> Optional[Tuple[str, str]]:
    """Which file a run starts from, with MMF's precedence.

    1. ``resume_file`` is set and (``resume`` is off or ``<save_dir>/current.ckpt`` is
       missing): that file (it must exist).
    2. ``resume`` is on: ``current.ckpt`` (``best.ckpt`` first with ``resume_best``),
       falling back to the newest readable ``models/model_<update>.ckpt``, then to the other
       one (a lost ``current.ckpt`` does not restart the run from scratch).
    3. Otherwise nothing: a fresh start.

    Returns:
        ``(path, reason)`` or None for a fresh start.
    """
    current = os.path.join(save_dir, CURRENT)
    best = os.path.join(save_dir, BEST)
    resume_file = checkpoint_config.resume_file
    if resume_file and (not checkpoint_config.resume or not os.path.isfile(current)):
        if not os.path.isfile(resume_file):
            raise FileNotFoundError(
                f"checkpoint.resume_file={resume_file!r} does not exist: fix the path, or unset "
                f"checkpoint.resume_file to start from scratch.")
        why = "checkpoint.resume_file is set" + (
            f" and {current} does not exist" if checkpoint_config.resume else "")
        return resume_file, why
    if checkpoint_config.resume:
        order = [best, current] if checkpoint_config.resume_best else [current, best]
        if not os.path.isfile(current) and not checkpoint_config.resume_best:
            snapshot = newest_readable_snapshot(save_dir)
            if snapshot is not None:  # newer progress than best.ckpt, if any
                return snapshot, (f"checkpoint.resume=true and {current} is missing: the newest "
                                  f"readable snapshot")
        for path in order:
            if os.path.isfile(path):
                preferred = path == order[0]
                why = "checkpoint.resume=true" + ("" if preferred else f" and {order[0]} is missing")
                return path, why
        snapshot = newest_readable_snapshot(save_dir)
        if snapshot is not None:
            return snapshot, f"checkpoint.resume=true and {save_dir} has no current.ckpt or best.ckpt"
        logger.info("checkpoint.resume=true but %s has no current.ckpt, best.ckpt or snapshot: "
                    "starting from scratch", save_dir)
    return None


def newest_readable_snapshot(save_dir: str) -> Optional[str]:
    """The newest ``models/model_<update>.ckpt`` whose zip structure is intact (a cheap
    check: a truncated or garbage file is passed over with a warning)."""
    for update, path in reversed(Checkpointer(save_dir).snapshots()):
        if zipfile.is_zipfile(path):
            return path
        logger.warning("snapshot %s is unreadable (truncated or not a checkpoint): skipped", path)
    return None


def load_model_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool,
                     source: str) -> None:
    """``model.load_state_dict`` with missing / unexpected keys listed by module prefix.

    With ``strict`` a mismatch raises :class:`CheckpointError`; otherwise it is logged.
    Tensors with a different shape are always an error (they cannot be loaded).
    """
    own = model.state_dict()
    wrong_shape = [f"  {k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                   for k, v in state_dict.items()
                   if k in own and isinstance(v, torch.Tensor) and own[k].shape != v.shape]
    if wrong_shape:
        raise CheckpointError(f"{source}: tensors with a different shape than the model:\n"
                              + "\n".join(wrong_shape)
                              + "\nCheck the model config (sizes, image resolution) of this run.")
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{source} does not match the model.\nmissing in the checkpoint:\n"
            f"{group_keys_by_prefix(missing) or '  (none)'}\nnot in the model:\n"
            f"{group_keys_by_prefix(unexpected) or '  (none)'}\nTo load the matching weights "
            f"only, set checkpoint.resume_pretrained=true.")
    model.load_state_dict(state_dict, strict=strict)
    if missing:
        logger.warning("%s: %d model keys missing in the checkpoint (left as initialised):\n%s",
                       source, len(missing), group_keys_by_prefix(missing))
    if unexpected:
        logger.warning("%s: %d checkpoint keys unused by the model:\n%s", source, len(unexpected),
                       group_keys_by_prefix(unexpected))
