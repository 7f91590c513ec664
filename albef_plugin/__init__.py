"""albef-plugin: ALBEF (Align before Fuse, Li et al., NeurIPS 2021) as an MMF-style plugin.

Importing the package is cheap; components register when their subpackages are
imported (``albef_plugin.plugins.setup_imports()`` imports them all).
"""
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "run", "load_model_and_preprocess"]


def __getattr__(name: str) -> Any:  # lazy re-exports keep `import albef_plugin` light
    if name == "run":
        from albef_plugin.run import run

        return run
    if name == "load_model_and_preprocess":
        from albef_plugin.inference import load_model_and_preprocess

        return load_model_and_preprocess
    raise AttributeError(f"module 'albef_plugin' has no attribute {name!r}")
