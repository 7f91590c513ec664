"""Builders of weakly-supervised grounding data: ``albef_grounding_json`` (RefCOCO+ in the
official files) and ``demo_grounding`` (the synthetic world's files, same formats).

Named splits: ``train`` (role train), ``val`` (role val: ``best.ckpt``), ``testA`` and
``testB`` (role test), the last two read from the one test file and told apart by the REFER
refs file. Config::

    dataset_config:
      albef_grounding_json:
        data_dir: ${env.data_dir}
        image_root: images/coco
        image_size: 384
        annotations: {train: [refcoco+_train.json], val: [refcoco+_val.json], test: [refcoco+_test.json]}
        refs_file: refcoco+/refs(unc).p
        instances_file: refcoco+/instances.json
        dets_file: refcoco+/dets.json
        cocos_file: refcoco+/cocos.json      # "" = no COCO-box candidates
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, List, Optional

from torch.utils.data import Dataset

from albef_plugin.datasets.builders import JsonDatasetConfig, JsonImageTextBuilder
from albef_plugin.datasets.collate import ImageTextCollate
from albef_plugin.datasets.grounding import (GroundingEvalCollate, GroundingEvalDataset,
                                             GroundingTrainDataset, ReferIndex)
from albef_plugin.datasets.synthetic.builders import DemoDatasetConfig, _SyntheticWorldMixin
from albef_plugin.datasets.synthetic.tasks import GROUNDING_FILES, ensure_task_files
from albef_plugin.registry import registry

__all__ = ["GroundingJsonBuilder", "DemoGroundingBuilder", "GROUNDING_SPLITS"]

logger = logging.getLogger(__name__)

GROUNDING_SPLITS = {"train": "train", "val": "val", "testA": "test", "testB": "test"}


@dataclass
class GroundingFilesConfig:
    refs_file: str = ""        # REFER refs(unc).p
    instances_file: str = ""   # REFER instances.json
    dets_file: str = ""        # detector proposals per image
    cocos_file: str = ""       # COCO boxes per image ("" = none)


@dataclass
class GroundingDatasetConfig(JsonDatasetConfig, GroundingFilesConfig):
    pass


@dataclass
class DemoGroundingDatasetConfig(DemoDatasetConfig, GroundingFilesConfig):
    pass


@registry.register_builder("albef_grounding_json")
class GroundingJsonBuilder(JsonImageTextBuilder):
    """RefCOCO+ grounding in the official files (see the module docstring)."""

    name: ClassVar[str] = "albef_grounding_json"
    Config = GroundingDatasetConfig
    split_roles = GROUNDING_SPLITS

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._refer: Optional[ReferIndex] = None

    def file_split(self, split: str) -> str:
        """The ``annotations`` key of a split: ``test`` for testA and testB (one file)."""
        return "test" if self.split_role(split) == "test" else split

    def annotation_files(self, split: str) -> List[str]:
        key = self.file_split(split)
        files = list(self.config.annotations[key])
        if not files:
            raise ValueError(f"{self.config_key(f'annotations.{key}')} lists no annotation files; "
                             f"set it to the official refcoco+_{key}.json (relative to data_dir="
                             f"{self.config.data_dir!r}) to use the {split!r} split.")
        return [self.resolve_path(f) for f in files]

    def grounding_file(self, key: str, required: bool = True) -> Optional[str]:
        value = str(self.config[key] or "")
        if not value:
            if required:
                raise ValueError(f"{self.config_key(key)} is not set; point it at the official "
                                 f"file (relative to data_dir={self.config.data_dir!r}).")
            return None
        return self.resolve_path(value)

    def refer(self) -> ReferIndex:
        if self._refer is None:
            self._refer = ReferIndex(self.grounding_file("refs_file"),
                                     self.grounding_file("instances_file"),
                                     self.grounding_file("dets_file"),
                                     self.grounding_file("cocos_file", required=False))
        return self._refer

    def build(self, split: str) -> Dataset:
        files = self.annotation_files(split)
        if self.split_role(split) == "train":
            return GroundingTrainDataset(files, self.image_root(), self.image_processor(split),
                                         on_unreadable=self.config.on_unreadable)
        return GroundingEvalDataset(files, self.image_root(), self.image_processor(split),
                                    self.refer(), split)

    def collate_fn(self, split: str) -> Callable[[List[Any]], Any]:
        if self.split_role(split) == "train":
            return ImageTextCollate(self.text_processor)
        return GroundingEvalCollate(self.text_processor)


@registry.register_builder("demo_grounding", aliases=("synthetic_grounding",))
class DemoGroundingBuilder(_SyntheticWorldMixin, GroundingJsonBuilder):
    """Grounding on the synthetic world: its ``tasks/grounding_*`` files (official formats;
    candidates are the world's object boxes; testA / testB = even / odd test images)."""

    name: ClassVar[str] = "demo_grounding"
    Config = DemoGroundingDatasetConfig

    def _tasks_dir(self) -> Path:
        return ensure_task_files(self._require_world(), "grounding")

    def prepare(self) -> None:
        super().prepare()
        self._tasks_dir()

    def annotation_files(self, split: str) -> List[str]:
        key = self.file_split(split)
        if list(self.config.annotations[key]):
            return GroundingJsonBuilder.annotation_files(self, split)
        return [str(self._tasks_dir() / GROUNDING_FILES[key])]

    def grounding_file(self, key: str, required: bool = True) -> Optional[str]:
        if self.config[key]:
            return super().grounding_file(key, required)
        return str(self._tasks_dir() / GROUNDING_FILES[key[:-len("_file")]])
