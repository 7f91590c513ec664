"""Launchers: where and how ``run_job`` runs (this process, or a submitit/SLURM job)."""
from albef_plugin.launch import local, submitit_launcher  # noqa: F401  (registers launchers)
