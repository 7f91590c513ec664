"""Dataset builders for SNLI-VE and NLVR2 (official ALBEF JSON) and their synthetic demos.

- ``albef_ve_json``: ``{image, sentence, label}`` files (``ve.py``); batch key ``image``.
- ``albef_nlvr2_json``: ``{images: [left, right], sentence, label}`` files (``nlvr.py``);
  batch keys ``image0`` / ``image1``.
- ``demo_ve`` / ``demo_nlvr2``: the same on the synthetic world's ``tasks/ve_*.json`` /
  ``tasks/nlvr2_*.json``, written by ``prepare()`` next to the world's images.

Splits: train, val, test. Training uses the train image augmentation and the configured
``on_unreadable`` policy (the training iterator pads a batch that lost entries back to size);
val / test use the eval transform and *drop* (and count) an entry whose image is unreadable,
so no entry is scored twice (``error`` stays an error).

Config layout (shared with the retrieval builders, :class:`JsonDatasetConfig`)::

    dataset_config:
      albef_ve_json:
        data_dir: ${env.data_dir}
        image_root: flickr30k-images         # <image_root>/<image>.jpg
        image_size: 384
        annotations: {train: [ve_train.json], val: [ve_dev.json], test: [ve_test.json]}
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, List, Tuple

from torch.utils.data import Dataset

from albef_plugin.datasets.builders import JsonImageTextBuilder
from albef_plugin.datasets.classification import LabelledImagesCollate
from albef_plugin.datasets.nlvr import NLVR2_IMAGE_KEYS, load_nlvr2_dataset
from albef_plugin.datasets.synthetic.builders import DemoDatasetConfig, _SyntheticWorldMixin
from albef_plugin.datasets.synthetic.tasks import ensure_task_files
from albef_plugin.datasets.ve import VE_IMAGE_KEYS, load_ve_dataset
from albef_plugin.registry import registry

__all__ = ["VEJsonBuilder", "NLVR2JsonBuilder", "DemoVEBuilder", "DemoNLVR2Builder"]


class _LabelledJsonBuilder(JsonImageTextBuilder):
    """Train / val / test datasets of one labelled task and its collate."""

    image_keys: ClassVar[Tuple[str, ...]] = ()
    load_dataset: ClassVar[Callable[..., Dataset]]

    def build(self, split: str) -> Dataset:
        policy = self.config.on_unreadable
        if self.split_role(split) != "train" and policy != "error":
            policy = "drop"
        return type(self).load_dataset(self.annotation_files(split), self.image_root(),
                                       self.image_processor(split), on_unreadable=policy)

    def collate_fn(self, split: str) -> Callable[[List[Any]], Any]:
        self.check_split(split)
        return LabelledImagesCollate(self.text_processor, self.image_keys)


@registry.register_builder("albef_ve_json")
class VEJsonBuilder(_LabelledJsonBuilder):
    """SNLI-VE in the official format (see the module docstring)."""

    name: ClassVar[str] = "albef_ve_json"
    image_keys = VE_IMAGE_KEYS
    load_dataset = staticmethod(load_ve_dataset)


@registry.register_builder("albef_nlvr2_json")
class NLVR2JsonBuilder(_LabelledJsonBuilder):
    """NLVR2 in the official format (see the module docstring)."""

    name: ClassVar[str] = "albef_nlvr2_json"
    image_keys = NLVR2_IMAGE_KEYS
    load_dataset = staticmethod(load_nlvr2_dataset)


class _SyntheticTaskMixin(_SyntheticWorldMixin):
    """The synthetic world plus one task's files in ``<world>/tasks``."""

    Config = DemoDatasetConfig
    task: ClassVar[str] = ""        # ensure_task_files name
    file_stem: ClassVar[str] = ""   # tasks/<stem>_<split>.json

    def prepare(self) -> None:
        super().prepare()
        ensure_task_files(self.world_dir(), self.task)

    def annotation_files(self, split: str) -> List[str]:
        if list(self.config.annotations[self.check_split(split)]):
            return super().annotation_files(split)
        folder = self._require_world() / "tasks"
        if not (folder / f"{self.task}.done").exists():
            self.prepare()  # single process without prepare(): write the task files now
        return [str(folder / f"{self.file_stem}_{split}.json")]


@registry.register_builder("demo_ve", aliases=("synthetic_ve",))
class DemoVEBuilder(_SyntheticTaskMixin, VEJsonBuilder):
    """SNLI-VE on the synthetic world."""

    name: ClassVar[str] = "demo_ve"
    task = "snli_ve"
    file_stem = "ve"


@registry.register_builder("demo_nlvr2", aliases=("synthetic_nlvr2",))
class DemoNLVR2Builder(_SyntheticTaskMixin, NLVR2JsonBuilder):
    """NLVR2 on the synthetic world."""

    name: ClassVar[str] = "demo_nlvr2"
    task = "nlvr2"
    file_stem = "nlvr2"
