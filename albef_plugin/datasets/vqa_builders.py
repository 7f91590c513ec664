"""Dataset builders for VQA: ``albef_vqa_json`` (official files) and ``demo_vqa`` (synthetic).

``albef_vqa_json`` reads the official ALBEF VQA files (``datasets/vqa.py``)::

    dataset_config:
      albef_vqa_json:
        data_dir: ${env.data_dir}
        image_root: images/coco            # images of entries with dataset "vqa"
        vg_image_root: images/visual_genome  # images of entries with dataset "vg"
        image_size: 384
        annotations:
          train: [vqa_train.json, vqa_val.json, vg_qa.json]
          val: []                           # optional held-out split with answers
          test: [vqa_test.json]
        answer_list: answer_list.json
        max_question_words: {train: 30, test: 50}
        processors: {text: ..., answer: ..., train_image: ..., eval_image: ...}

Splits: ``train`` (role train), then ``val`` and ``test`` when files are listed for them (the
official recipe has no val: the last-epoch model is evaluated on test). ``demo_vqa`` reads the
synthetic world's ``tasks/vqa_{train,val,test}.json`` and ``tasks/answer_list.json``, writing
them first when the world has none.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional

from torch.utils.data import Dataset

from albef_plugin.datasets.base import ProcessorsConfig, ProcessorSpec, SplitFilesConfig
from albef_plugin.datasets.builders import JsonImageTextBuilder
from albef_plugin.datasets.synthetic.builders import SyntheticWorldConfig, _SyntheticWorldMixin
from albef_plugin.datasets.vqa import (VQAEvalCollate, VQAEvalDataset, VQATrainCollate,
                                       VQATrainDataset, load_answer_list)
from albef_plugin.processors import build_processor
from albef_plugin.registry import registry

__all__ = ["VQADatasetConfig", "VQAJsonBuilder", "DemoVQABuilder", "DemoVQAConfig"]


@dataclass
class VQAProcessorsConfig(ProcessorsConfig):
    # questions: cleaned by pre_question in the dataset, so the tokenizer's pre_caption is off
    text: ProcessorSpec = field(default_factory=lambda: ProcessorSpec(
        "bert_text", {"max_length": 64, "max_words": 50, "apply_pre_caption": False}))
    # answers: "[CLS] answer [SEP]" (the official answer + '[SEP]'), not cleaned
    answer: ProcessorSpec = field(default_factory=lambda: ProcessorSpec(
        "bert_text", {"max_length": 32, "add_sep": True, "apply_pre_caption": False}))


@dataclass
class QuestionWordsConfig:
    train: int = 30   # pre_question word cap in training (official)
    test: int = 50    # at test time (official)


@dataclass
class VQADatasetConfig:
    data_dir: str = "./data"
    image_root: str = ""              # images of "dataset": "vqa" entries ("" = data_dir)
    vg_image_root: str = ""           # images of "dataset": "vg" entries ("" = data_dir)
    image_size: int = 384
    annotations: SplitFilesConfig = field(default_factory=SplitFilesConfig)
    answer_list: str = "answer_list.json"
    max_question_words: QuestionWordsConfig = field(default_factory=QuestionWordsConfig)
    processors: VQAProcessorsConfig = field(default_factory=VQAProcessorsConfig)
    on_unreadable: str = "substitute"  # missing / corrupt training image: substitute | drop | error


@registry.register_builder("albef_vqa_json")
class VQAJsonBuilder(JsonImageTextBuilder):
    """VQA fine-tuning and evaluation on the official JSON files (see the module docstring).

    The JSON builders' base gives the ``on_unreadable`` check, the image processors, the image
    root and the annotation files; the question tokenizer is its ``processors.text``.
    """

    name: ClassVar[str] = "albef_vqa_json"
    Config = VQADatasetConfig

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._answer_processor: Optional[Any] = None

    def splits(self) -> Dict[str, str]:
        return {"train": "train", **{split: split for split in ("val", "test")
                                     if self._listed(split)}}

    def _listed(self, split: str) -> bool:
        return bool(list(self.config.annotations[split]))

    # ------------------------------------------------------------ processors
    @property
    def question_processor(self) -> Any:
        return self.text_processor

    @property
    def answer_processor(self) -> Any:
        if self._answer_processor is None:
            self._answer_processor = build_processor(self.config.processors.answer,
                                                     where=self.config_key("processors.answer"))
        return self._answer_processor

    # ----------------------------------------------------------------- paths
    def image_roots(self) -> Dict[str, str]:
        return {"vqa": self.image_root(), "vg": self.resolve_path(self.config.vg_image_root)}

    def answer_list_file(self) -> str:
        return self.resolve_path(self.config.answer_list)

    # -------------------------------------------------------------- contract
    def build(self, split: str) -> Dataset:
        files = self.annotation_files(split)
        words = self.config.max_question_words
        if self.split_role(split) == "train":
            return VQATrainDataset(files, self.image_roots(), self.image_processor(split),
                                   max_words=int(words.train), on_unreadable=self.config.on_unreadable)
        return VQAEvalDataset(files, self.image_roots(), self.image_processor(split),
                              load_answer_list(self.answer_list_file()), self.answer_processor,
                              max_words=int(words.test))

    def collate_fn(self, split: str) -> Callable[[List[Any]], Any]:
        if self.split_role(split) == "train":
            return VQATrainCollate(self.question_processor, self.answer_processor)
        return VQAEvalCollate(self.question_processor)


@dataclass
class DemoVQAConfig(VQADatasetConfig):
    image_size: int = 64
    answer_list: str = ""             # "" = the world's tasks/answer_list.json
    synthetic: SyntheticWorldConfig = field(default_factory=SyntheticWorldConfig)


@registry.register_builder("demo_vqa", aliases=("synthetic_vqa",))
class DemoVQABuilder(_SyntheticWorldMixin, VQAJsonBuilder):
    """VQA on the synthetic world: ``tasks/vqa_{train,val,test}.json`` and its answer list.

    Its val and test files keep their answers (10 identical annotations each), so both are
    scored locally. Files listed explicitly in ``annotations`` / ``answer_list`` win.
    """

    name: ClassVar[str] = "demo_vqa"
    Config = DemoVQAConfig
    split_roles = {"train": "train", "val": "val", "test": "test"}

    def splits(self) -> Dict[str, str]:
        return dict(self.split_roles)

    def prepare(self) -> None:
        from albef_plugin.datasets.synthetic.generate import load_scenes
        from albef_plugin.datasets.synthetic.tasks import emit_vqa

        super().prepare()
        world = self.world_dir()
        if not all((world / "tasks" / name).is_file() for name in self._task_files()):
            emit_vqa(load_scenes(world), world)

    @staticmethod
    def _task_files() -> List[str]:
        return ["vqa_train.json", "vqa_val.json", "vqa_test.json", "answer_list.json"]

    def _require_tasks(self) -> Path:
        world = self._require_world()
        if not all((world / "tasks" / name).is_file() for name in self._task_files()):
            self.prepare()
        return world / "tasks"

    def image_roots(self) -> Dict[str, str]:
        root = self.image_root()  # the world, unless image_root is set
        return {"vqa": root, "vg": root}

    def annotation_files(self, split: str) -> List[str]:
        if list(self.config.annotations[self.check_split(split)]):
            return VQAJsonBuilder.annotation_files(self, split)
        return [str(self._require_tasks() / f"vqa_{split}.json")]

    def answer_list_file(self) -> str:
        if self.config.answer_list:
            return self.resolve_path(self.config.answer_list)
        return str(self._require_tasks() / "answer_list.json")
