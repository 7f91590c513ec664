"""Builders for data in the official ALBEF JSON formats.

- ``albef_pretrain_json``: train = pretrain files ``[{image, caption: str | list}]``;
  val / test = ``re_eval`` files, for zero-shot retrieval evaluation after pre-training.
- ``albef_retrieval_json``: train = ``re_train`` files ``[{image, caption, image_id}]``;
  val / test = ``re_eval`` files.

Both share one config layout (:class:`JsonDatasetConfig`)::

    dataset_config:
      albef_retrieval_json:
        data_dir: ${env.data_dir}           # relative paths below start here
        image_root: images/flickr30k        # joined to relative image paths
        image_size: 384                     # fed to both image processors
        annotations: {train: [flickr30k_train.json], val: [flickr30k_val.json], test: [...]}
        processors:
          text: {type: bert_text, params: {max_length: 30}}
          train_image: {type: albef_image_train, params: {scale: [0.5, 1.0]}}
          eval_image: {type: albef_image_eval, params: {}}
        on_unreadable: substitute           # substitute | drop | error
        weight: null                        # sampling weight when mixed with a shard stream (null: by size)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, List, Optional

from omegaconf import DictConfig
from torch.utils.data import Dataset

from albef_plugin.datasets.base import BaseDatasetBuilder, ProcessorsConfig, SplitFilesConfig
from albef_plugin.datasets.collate import EvalImageCollate, ImageTextCollate
from albef_plugin.datasets.images import ON_UNREADABLE_CHOICES
from albef_plugin.datasets.pretrain import PretrainDataset
from albef_plugin.datasets.retrieval import RetrievalEvalDataset, RetrievalTrainDataset
from albef_plugin.processors import build_processor
from albef_plugin.registry import registry

__all__ = ["JsonDatasetConfig", "JsonImageTextBuilder", "PretrainJsonBuilder", "RetrievalJsonBuilder"]


@dataclass
class JsonDatasetConfig:
    data_dir: str = "./data"          # relative paths of this dataset start here
    image_root: str = ""              # relative image paths are joined to it ("" = data_dir)
    image_size: int = 256             # input side of both image processors (official 256 / 384)
    annotations: SplitFilesConfig = field(default_factory=SplitFilesConfig)
    processors: ProcessorsConfig = field(default_factory=ProcessorsConfig)
    on_unreadable: str = "substitute"  # missing / corrupt training image: substitute | drop | error
    # sampling weight when mixed with a shard stream; null = the dataset's size (its share of an epoch)
    weight: Optional[float] = None


class JsonImageTextBuilder(BaseDatasetBuilder):
    """Shared logic: processors from config, eval splits in ``re_eval`` format."""

    Config = JsonDatasetConfig

    def __init__(self, config: DictConfig) -> None:
        super().__init__(config)
        if config.on_unreadable not in ON_UNREADABLE_CHOICES:
            raise ValueError(f"{self.config_key('on_unreadable')}={config.on_unreadable!r}; choose "
                             f"one of {', '.join(ON_UNREADABLE_CHOICES)}.")
        self._text_processor: Optional[Any] = None

    # --------------------------------------------------------- processors
    @property
    def text_processor(self) -> Any:
        """The caption tokenizer (built once; loading the vocabulary takes ~0.1 s)."""
        if self._text_processor is None:
            self._text_processor = build_processor(self.config.processors.text,
                                                   where=self.config_key("processors.text"))
        return self._text_processor

    def image_processor(self, split: str) -> Any:
        """The train augmentation for a train-role split, the eval transform otherwise."""
        key = "train_image" if self.split_role(split) == "train" else "eval_image"
        return build_processor(self.config.processors[key], where=self.config_key(f"processors.{key}"),
                               image_size=int(self.config.image_size))

    # -------------------------------------------------------------- paths
    def image_root(self) -> str:
        return self.resolve_path(self.config.image_root)

    def annotation_files(self, split: str) -> List[str]:
        files = list(self.config.annotations[self.check_split(split)])
        if not files:
            raise ValueError(f"{self.config_key(f'annotations.{split}')} lists no annotation files; "
                             f"set it to one or more JSON files (relative to data_dir="
                             f"{self.config.data_dir!r}) to use the {split!r} split.")
        return [self.resolve_path(f) for f in files]

    # ------------------------------------------------------------ contract
    def build(self, split: str) -> Dataset:
        files = self.annotation_files(split)
        if self.split_role(split) == "train":
            return self._build_train(files)
        return RetrievalEvalDataset(files, self.image_root(), self.image_processor(split),
                                    self.text_processor)

    def _build_train(self, files: List[str]) -> Dataset:
        raise NotImplementedError

    def collate_fn(self, split: str) -> Callable[[List[Any]], Any]:
        if self.split_role(split) == "train":
            return ImageTextCollate(self.text_processor)
        return EvalImageCollate()


@registry.register_builder("albef_pretrain_json")
class PretrainJsonBuilder(JsonImageTextBuilder):
    """Pre-training on official-format JSON files; zero-shot retrieval on val / test."""

    name: ClassVar[str] = "albef_pretrain_json"

    def _build_train(self, files: List[str]) -> Dataset:
        return PretrainDataset(files, self.image_root(), self.image_processor("train"),
                               on_unreadable=self.config.on_unreadable)


@registry.register_builder("albef_retrieval_json")
class RetrievalJsonBuilder(JsonImageTextBuilder):
    """Retrieval fine-tuning (re_train) and evaluation (re_eval) on official-format files."""

    name: ClassVar[str] = "albef_retrieval_json"

    def _build_train(self, files: List[str]) -> Dataset:
        return RetrievalTrainDataset(files, self.image_root(), self.image_processor("train"),
                                     on_unreadable=self.config.on_unreadable)
