"""Processors: callables turning raw inputs (captions, PIL images) into tensors.

Registered processors (``registry.get_processor_class(name)``):

- ``"bert_text"``: :class:`~albef_plugin.processors.text.TextProcessor`
- ``"albef_image_train"``: :class:`~albef_plugin.processors.image.ImageTrainProcessor`
- ``"albef_image_eval"``: :class:`~albef_plugin.processors.image.ImageEvalProcessor`

Each has a nested ``Config`` dataclass (its parameters and defaults), keyword-only
``__init__`` arguments of the same names and ``from_config(mapping)``. In YAML a
processor is written MMF-style as ``{type: <name>, params: {...}}`` and built with
:func:`build_processor`.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from albef_plugin.processors.image import CLIP_MEAN, CLIP_STD, ImageEvalProcessor, ImageTrainProcessor
from albef_plugin.processors.randaugment import ALBEF_OPS, RandAugment
from albef_plugin.processors.text import PACKAGED_VOCAB, TextProcessor, pre_caption, pre_question
from albef_plugin.registry import PROCESSORS

__all__ = [
    "build_processor", "TextProcessor", "ImageTrainProcessor", "ImageEvalProcessor", "RandAugment",
    "pre_caption", "pre_question", "PACKAGED_VOCAB", "CLIP_MEAN", "CLIP_STD", "ALBEF_OPS",
]


def build_processor(spec: Mapping[str, Any], where: str = "processor",
                    **overrides: Any) -> Any:
    """Build a registered processor from ``{"type": name, "params": {...}}``.

    Args:
        spec: the processor's registry name under ``type`` and its keyword arguments
            under ``params`` (a dict or a DictConfig).
        where: the config path of ``spec``, used in error messages
            (e.g. ``"dataset_config.demo_pretrain.processors.text"``).
        **overrides: parameters set by the caller (e.g. ``image_size``); a parameter both
            in ``params`` and here is an error, so a value is never silently ignored.

    Raises:
        ValueError: unknown parameter names (with the closest valid name) or a clash
            with ``overrides``; the registry's UnknownNameError for an unknown type.
    """
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)  # type: ignore[assignment]
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ValueError(f"{where} must be a mapping with a `type` (a registered processor name) "
                         f"and optional `params`, got {spec!r}.")
    name = str(spec["type"])
    cls = PROCESSORS.get(name)
    params = dict(spec.get("params") or {})
    clash = sorted(set(params) & set(overrides))
    if clash:
        raise ValueError(f"{where}.params sets {clash}, which the dataset builder sets itself; "
                         f"remove them from params and set the builder's own key "
                         f"(e.g. `image_size`) instead.")
    params.update(overrides)
    config_cls = getattr(cls, "Config", None)
    if config_cls is not None:
        valid = [f.name for f in dataclasses.fields(config_cls)]
        for key in params:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"Unknown parameter {where}.params.{key} for processor {name!r}."
                                 f"{hint} Valid parameters: {', '.join(valid)}.")
    builder = getattr(cls, "from_config", None)
    return builder(params) if builder is not None else cls(**params)

