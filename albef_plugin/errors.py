"""The one base class of errors the user can fix (a config key, a path, a file, a flag).

``albef_plugin.run.main`` turns any :class:`UserError` into a single ``error: <message>``
line and exit code 2, so such errors carry a message that names the key / file / item and
says what to do. Everything else (a bug, a crash in torch) keeps its traceback.
"""
from __future__ import annotations

__all__ = ["UserError", "USER_ERROR_EXIT_CODE"]

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A problem the user can fix; the message says what and how."""
