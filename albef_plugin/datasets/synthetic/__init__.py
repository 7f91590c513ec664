"""The synthetic demo world: seeded scenes of coloured shapes with captions.

- :mod:`.world`: scene sampling, captions, rendering;
- :mod:`.generate`: writing a world (JPEGs + official-format JSON), idempotently;
- :mod:`.tasks`: VQA / NLVR2 / SNLI-VE / grounding annotations from the same scenes;
- :mod:`.builders`: the ``demo_pretrain`` and ``demo_retrieval`` dataset builders;
- :mod:`.shards`: the training images as webdataset tar shards (``demo_pretrain_shards``).

Command line: ``python -m albef_plugin.datasets.synthetic --out DIR [--num-train N ...] [--shards N]``.
"""
from albef_plugin.datasets.synthetic.builders import DemoPretrainBuilder, DemoRetrievalBuilder
from albef_plugin.datasets.synthetic.generate import (ANNOTATION_FILES, WorldSpec, generate_scenes,
                                                      generate_world, load_scenes, make_scene,
                                                      world_is_complete)
from albef_plugin.datasets.synthetic.tasks import (emit_all, emit_grounding, emit_nlvr2, emit_snli_ve,
                                                   emit_vqa)

__all__ = ["WorldSpec", "generate_world", "generate_scenes", "make_scene", "load_scenes",
           "world_is_complete", "ANNOTATION_FILES", "DemoPretrainBuilder", "DemoRetrievalBuilder",
           "emit_all", "emit_vqa", "emit_nlvr2", "emit_snli_ve", "emit_grounding"]
