"""The one entry point: ``run(opts)`` builds the config and hands it to a launcher.

``tools/run.py`` and the ``albef-run`` console script call :func:`run`; notebooks and
other projects may call it too (``run(["config=...", "training.max_updates=10"])``).
Each process that does the work (one per GPU under torchrun or SLURM) calls
:func:`run_job`.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

logger = logging.getLogger("albef_plugin")


class _CurrentStdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is now (a notebook or a test may replace it)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: D401
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_console_logging(level: str = "info", rank: int = 0) -> None:
    """Console logging for this process; other ranks only report warnings."""
    root = logging.getLogger()
    numeric = getattr(logging, str(level).upper(), logging.INFO)
    if rank != 0:
        numeric = max(numeric, logging.WARNING)
    formatter = logging.Formatter(f"%(asctime)s | %(levelname)s | rank{rank} | %(name)s: %(message)s",
                                  "%H:%M:%S")
    consoles = [h for h in root.handlers if getattr(h, "_albef_console", False)]
    for handler in consoles:  # set up before the rank was known: relabel
        handler.setFormatter(formatter)
    if not consoles:
        handler = _CurrentStdoutHandler()
        handler.setFormatter(formatter)
        handler._albef_console = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(numeric)


def save_resolved_config(cfg: DictConfig) -> Path:
    """Write the resolved config to ``<env.save_dir>/config.yaml`` (atomically)."""
    from albef_plugin.trainers.checkpointer import atomic_write

    save_dir = Path(cfg.env.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    path = save_dir / "config.yaml"
    text = OmegaConf.to_yaml(cfg, resolve=True).encode("utf-8")
    atomic_write(str(path), lambda handle: handle.write(text), what="config.yaml")
    return path


def run_job(cfg: DictConfig, *, lock_wait_s: float = 0.0) -> Any:
    """One process's work: join the process group, build the trainer, run ``run_type``.

    A training run refuses a save_dir that holds another run (unless it resumes or
    ``checkpoint.overwrite=true``), and rank 0 holds the save_dir lock for the whole job.

    Args:
        lock_wait_s: how long rank 0 waits for another holder of the save_dir lock (a
            requeued job waits for its predecessor to let go); 0 fails at once.
    """
    from albef_plugin import distributed
    from albef_plugin.plugins import setup_imports
    from albef_plugin.registry import registry
    from albef_plugin.trainers.build import parse_run_type
    from albef_plugin.trainers.save_dir import (SaveDirLock, assert_save_dir_usable,
                                                clear_run_files, remove_stale_temp_files)

    # Spawned or requeued processes start with empty registries: import again.
    setup_imports(cfg.env.user_dir or None)
    save_dir, checkpoint = str(cfg.env.save_dir), cfg.checkpoint
    trains = parse_run_type(cfg.run_type)[0]
    if trains:  # on every rank, before joining: a refusal leaves no rank waiting for another
        assert_save_dir_usable(save_dir, resume=checkpoint.resume, overwrite=checkpoint.overwrite)
    # console logging first, so the "rank r of n" line of init_distributed shows
    setup_console_logging(cfg.env.log_level, distributed.rank_from_env())
    distributed.init_distributed(cfg.distributed.backend, cfg.distributed.timeout_minutes)
    setup_console_logging(cfg.env.log_level, distributed.get_rank())
    lock = SaveDirLock(save_dir, wait_s=lock_wait_s) if distributed.is_main_process() \
        else contextlib.nullcontext()
    try:
        with lock:
            if distributed.is_main_process():
                if trains and checkpoint.overwrite and not checkpoint.resume:
                    clear_run_files(save_dir)
                remove_stale_temp_files(save_dir)
                path = save_resolved_config(cfg)
                logger.info("resolved config written to %s", path)
            trainer = registry.get_trainer_class(cfg.training.trainer)(cfg)
            trainer.load()
            return trainer.run()
    finally:
        distributed.destroy_distributed()


def run(opts: Optional[Sequence[str]] = None) -> Any:
    """Build the config from ``opts`` (default: ``sys.argv[1:]``) and launch the job."""
    from albef_plugin.config import build_config
    from albef_plugin.registry import registry

    opts = list(sys.argv[1:] if opts is None else opts)
    setup_console_logging()
    cfg = build_config(opts)
    setup_console_logging(cfg.env.log_level)
    launcher = registry.get_launcher_class(cfg.launcher.type)(cfg)
    return launcher.launch()


def user_error_types() -> tuple:
    """Exceptions that mean "the user can fix this": one ``error:`` line, exit code 2."""
    from albef_plugin.errors import UserError

    types = [UserError]
    for module, name in (("albef_plugin.models", "ModelConfigError"),
                         ("albef_plugin.processors.text", "TokenizerLoadError")):
        try:  # errors of components that keep their own class (they name key and fix)
            types.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console-script entry point (``albef-run``): readable errors instead of tracebacks.

    A user error (bad key or value, missing file, busy save_dir, full disk ...) ends in one
    ``error: <message>`` line on stderr and exit code 2; a diverged run in its
    ``error:`` line (naming the last good checkpoint) and exit code 1.
    """
    from albef_plugin.errors import USER_ERROR_EXIT_CODE
    from albef_plugin.trainers.meter import NonFiniteLossError

    try:
        run(argv)
    except user_error_types() as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
