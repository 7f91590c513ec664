"""The contract every registered model follows (see docs/architecture.md)."""
from __future__ import annotations

import os
from dataclasses import dataclass, is_dataclass
from typing import Any, ClassVar, Dict, Mapping, Optional, Set, Tuple

import torch
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

    Class attributes read by the tests over every registered model (tests/models/test_all_models.py):
    ``params_without_grad`` lists (regexes of) trainable parameters that get no gradient from
    the training forward by design; ``tiny_overrides()`` gives a few-second CPU size and
    ``dummy_batch()`` a random training batch for the model at hand.
    ``min_batch_size_per_rank`` is the smallest training batch per process the model can learn
    from; the config loader refuses smaller ``training.batch_size`` values at start-up.

    ``loaded_weights`` maps each config key (relative to the model's config, e.g.
    ``checkpoint``, ``image_encoder.pretrained``) whose weights file the model loaded while it
    was built to that file; empty when it was built from a fresh initialisation. The trainer
    reports it when it evaluates a model without loading a checkpoint itself.
    """

    params_without_grad: ClassVar[Tuple[str, ...]] = ()
    min_batch_size_per_rank: ClassVar[int] = 1

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
        self.loaded_weights: Dict[str, str] = {}

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

    @classmethod
    def tiny_overrides(cls) -> Dict[str, Any]:
        """Config overrides for a tiny instance (tests, smoke runs)."""
        raise NotImplementedError(f"{cls.__name__} defines no tiny_overrides()")

    def dummy_batch(self, batch_size: int = 4, seed: int = 0) -> Dict[str, Any]:
        """A random training batch this model accepts (tests, smoke runs)."""
        raise NotImplementedError(f"{type(self).__name__} defines no dummy_batch()")

    def checkpoint_filter(self, state: Mapping[str, torch.Tensor]
                          ) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
        """Map a read state dict onto this model (``load_checkpoint`` step 2).

        Returns the state dict to load and ``{key: reason}`` of the differences that are
        expected for that source (file keys not used, model keys not in the file). The default
        renames nothing and expects no difference.
        """
        return dict(state), {}

    def no_weight_decay_keys(self) -> Set[str]:
        """Parameter names to exclude from weight decay beyond the trainer's default rule."""
        return set()
