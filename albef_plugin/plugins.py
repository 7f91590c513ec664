"""Where components come from: built-ins, ``env.user_dir`` and entry-point plugins.

Registration happens when a module is imported (its decorators run), so every process
calls :func:`setup_imports` before it looks anything up in a registry. Plugins are
imported before configs are resolved, so a plugin's model can be selected with
``model=<its name>`` and its defaults are merged like a built-in's.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import sys
from pathlib import Path
from typing import List, Optional

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "albef_plugin.plugins"
BUILTIN_MODULES = (
    "albef_plugin.models",
    "albef_plugin.losses",
    "albef_plugin.processors",
    "albef_plugin.datasets",
    "albef_plugin.metrics",
    "albef_plugin.trainers",
    "albef_plugin.launch",
)
_loaded_plugins: List[str] = []


def import_builtin_components() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def import_user_dir(user_dir: str) -> str:
    """Import a plugin given as a dotted module name, a package folder or a ``.py`` file.

    Returns the module name it was imported as.
    """
    path = Path(user_dir).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_file() and path.suffix != ".py":
            raise ImportError(f"env.user_dir={user_dir!r} is a file but not a .py module.")
        if path.is_dir() and not (path / "__init__.py").exists():
            raise ImportError(f"env.user_dir={user_dir!r} is a folder without __init__.py; make it "
                              f"a package that imports the modules registering your components.")
        parent = str(path.parent)
        if parent not in sys.path:
            sys.path.insert(0, parent)
        module_name = path.stem if path.is_file() else path.name
    else:
        module_name = user_dir
    try:
        importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ImportError(f"env.user_dir={user_dir!r} is neither an existing path nor an "
                              f"importable module ({exc}).") from exc
        raise
    return module_name


def load_entry_point_plugins() -> List[str]:
    """Import every plugin installed under the ``albef_plugin.plugins`` entry-point group."""
    names = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry_point.load()
        names.append(entry_point.name)
    return names


def setup_imports(user_dir: Optional[str] = None) -> List[str]:
    """Import built-ins, entry-point plugins, then ``user_dir``; return the plugins loaded."""
    import_builtin_components()
    for name in load_entry_point_plugins():
        if name not in _loaded_plugins:
            _loaded_plugins.append(name)
    if user_dir:
        module = import_user_dir(user_dir)
        if module not in _loaded_plugins:
            _loaded_plugins.append(module)
    if _loaded_plugins:
        logger.info("plugins loaded: %s", ", ".join(_loaded_plugins))
    return list(_loaded_plugins)


def loaded_plugins() -> List[str]:
    return list(_loaded_plugins)
