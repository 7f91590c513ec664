"""Construction of what the trainer runs: datasets, model, DDP wrapping.

Each function reads the keys it needs from the root config and nothing else, so the
trainer's ``load()`` reads as a list of ``build_*`` calls.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from albef_plugin.distributed import get_world_size, main_process_first
from albef_plugin.registry import registry
from albef_plugin.trainers.data import concat_or_single

logger = logging.getLogger(__name__)

__all__ = ["RUN_TYPES", "parse_run_type", "DatasetsBySplit", "build_datasets", "build_model",
           "wrap_model"]

RUN_TYPES = ("train", "val", "test", "train_val", "train_test", "train_val_test")


def parse_run_type(run_type: str) -> tuple:
    """``"train_val_test"`` -> ``(True, ["val", "test"])``: whether to train, then which
    splits to evaluate at the end."""
    if run_type not in RUN_TYPES:
        raise ValueError(f"run_type={run_type!r}: expected one of {', '.join(RUN_TYPES)}.")
    parts = run_type.split("_")
    return parts[0] == "train", [p for p in parts if p != "train"]


@dataclass
class DatasetsBySplit:
    """The built datasets.

    Attributes:
        train: the training datasets concatenated (None when not training).
        train_collate: the collate function of the FIRST training builder, used for the
            concatenation (datasets of one task share their batch format).
        eval: split -> {dataset name -> dataset} for "val" / "test".
    """

    train: Optional[Dataset] = None
    train_collate: Optional[Callable] = None
    eval: Dict[str, Dict[str, Dataset]] = field(default_factory=dict)


def _dataset_names(config: Any) -> List[str]:
    names = [name.strip() for name in str(config.datasets).split(",") if name.strip()]
    if not names:
        raise ValueError("datasets is empty: set datasets=<builder name>[,<builder name>...].")
    return names


def build_datasets(config: Any, splits: Sequence[str]) -> DatasetsBySplit:
    """Build ``splits`` of every builder in ``config.datasets``.

    ``prepare()`` (download, write the synthetic world) runs on rank 0 before the other
    ranks read the files.
    """
    built = DatasetsBySplit()
    train_parts: List[Dataset] = []
    for name in _dataset_names(config):
        builder_cls = registry.get_builder_class(name)
        if name not in config.dataset_config:
            raise KeyError(f"dataset_config.{name} is missing: the config of dataset {name!r} "
                           f"(defaults come from {builder_cls.__name__}.Config).")
        builder = builder_cls(config.dataset_config[name])
        with main_process_first():
            builder.prepare()
        for split in splits:
            dataset = builder.build(split)
            logger.info("dataset %s/%s: %d samples", name, split, len(dataset))
            if split == "train":
                train_parts.append(dataset)
                if built.train_collate is None:
                    built.train_collate = builder.collate_fn("train")
            else:
                built.eval.setdefault(split, {})[name] = dataset
    if train_parts:
        built.train = concat_or_single(train_parts)
    return built


def build_model(config: Any) -> nn.Module:
    """``registry.get_model_class(config.model)(config.model_config[config.model])``."""
    model_cls = registry.get_model_class(config.model)
    if config.model not in config.model_config:
        raise KeyError(f"model_config.{config.model} is missing: the config of model "
                       f"{config.model!r} (defaults come from {model_cls.__name__}.Config).")
    model = model_cls(config.model_config[config.model])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("model %s: %.2fM parameters, %.2fM trainable", config.model, total / 1e6, trainable / 1e6)
    return model


def wrap_model(model: nn.Module, device: torch.device, *, find_unused_parameters: bool,
               compile_model: bool, compile_kwargs: Optional[Dict[str, Any]] = None) -> nn.Module:
    """DDP when there is more than one process, and ``torch.compile`` if asked.

    ``training.compile``: a model that says what to compile (``compile_encoders``, the ALBEF
    family) has its encoders compiled in place, so state-dict keys keep their names and the
    data-dependent parts of the step stay eager; any other model is wrapped whole by
    ``torch.compile`` around DDP (whose state-dict keys then carry an ``_orig_mod.`` prefix).

    ``broadcast_buffers=False``: ALBEF's buffers are the feature queues, filled on every
    rank with the same all-gathered features, so they are already identical; broadcasting
    two [256, 65536] queues at every forward would only cost bandwidth.
    """
    compile_kwargs = compile_kwargs or {}
    compile_whole = compile_model and not hasattr(model, "compile_encoders")
    if compile_model and not compile_whole:
        logger.info("torch.compile (in place): %s",
                    ", ".join(model.compile_encoders(**compile_kwargs)))
    if get_world_size() > 1:
        ddp_args = inspect.signature(nn.parallel.DistributedDataParallel).parameters
        # newer torch renames the flag (and still syncs buffers once at construction: fine)
        no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in ddp_args
                          else {"broadcast_buffers": False})
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters, **no_buffer_sync)
    if compile_whole:
        logger.info("torch.compile: the whole %s", type(model).__name__)
        model = torch.compile(model, **compile_kwargs)
    return model
