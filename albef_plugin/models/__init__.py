"""Models: the ``BaseModel`` contract, encoders, and the registered ALBEF models.

``build_model(name, overrides)`` is the one way to make a registered model from its typed
defaults; ``default_model_config(cls)`` is the same defaults merge, reused by the config loader.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence, Type, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from albef_plugin.config.loader import ConfigError, default_component_config, merge_checked
from albef_plugin.models.base import BaseModel
from albef_plugin.registry import registry

# Importing the model modules runs their @registry decorators.
from albef_plugin.models import albef as _albef  # noqa: F401  (registers the ALBEF family)
from albef_plugin.models.checkpoints import LoadResult, load_checkpoint

__all__ = ["BaseModel", "ModelConfigError", "build_model", "model_config", "default_model_config",
           "LoadResult", "load_checkpoint"]

Overrides = Union[None, Mapping[str, Any], DictConfig, Sequence[str]]


class ModelConfigError(ValueError):
    """A model config key or value is wrong; the message names the key and the fix."""


def default_model_config(cls: Type[BaseModel]) -> DictConfig:
    """``cls.Config`` (typed, struct mode) merged with the YAML at ``cls.config_path()``.

    The same merge the run-config loader does for every registered component.
    """
    try:
        return default_component_config(cls)
    except (ConfigError, OSError, OmegaConfBaseException) as error:
        raise ModelConfigError(f"model {getattr(cls, '__name__', cls)}: {error}") from error


def model_config(name: str, overrides: Overrides = None) -> DictConfig:
    """The config ``build_model(name, overrides)`` uses: defaults, then ``overrides``.

    ``overrides`` is a (nested) dict, a DictConfig, or a dotlist like ``["embed_dim=128"]``.
    An unknown key or a value of the wrong type raises :class:`ModelConfigError` naming it.
    """
    cls = registry.get_model_class(name)
    config = default_model_config(cls)
    if overrides:
        if isinstance(overrides, (list, tuple)):
            update: Any = OmegaConf.from_dotlist(list(overrides))
        else:
            update = overrides
        try:
            config = merge_checked(config, update, source="overrides")
        except ConfigError as error:
            raise ModelConfigError(f"model {name!r}: {error}") from error
    OmegaConf.set_struct(config, True)
    return config


def build_model(name: str, overrides: Overrides = None) -> BaseModel:
    """A randomly initialised registered model from its defaults plus ``overrides``.

    Never touches the network; pretrained weights are loaded separately.
    """
    config = model_config(name, overrides)
    cls = registry.get_model_class(name)
    return cls(config)

