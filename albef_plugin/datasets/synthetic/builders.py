"""Dataset builders on the synthetic demo world.

- ``demo_pretrain`` (alias ``synthetic_pretrain``): pre-training on the world's
  ``pretrain.json``; zero-shot retrieval on ``re_val.json`` / ``re_test.json``.
- ``demo_retrieval`` (alias ``synthetic_retrieval``): retrieval fine-tuning on
  ``re_train.json``; evaluation on ``re_val.json`` / ``re_test.json``.

``prepare()`` (main rank) writes the world into
``<data_dir>/<synthetic.root>/<folder named after its parameters>``, once: changing any
``synthetic.*`` parameter selects another folder, so a stale world is never reused.
Annotation files and ``image_root`` default to that world; setting them explicitly
points the builder elsewhere, like its ``albef_*_json`` parent.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Dict, List

from albef_plugin import distributed
from albef_plugin.datasets.builders import JsonDatasetConfig, PretrainJsonBuilder, RetrievalJsonBuilder
from albef_plugin.datasets.synthetic.generate import (ANNOTATION_FILES, WorldSpec, generate_world,
                                                      world_is_complete)
from albef_plugin.registry import registry

__all__ = ["SyntheticWorldConfig", "DemoDatasetConfig", "DemoPretrainBuilder", "DemoRetrievalBuilder"]

logger = logging.getLogger(__name__)


@dataclass
class SyntheticWorldConfig:
    root: str = "synthetic"    # folder of generated worlds, relative to data_dir
    num_train: int = 3000      # images; each has 6 captions
    num_val: int = 300
    num_test: int = 300
    seed: int = 0
    image_size: int = 128      # side of the rendered JPEGs (the model input side is `image_size`)
    jpeg_quality: int = 90
    min_objects: int = 1
    max_objects: int = 3       # at most 3


@dataclass
class DemoDatasetConfig(JsonDatasetConfig):
    synthetic: SyntheticWorldConfig = field(default_factory=SyntheticWorldConfig)


class _SyntheticWorldMixin:
    """Generates the world in ``prepare()`` and points annotations / images at it."""

    Config = DemoDatasetConfig
    # annotation file of the train split inside the world
    train_file: ClassVar[str] = ANNOTATION_FILES["pretrain"]

    def world_spec(self) -> WorldSpec:
        s = self.config.synthetic
        try:
            return WorldSpec(num_train=s.num_train, num_val=s.num_val, num_test=s.num_test,
                             seed=s.seed, image_size=s.image_size, jpeg_quality=s.jpeg_quality,
                             min_objects=s.min_objects, max_objects=s.max_objects)
        except ValueError as exc:
            raise ValueError(f"{self.config_key('synthetic')}: {exc}") from None

    def world_dir(self) -> Path:
        return Path(self.resolve_path(self.config.synthetic.root)) / self.world_spec().folder_name()

    def prepare(self) -> None:
        generate_world(self.world_dir(), self.world_spec())

    def _require_world(self) -> Path:
        folder = self.world_dir()
        if not world_is_complete(folder, self.world_spec()):
            if distributed.get_world_size() > 1:
                raise FileNotFoundError(
                    f"Synthetic world {folder} is missing or incomplete on rank "
                    f"{distributed.get_rank()}. builder.prepare() must run on the main rank "
                    f"before build(), and data_dir must be on storage every rank can read.")
            logger.info("synthetic world not found; generating it now (prepare() was not called)")
            self.prepare()
        return folder

    def image_root(self) -> str:
        if self.config.image_root:
            return super().image_root()  # type: ignore[misc]
        return str(self._require_world())

    def annotation_files(self, split: str) -> List[str]:
        if list(self.config.annotations[self.check_split(split)]):
            return super().annotation_files(split)  # type: ignore[misc]
        defaults: Dict[str, str] = {"train": self.train_file, "val": ANNOTATION_FILES["val"],
                                    "test": ANNOTATION_FILES["test"]}
        return [str(self._require_world() / defaults[split])]


@registry.register_builder("demo_pretrain", aliases=("synthetic_pretrain",))
class DemoPretrainBuilder(_SyntheticWorldMixin, PretrainJsonBuilder):
    """Pre-training on the synthetic world (see the module docstring)."""

    name: ClassVar[str] = "demo_pretrain"
    train_file: ClassVar[str] = ANNOTATION_FILES["pretrain"]


@registry.register_builder("demo_retrieval", aliases=("synthetic_retrieval",))
class DemoRetrievalBuilder(_SyntheticWorldMixin, RetrievalJsonBuilder):
    """Retrieval fine-tuning on the synthetic world (see the module docstring)."""

    name: ClassVar[str] = "demo_retrieval"
    train_file: ClassVar[str] = ANNOTATION_FILES["re_train"]
