"""The contract every registered model follows (see docs/architecture.md)."""
from __future__ import annotations

import os
from dataclasses import dataclass, is_dataclass
from typing import Any, Dict, Optional, Set

from omegaconf import DictConfig, OmegaConf
from torch import nn

from albef_plugin.train_state import TrainState

__all__ = ["BaseModel", "packaged_model_yaml"]

_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "models")


def packaged_model_yaml(name: str) -> Optional[str]:
    """Path of ``albef_plugin/configs/models/<name>.yaml`` if it exists, else None."""
    path = os.path.join(_CONFIG_DIR, f"{name}.yaml")
    return path if os.path.isfile(path) else None


class BaseModel(nn.Module):
    """Base of registered models.

    Subclasses define a nested ``@dataclass Config``, optionally ``config_path()`` (a YAML of
    defaults merged over ``Config``), and ``forward(batch, train_state) -> dict`` whose
    ``"losses"`` maps names to scalar tensors (the trainer sums them).
    """

    @dataclass
    class Config:
        pass

    def __init__(self, config: Any) -> None:
        super().__init__()
        if is_dataclass(config):
            config = OmegaConf.structured(config)
        if not isinstance(config, DictConfig):
            raise TypeError(f"{type(self).__name__} expects an OmegaConf DictConfig of its Config "
                            f"(use albef_plugin.models.build_model), got {type(config).__name__}")
        self.config = config

    @classmethod
    def config_path(cls) -> Optional[str]:
        """YAML of defaults merged over ``Config``; None when there is none."""
        return None

    def forward(self, batch: Dict[str, Any],
                train_state: Optional[TrainState] = None) -> Dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(batch, train_state)")

    def alpha_for(self, state: Optional[TrainState]) -> Optional[float]:
        """Distillation weight at this point of training; None for models without distillation."""
        return None

    def no_weight_decay_keys(self) -> Set[str]:
        """Parameter names to exclude from weight decay beyond the trainer's default rule."""
        return set()
