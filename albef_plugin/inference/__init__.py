"""Use a trained ALBEF from a notebook or another project.

Example::

    from PIL import Image
    from albef_plugin import load_model_and_preprocess

    model, image_processor, text_processor = load_model_and_preprocess(
        "albef_pretrain", checkpoint="weights/ALBEF_4M.pth")   # or a converted folder
    image = image_processor(Image.open("dog.jpg")).unsqueeze(0)
    text = text_processor(["a dog on the grass"])
    with torch.no_grad():
        image_embeds, image_feat = model.encode_image(image)
        text_embeds, text_feat = model.encode_text(text["input_ids"], text["attention_mask"])
        similarity = image_feat @ text_feat.t()
        itm = model.itm_logits(text_embeds, text["attention_mask"], image_embeds)
        match_probability = itm.softmax(-1)[:, 1]

The processors match the weights: the image processor resizes to the model's resolution
(read from the checkpoint) and normalises with the checkpoint's mean / std (CLIP's for
ALBEF); the text processor uses the tokenizer form the weights were trained with
(``[CLS] text`` for official ALBEF weights, from ``model.pretrained_cfg["text_form"]``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Mapping, NamedTuple, Optional, Union

import torch
from omegaconf import OmegaConf
from torch import nn

from albef_plugin.models.checkpoints import (TEXT_FORM_OFFICIAL, TEXT_FORM_WITH_SEP,
                                             CheckpointContents, CheckpointError, LoadResult,
                                             load_checkpoint, read_checkpoint)
from albef_plugin.inference.convert import infer_albef_overrides, save_converted

__all__ = ["ModelAndProcessors", "load_model_and_preprocess", "overrides_for_checkpoint",
           "infer_albef_overrides", "save_converted"]

logger = logging.getLogger(__name__)


class ModelAndProcessors(NamedTuple):
    """``(model, image_processor, text_processor)``; unpack it or use the names."""

    model: nn.Module
    image_processor: Any
    text_processor: Any


def _merge(*configs: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    merged = OmegaConf.create({})
    for config in configs:
        if config:
            merged = OmegaConf.merge(merged, OmegaConf.create(dict(config)))
    result = OmegaConf.to_container(merged, resolve=True)
    return result if isinstance(result, dict) else {}


def _without_weight_paths(model_config: Mapping[str, Any]) -> Dict[str, Any]:
    """The stored config minus the paths of weights to load at construction: the checkpoint
    itself is loaded afterwards, and the original DeiT / BERT files may not exist here."""
    config = _merge(model_config)
    config.pop("checkpoint", None)
    for encoder in ("image_encoder", "text_encoder"):
        if isinstance(config.get(encoder), dict):
            config[encoder].pop("pretrained", None)
    return config


def overrides_for_checkpoint(contents: CheckpointContents,
                             overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Model-config overrides that rebuild the model of ``contents``: the config stored with
    our checkpoints, or sizes inferred from the tensors of official ones; ``overrides`` win.
    Paths of weights to load at construction (``checkpoint``, ``*.pretrained``) are removed."""
    stored = contents.metadata.get("model_config")
    # ours: the config that built it; official files carry none: read sizes off the tensors
    base = (_without_weight_paths(stored) if stored
            else infer_albef_overrides(contents.state_dict, contents.source))
    return _merge(base, _without_weight_paths(overrides or {}))


def load_model_and_preprocess(name: str, checkpoint: Union[None, str, Path] = None,
                              device: Union[str, torch.device] = "cpu",
                              overrides: Optional[Mapping[str, Any]] = None, *,
                              strict: bool = True, allow_unsafe_pickle: bool = False,
                              text_max_length: int = 30) -> ModelAndProcessors:
    """A registered model in eval mode with the image and text processors that match it.

    Args:
        name: registered model name, e.g. ``"albef_pretrain"``.
        checkpoint: official ALBEF file, one of this project's checkpoints (trainer
            ``.ckpt`` or converted folder) or a state dict file; None: random weights.
        device: where to put the model.
        overrides: model-config overrides (nested dict); they win over what is read from the
            checkpoint (its stored config, or sizes inferred from its tensors).
        strict: raise on unexplained missing / unexpected keys (see ``load_checkpoint``).
        allow_unsafe_pickle: trusted files only (see ``safe_torch_load``).
        text_max_length: tokens per text, ``[CLS]`` included (official evaluation: 30).

    Returns:
        ``ModelAndProcessors(model, image_processor, text_processor)``.
    """
    from albef_plugin.models import build_model
    from albef_plugin.processors import ImageEvalProcessor, TextProcessor

    contents = None
    model_overrides = _without_weight_paths(overrides or {})
    if checkpoint is not None:
        contents = read_checkpoint(checkpoint, allow_unsafe_pickle)
        stored_name = contents.metadata.get("model")
        if stored_name and stored_name != name:
            raise CheckpointError(f"{contents.source} holds a {stored_name!r} model but "
                                  f"load_model_and_preprocess was asked for {name!r}; pass "
                                  f"name={stored_name!r}.")
        model_overrides = overrides_for_checkpoint(contents, overrides)
    model = build_model(name, model_overrides)
    if contents is not None:
        result: LoadResult = load_checkpoint(model, contents, strict=strict)
        if result.missing or result.unexpected:
            logger.warning("%s: %d missing, %d unexpected keys (strict=False)", contents.source,
                           len(result.missing), len(result.unexpected))
    model = model.to(device).eval()
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    image_size = int(cfg.get("image_size") or model.config.image_encoder.image_size)
    image_kwargs: Dict[str, Any] = {"image_size": image_size}
    if cfg.get("mean") and cfg.get("std"):
        image_kwargs.update(mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
    text_form = cfg.get("text_form", TEXT_FORM_OFFICIAL)
    if text_form not in (TEXT_FORM_OFFICIAL, TEXT_FORM_WITH_SEP):
        raise CheckpointError(f"pretrained_cfg.text_form={text_form!r}: expected "
                              f"{TEXT_FORM_OFFICIAL!r} or {TEXT_FORM_WITH_SEP!r}.")
    text_processor = TextProcessor(max_length=text_max_length,
                                   add_sep=text_form == TEXT_FORM_WITH_SEP)
    model_vocab = getattr(getattr(model.config, "text_encoder", None), "vocab_size", None)
    if model_vocab is not None and int(model_vocab) < text_processor.vocab_size:
        raise CheckpointError(
            f"the model's text vocabulary has {model_vocab} tokens but the tokenizer "
            f"({text_processor.vocab_path}) has {text_processor.vocab_size}: token ids would "
            f"overflow the embeddings. Use weights trained with bert-base-uncased's vocabulary.")
    return ModelAndProcessors(model, ImageEvalProcessor(**image_kwargs), text_processor)
