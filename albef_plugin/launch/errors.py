"""Errors of submission and of a job's life on the cluster that the user can act on."""
from __future__ import annotations

from albef_plugin.config.loader import ConfigError
from albef_plugin.errors import UserError

__all__ = ["LaunchError"]


class LaunchError(ConfigError, UserError):
    """A job cannot be submitted, or stopped for good; the message names what and where.

    ``albef_plugin.run.main`` prints it as one ``error:`` line (a UserError).
    """
