"""Construction of what the trainer runs: datasets, model, DDP wrapping.

Each function reads the keys it needs from the root config and nothing else, so the
trainer's ``load()`` reads as a list of ``build_*`` calls.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import Dataset

from albef_plugin.config.loader import ConfigError
from albef_plugin.datasets.base import DEFAULT_SPLIT_ROLES, check_split_roles
from albef_plugin.distributed import get_world_size, main_process_first
from albef_plugin.registry import registry
from albef_plugin.trainers.data import concat_or_single
from albef_plugin.trainers.stream_data import mix_training_datasets

logger = logging.getLogger(__name__)

__all__ = ["RUN_TYPES", "parse_run_type", "DatasetsBySplit", "build_datasets", "declared_splits",
           "describe_splits", "build_model", "wrap_model"]

RUN_TYPES = ("train", "val", "test", "train_val", "train_test", "train_val_test")


def parse_run_type(run_type: str) -> Tuple[bool, List[str]]:
    """``"train_val_test"`` -> ``(True, ["val", "test"])``: whether to train, then which
    split *roles* to evaluate at the end (every split a dataset declares in that role)."""
    if run_type not in RUN_TYPES:
        raise ValueError(f"run_type={run_type!r}: expected one of {', '.join(RUN_TYPES)}.")
    parts = run_type.split("_")
    return parts[0] == "train", [p for p in parts if p != "train"]


@dataclass
class DatasetsBySplit:
    """The built datasets.

    Attributes:
        train: the datasets of every train-role split concatenated (None when not training).
        train_collate: the collate function of the FIRST training builder, used for the
            concatenation (datasets of one task share their batch format).
        eval: split name -> {dataset name -> dataset} for the evaluation splits built,
            in ``config.datasets`` order.
        eval_collate: split name -> {dataset name -> that builder's collate for the split}.
        roles: split name -> its role (``val`` / ``test``), for every split in ``eval``.
        declared: dataset name -> its declared ``{split: role}``, for messages.
    """

    train: Optional[Dataset] = None
    train_collate: Optional[Callable] = None
    eval: Dict[str, Dict[str, Dataset]] = field(default_factory=dict)
    eval_collate: Dict[str, Dict[str, Callable]] = field(default_factory=dict)
    roles: Dict[str, str] = field(default_factory=dict)
    declared: Dict[str, Dict[str, str]] = field(default_factory=dict)

    def splits_with_role(self, role: str) -> List[str]:
        """The evaluation splits built in ``role``, in declaration order."""
        return [split for split, split_role in self.roles.items() if split_role == role]


def _dataset_names(config: Any) -> List[str]:
    names = [name.strip() for name in str(config.datasets).split(",") if name.strip()]
    if not names:
        raise ValueError("datasets is empty: set datasets=<builder name>[,<builder name>...].")
    return names


def declared_splits(builder: Any, name: str) -> Dict[str, str]:
    """``builder.splits()`` checked; train / val / test for builders that declare none."""
    splits = builder.splits() if hasattr(builder, "splits") else DEFAULT_SPLIT_ROLES
    return check_split_roles(name, splits)


def build_datasets(config: Any, roles: Sequence[str], required: Sequence[str] = ()) -> DatasetsBySplit:
    """Build every split whose role is in ``roles``, for every builder in ``config.datasets``.

    ``prepare()`` (download, write the synthetic world) runs on rank 0 before the other
    ranks read the files. A split name used by two datasets must have the same role in both.

    Raises:
        ConfigError: a role of ``required`` (what ``run_type`` evaluates) is declared by no
            dataset; raised before anything is prepared or built.
    """
    built = DatasetsBySplit()
    builders = {}
    for name in _dataset_names(config):
        builder_cls = registry.get_builder_class(name)
        if name not in config.dataset_config:
            raise KeyError(f"dataset_config.{name} is missing: the config of dataset {name!r} "
                           f"(defaults come from {builder_cls.__name__}.Config).")
        builders[name] = builder_cls(config.dataset_config[name])
        built.declared[name] = declared_splits(builders[name], name)
    for role in required:
        if not any(role in splits.values() for splits in built.declared.values()):
            raise ConfigError(f"run_type={config.run_type} evaluates the {role} splits, but no dataset "
                              f"declares a {role} split ({describe_splits(built)}); choose another "
                              f"run_type.")

    train_parts: List[Dataset] = []
    train_names: List[str] = []
    for name, builder in builders.items():
        splits = built.declared[name]
        wanted = [split for split, role in splits.items() if role in roles]
        if wanted:
            with main_process_first():
                builder.prepare()
        for split in wanted:
            role = splits[split]
            dataset = builder.build(split)
            logger.info("dataset %s/%s (%s): %d samples", name, split, role, len(dataset))
            if role == "train":
                train_parts.append(dataset)
                train_names.append(name)
                if built.train_collate is None:
                    built.train_collate = builder.collate_fn(split)
                continue
            if built.roles.setdefault(split, role) != role:
                raise ValueError(f"split {split!r} is a {role} split of dataset {name!r} but a "
                                 f"{built.roles[split]} split of another dataset; rename one.")
            built.eval.setdefault(split, {})[name] = dataset
            built.eval_collate.setdefault(split, {})[name] = builder.collate_fn(split)
    if train_parts:
        # a shard stream among them: one stream mixed by dataset_config.<name>.weight
        weights = [OmegaConf.select(config.dataset_config[n], "weight", default=None) for n in train_names]
        built.train = mix_training_datasets(train_parts, train_names, weights) \
            or concat_or_single(train_parts)
    return built


def describe_splits(built: DatasetsBySplit) -> str:
    """``"a: train (train), val (val); b: ..."`` for messages."""
    return "; ".join(f"{name}: " + ", ".join(f"{split} ({role})" for split, role in splits.items())
                     for name, splits in built.declared.items())


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
