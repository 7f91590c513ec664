"""The dataset-builder contract and the config blocks builders share.

A builder turns its config into datasets and collate functions::

    builder = registry.get_builder_class("demo_pretrain")(cfg.dataset_config.demo_pretrain)
    builder.prepare()                   # main rank only: e.g. write the synthetic world
    distributed.barrier()
    train_set = builder.build("train")  # every rank
    loader = DataLoader(train_set, collate_fn=builder.collate_fn("train"), ...)

Named splits. A builder declares its splits and the role of each in ``split_roles``
(``{name: role}``; override :meth:`BaseDatasetBuilder.splits` when they depend on the
config). Roles are ``train`` (trained on; concatenated when several), ``val`` (periodic
evaluation during training and ``best.ckpt``; ``run_type=..._val``) and ``test``
(``run_type=..._test``). The default is ``{train: train, val: val, test: test}``;
grounding declares ``{train: train, val: val, testA: test, testB: test}``, so
``run_type=test`` evaluates testA and testB; a VQA builder may declare only train and test.
Metrics are logged as ``<split name>/<dataset>/<metric>``.

``config`` is an OmegaConf ``DictConfig`` of the builder's nested ``Config`` dataclass
(defaults merged with ``config_path()`` YAML and the user's settings). Relative paths
in it are taken from ``config.data_dir``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from torch.utils.data import Dataset

__all__ = ["BaseDatasetBuilder", "ProcessorSpec", "ProcessorsConfig", "SplitFilesConfig", "SPLITS",
           "SPLIT_ROLES", "DEFAULT_SPLIT_ROLES", "DATASET_CONFIG_DIR", "check_split_roles"]

SPLIT_ROLES = ("train", "val", "test")
# the splits of a builder that declares none (and of builders that do not subclass the base)
DEFAULT_SPLIT_ROLES: Mapping[str, str] = MappingProxyType({"train": "train", "val": "val", "test": "test"})
SPLITS = tuple(DEFAULT_SPLIT_ROLES)  # the default split names
DATASET_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "datasets"


@dataclass
class ProcessorSpec:
    """A processor as ``{type: <registered processor name>, params: {...}}`` (MMF style)."""

    type: str = MISSING
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ProcessorsConfig:
    text: ProcessorSpec = field(default_factory=lambda: ProcessorSpec("bert_text"))
    train_image: ProcessorSpec = field(default_factory=lambda: ProcessorSpec("albef_image_train"))
    eval_image: ProcessorSpec = field(default_factory=lambda: ProcessorSpec("albef_image_eval"))


@dataclass
class SplitFilesConfig:
    """Annotation JSON files per split; several files of one split are concatenated."""

    train: List[str] = field(default_factory=list)
    val: List[str] = field(default_factory=list)
    test: List[str] = field(default_factory=list)


class BaseDatasetBuilder:
    """Base class of registered dataset builders (see the module docstring).

    Subclasses set ``name`` (their registry name, used in messages and to find the
    default YAML ``albef_plugin/configs/datasets/<name>.yaml``), define a nested
    ``Config`` dataclass and implement :meth:`build` and :meth:`collate_fn`.
    """

    name: ClassVar[str] = "base"
    # split name -> role (train | val | test); see the module docstring
    split_roles: ClassVar[Mapping[str, str]] = DEFAULT_SPLIT_ROLES

    @dataclass
    class Config:
        data_dir: str = "./data"  # relative paths of this dataset are taken from here

    def __init__(self, config: DictConfig) -> None:
        self.config = config

    @classmethod
    def config_path(cls) -> Optional[str]:
        """The YAML of defaults merged over ``Config``, if this builder has one."""
        path = DATASET_CONFIG_DIR / f"{cls.name}.yaml"
        return str(path) if path.is_file() else None

    @classmethod
    def make_config(cls, overrides: Optional[Mapping[str, Any]] = None) -> DictConfig:
        """Defaults + ``overrides``, resolved, for use outside a full run config.

        Inside a run, the config loader does this merge and ``data_dir`` comes from the
        root's ``env.data_dir``; here ``${env.data_dir}`` resolves to ``$ALBEF_DATA_DIR``
        or ``./data`` like the framework default, unless ``overrides`` sets ``data_dir``.
        """
        node = OmegaConf.structured(cls.Config)
        path = cls.config_path()
        if path:
            node = OmegaConf.merge(node, OmegaConf.load(path))
        if overrides:
            node = OmegaConf.merge(node, OmegaConf.create(dict(overrides)))
        root = OmegaConf.create({"env": {"data_dir": os.environ.get("ALBEF_DATA_DIR", "./data")}})
        root.dataset = node
        OmegaConf.resolve(root)
        node = root.dataset
        OmegaConf.set_struct(node, True)
        return node

    # ----------------------------------------------------------- contract
    def splits(self) -> Dict[str, str]:
        """This builder's splits, ``{name: role}`` in order (default: ``split_roles``)."""
        return dict(self.split_roles)

    def prepare(self) -> None:
        """Main-rank-only work before any rank builds datasets (default: nothing)."""

    def build(self, split: str) -> Dataset:
        raise NotImplementedError(f"{type(self).__name__} must implement build(split)")

    def collate_fn(self, split: str) -> Callable[[List[Any]], Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement collate_fn(split)")

    # ------------------------------------------------------------ helpers
    def config_key(self, key: str) -> str:
        """The full config path of one of this builder's keys, for error messages."""
        return f"dataset_config.{self.name}.{key}"

    def check_split(self, split: str) -> str:
        if split not in self.splits():
            raise ValueError(f"Dataset {self.name!r}: unknown split {split!r}; its splits are "
                             f"{', '.join(self.splits())}.")
        return split

    def split_role(self, split: str) -> str:
        """``train``, ``val`` or ``test``: what ``split`` is used for."""
        return self.splits()[self.check_split(split)]

    def resolve_path(self, path: str) -> str:
        """``path`` itself when absolute, else joined to ``data_dir`` ("" is ``data_dir``)."""
        path = os.path.expanduser(str(path))
        if os.path.isabs(path):
            return path
        return os.path.join(os.path.expanduser(str(self.config.data_dir)), path)


def check_split_roles(dataset: str, splits: Mapping[str, str]) -> Dict[str, str]:
    """A builder's ``{split: role}`` declaration, checked: roles known, names usable in keys."""
    splits = dict(splits)
    for split, role in splits.items():
        if role not in SPLIT_ROLES:
            raise ValueError(f"Dataset {dataset!r} declares split {split!r} with role {role!r}; "
                             f"roles are {', '.join(SPLIT_ROLES)}.")
        if not isinstance(split, str) or not split or "/" in split:
            raise ValueError(f"Dataset {dataset!r} declares a split named {split!r}; split names "
                             f"are non-empty and contain no '/' (they start logged keys).")
    return splits
