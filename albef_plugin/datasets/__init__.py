"""Datasets and dataset builders; importing this package registers the builders.

Registered builders (``registry.get_builder_class(name)``):

- ``albef_pretrain_json``: official pre-training JSON (train) + re_eval (val / test)
- ``albef_retrieval_json``: official re_train (train) + re_eval (val / test)
- ``demo_pretrain`` / ``synthetic_pretrain``: the same on the generated synthetic world
- ``demo_retrieval`` / ``synthetic_retrieval``
- ``albef_grounding_json``: RefCOCO+ grounding (official JSON + REFER refs / instances, dets);
  ``demo_grounding`` / ``synthetic_grounding``: the same files of the synthetic world
- ``albef_pretrain_shards`` / ``webdataset_pretrain``: pre-training from webdataset tar shards
- ``demo_pretrain_shards`` / ``synthetic_pretrain_shards``: the synthetic world as shards
- ``albef_ve_json`` / ``albef_nlvr2_json``: SNLI-VE / NLVR2 official JSON (train / val / test)
- ``demo_ve`` / ``demo_nlvr2``: the same on the synthetic world's task files
- ``albef_vqa_json``: official VQA files (train / optional val / test, answer_list.json)
- ``demo_vqa`` / ``synthetic_vqa``: VQA on the synthetic world

Batch contract: see :mod:`albef_plugin.datasets.collate`.
"""
from albef_plugin.datasets.annotations import AnnotationError, load_annotations
from albef_plugin.datasets.base import (BaseDatasetBuilder, ProcessorsConfig, ProcessorSpec,
                                        SplitFilesConfig)
from albef_plugin.datasets.builders import (JsonDatasetConfig, JsonImageTextBuilder,
                                            PretrainJsonBuilder, RetrievalJsonBuilder)
from albef_plugin.datasets.collate import EvalImageCollate, ImageTextCollate
from albef_plugin.datasets.images import UnreadableImageError, read_rgb
from albef_plugin.datasets.pretrain import PretrainDataset
from albef_plugin.datasets.retrieval import RetrievalEvalDataset, RetrievalTrainDataset
from albef_plugin.datasets.shard_builders import DemoPretrainShardsBuilder, ShardsPretrainBuilder
from albef_plugin.datasets.streams import SampleStream
from albef_plugin.datasets.synthetic import DemoPretrainBuilder, DemoRetrievalBuilder
from albef_plugin.datasets.grounding_builders import DemoGroundingBuilder, GroundingJsonBuilder
from albef_plugin.datasets.ve_nlvr_builders import (DemoNLVR2Builder, DemoVEBuilder, NLVR2JsonBuilder,
                                                   VEJsonBuilder)
from albef_plugin.datasets.vqa_builders import DemoVQABuilder, VQAJsonBuilder

__all__ = [
    "DemoGroundingBuilder",
    "GroundingJsonBuilder",
    "BaseDatasetBuilder", "ProcessorSpec", "ProcessorsConfig", "SplitFilesConfig", "JsonDatasetConfig",
    "JsonImageTextBuilder", "PretrainJsonBuilder", "RetrievalJsonBuilder", "DemoPretrainBuilder",
    "DemoRetrievalBuilder", "PretrainDataset", "RetrievalTrainDataset", "RetrievalEvalDataset",
    "ImageTextCollate", "EvalImageCollate", "AnnotationError", "load_annotations",
    "UnreadableImageError", "read_rgb", "ShardsPretrainBuilder", "DemoPretrainShardsBuilder",
    "SampleStream", "VEJsonBuilder", "NLVR2JsonBuilder", "DemoVEBuilder", "DemoNLVR2Builder",
    "VQAJsonBuilder", "DemoVQABuilder",
]
