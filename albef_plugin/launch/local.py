"""The local launcher: run the job in this process.

This covers a single CPU or GPU (``python tools/run.py ...``) and every process of a
``torchrun --nproc_per_node=N tools/run.py ...`` launch: torchrun starts the
processes and sets RANK / WORLD_SIZE, which ``run_job`` reads.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from albef_plugin.registry import registry


@registry.register_launcher("local")
class LocalLauncher:
    def __init__(self, config: DictConfig) -> None:
        self.config = config

    def launch(self) -> Any:
        from albef_plugin.run import run_job

        return run_job(self.config)
