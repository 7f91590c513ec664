"""Builders that pre-train from webdataset tar shards (img2dataset layout).

- ``albef_pretrain_shards`` (alias ``webdataset_pretrain``): train = an endless stream over
  ``shards``; val / test = ``re_eval`` JSON files (zero-shot retrieval), as
  ``albef_pretrain_json``. Config (defaults in ``configs/datasets/albef_pretrain_shards.yaml``)::

      dataset_config:
        albef_pretrain_shards:
          data_dir: ${env.data_dir}
          shards: ["cc3m/{00000..00331}.tar", "sbu/*.tar"]  # braces, globs, paths, URLs
          samples_per_epoch: 0       # 0 = sum of img2dataset's <shard>_stats.json "successes"
          shuffle_shards: true       # a new shard order every pass
          open_shards: 4             # shards each DataLoader worker reads at once (a batch mixes them)
          weight: 1.0                # sampling weight when mixed with other training datasets
          on_unreadable: substitute  # bad shard / sample: substitute | drop (both skip and count) | error

- ``demo_pretrain_shards`` (alias ``synthetic_pretrain_shards``): the synthetic demo world,
  written as shards by ``prepare()`` (``synthetic.samples_per_shard`` images per shard); the
  same world, evaluation files and settings as ``demo_pretrain``.

Nothing per sample is held in memory: a 14M-pair run keeps only the list of shard names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List

from torch.utils.data import Dataset

from albef_plugin.config.loader import ConfigError
from albef_plugin.datasets.builders import JsonDatasetConfig, PretrainJsonBuilder
from albef_plugin.datasets.shards import count_samples_from_stats, expand_shard_patterns
from albef_plugin.datasets.streams import SampleStream, ShardSource
from albef_plugin.datasets.synthetic.builders import SyntheticWorldConfig, _SyntheticWorldMixin
from albef_plugin.datasets.synthetic.shards import shard_pattern, write_world_shards
from albef_plugin.registry import registry

__all__ = ["ShardsDatasetConfig", "ShardsPretrainBuilder", "DemoShardsConfig", "DemoPretrainShardsBuilder"]


@dataclass
class ShardsDatasetConfig(JsonDatasetConfig):
    shards: List[str] = field(default_factory=list)  # tar shards: brace patterns, globs, paths, URLs
    samples_per_epoch: int = 0   # one epoch of the stream; 0 = from img2dataset's _stats.json files
    shuffle_shards: bool = True  # a new shard order at every pass over the shards
    open_shards: int = 4         # shards each DataLoader worker reads at once (a batch mixes them)


@registry.register_builder("albef_pretrain_shards", aliases=("webdataset_pretrain",))
class ShardsPretrainBuilder(PretrainJsonBuilder):
    """Pre-training from tar shards; zero-shot retrieval on re_eval files (see module doc)."""

    name: ClassVar[str] = "albef_pretrain_shards"
    Config = ShardsDatasetConfig

    def shard_patterns(self) -> List[str]:
        return list(self.config.shards)

    def build(self, split: str) -> Dataset:
        if self.split_role(split) != "train":
            return super().build(split)
        key = self.config_key("shards")
        try:
            shards = expand_shard_patterns(self.shard_patterns(), self.resolve_path, key)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        samples = int(self.config.samples_per_epoch) or count_samples_from_stats(shards)
        if not samples:
            raise ConfigError(f"{self.config_key('samples_per_epoch')}=0 and the shards of {key} have no "
                              f"img2dataset _stats.json files to count from: set samples_per_epoch to "
                              f"the number of samples in the shards (one epoch of the stream).")
        source = ShardSource(shards, self.image_processor("train"), samples,
                             on_unreadable=self.config.on_unreadable,
                             shuffle_shards=bool(self.config.shuffle_shards),
                             open_shards=int(self.config.open_shards), name=self.name)
        return SampleStream([source])


@dataclass
class DemoSyntheticShardsConfig(SyntheticWorldConfig):
    samples_per_shard: int = 250  # images per shard (the demo's 3000 images -> 12 shards)


@dataclass
class DemoShardsConfig(ShardsDatasetConfig):
    synthetic: DemoSyntheticShardsConfig = field(default_factory=DemoSyntheticShardsConfig)


@registry.register_builder("demo_pretrain_shards", aliases=("synthetic_pretrain_shards",))
class DemoPretrainShardsBuilder(_SyntheticWorldMixin, ShardsPretrainBuilder):
    """The synthetic world's training images as shards (see the module docstring)."""

    name: ClassVar[str] = "demo_pretrain_shards"
    Config = DemoShardsConfig

    def prepare(self) -> None:
        super().prepare()
        write_world_shards(self.world_dir(), int(self.config.synthetic.samples_per_shard))

    def shard_patterns(self) -> List[str]:
        if list(self.config.shards):
            return list(self.config.shards)
        shards = write_world_shards(self._require_world(), int(self.config.synthetic.samples_per_shard))
        return [shard_pattern(shards[0].parent, len(shards))]
