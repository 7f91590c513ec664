"""Model configs inferred from weights, and the converted-checkpoint folder format.

A converted folder (``tools/convert_checkpoint.py SRC DST``) holds:

* ``model.safetensors``: the model's state dict with every tied tensor stored once
  (safetensors refuses shared tensors; e.g. the MLM decoder weight is the word-embedding
  matrix, so only ``...word_embeddings.weight`` is written). :func:`load_checkpoint`
  re-ties them: a missing key whose tied partner is present is filled through it.
* ``config.yaml``: ``model`` (the registered name), ``model_config`` (the full config that
  rebuilds the model) and ``pretrained_cfg`` (format of the source, ``text_form``,
  ``image_size``, grid, mean / std).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from omegaconf import OmegaConf
from torch import nn

from albef_plugin.models.checkpoints import (CONFIG_NAME, FORMAT_OWN, SAFETENSORS_NAME,
                                             CheckpointError, image_size_of)

__all__ = ["infer_albef_overrides", "save_converted", "HEAD_DIM"]

logger = logging.getLogger(__name__)

# Attention heads cannot be read from weights (the qkv matrices have the same shape for any
# head count); ViT-B and BERT-base use 64 features per head, so heads = width // 64.
HEAD_DIM = 64


def _count_layers(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(indices) + 1 if indices else 0


def infer_albef_overrides(state: Mapping[str, torch.Tensor],
                          source: str = "the checkpoint") -> Dict[str, Any]:
    """ALBEF model-config overrides read from an official-layout / own state dict.

    Reads the image size (from the position-embedding grid and the patch size), widths,
    depths, the vocabulary, ``fusion_layer`` (the first layer with cross-attention), the
    projection size and the queue size. Head counts follow :data:`HEAD_DIM`; pass them as
    overrides for models with other head sizes. A VQA answer decoder (``text_decoder.*``)
    must have ``num_hidden_layers - fusion_layer`` layers, the only depth ``albef_vqa``
    builds; another depth is a :class:`CheckpointError` naming ``source``.
    """
    image: Dict[str, Any] = {}
    text: Dict[str, Any] = {}
    overrides: Dict[str, Any] = {}
    patch = state.get("visual_encoder.patch_embed.proj.weight")
    if patch is not None:
        width = int(patch.shape[0])
        image.update(patch_size=int(patch.shape[-1]), width=width,
                     num_heads=max(1, width // HEAD_DIM),
                     depth=_count_layers(state, r"^visual_encoder\.blocks\.(\d+)\."))
        size = image_size_of(state)
        if size:
            image["image_size"] = size
        fc1 = state.get("visual_encoder.blocks.0.mlp.fc1.weight")
        if fc1 is not None:
            image["mlp_ratio"] = float(fc1.shape[0]) / width
    bert = "text_encoder.bert." if any(k.startswith("text_encoder.bert.") for k in state) \
        else "text_encoder."
    words = state.get(bert + "embeddings.word_embeddings.weight")
    if words is not None:
        hidden = int(words.shape[1])
        layer = re.escape(bert) + r"encoder\.layer\.(\d+)\."
        layers = _count_layers(state, layer)
        fusion = [int(m.group(1)) for k in state
                  if (m := re.match(layer + r"crossattention\.", k))]
        text.update(vocab_size=int(words.shape[0]), hidden_size=hidden,
                    num_attention_heads=max(1, hidden // HEAD_DIM), num_hidden_layers=layers,
                    fusion_layer=min(fusion) if fusion else layers)
        _check_decoder_depth(state, layers, text["fusion_layer"], source)
        for key, name in (("embeddings.position_embeddings.weight", "max_position_embeddings"),
                          ("embeddings.token_type_embeddings.weight", "type_vocab_size"),
                          ("encoder.layer.0.intermediate.dense.weight", "intermediate_size")):
            if bert + key in state:  # the first dimension of each is the size
                text[name] = int(state[bert + key].shape[0])
    if "vision_proj.weight" in state:
        overrides["embed_dim"] = int(state["vision_proj.weight"].shape[0])
    if "image_queue" in state:
        overrides["queue_size"] = int(state["image_queue"].shape[1])
    if image:
        overrides["image_encoder"] = image
    if text:
        overrides["text_encoder"] = text
    return overrides


def _check_decoder_depth(state: Mapping[str, torch.Tensor], layers: int, fusion_layer: int,
                         source: str) -> None:
    """A VQA answer decoder's depth is not a config key: ``albef_vqa`` builds
    ``num_hidden_layers - fusion_layer`` decoder layers (6 at paper size, as the official
    code), so a file with another depth cannot be rebuilt; say so before the load fails."""
    decoder = _count_layers(state, r"^text_decoder\.bert\.encoder\.layer\.(\d+)\.")
    if decoder and decoder != layers - fusion_layer:
        raise CheckpointError(
            f"{source}: the answer decoder (text_decoder.*) has {decoder} layers but the question "
            f"encoder has {layers} layers with fusion from layer {fusion_layer}; albef_vqa builds "
            f"num_hidden_layers - fusion_layer = {layers - fusion_layer} decoder layers, so this "
            f"file cannot be rebuilt. Check that it is a complete VQA checkpoint.")


def _unique_tensors(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The state dict with each tied tensor kept once, under its first (shortest) name."""
    seen: Dict[int, str] = {}
    unique: Dict[str, torch.Tensor] = {}
    entries = sorted(model.state_dict(keep_vars=True).items(),
                     key=lambda item: ("decoder" in item[0], len(item[0]), item[0]))
    for key, value in entries:
        if id(value) in seen:
            continue
        seen[id(value)] = key
        unique[key] = value.detach().contiguous()
    return {k: unique[k] for k in model.state_dict() if k in unique}  # model order


def save_converted(model: nn.Module, name: str, folder: Union[str, Path],
                   pretrained_cfg: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``model`` as ``folder/model.safetensors`` + ``folder/config.yaml``.

    Args:
        model: a registered model (its ``config`` rebuilds it).
        name: its registered name (e.g. ``"albef_pretrain"``).
        folder: created if needed; existing files of these names are replaced.
        pretrained_cfg: metadata to record (defaults to ``model.pretrained_cfg``).
    """
    from safetensors.torch import save_file

    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    meta = dict(pretrained_cfg if pretrained_cfg is not None
                else getattr(model, "pretrained_cfg", {}) or {})
    model_config = OmegaConf.to_container(model.config, resolve=True)
    if not isinstance(model_config, dict):
        raise CheckpointError(f"{type(model).__name__}.config is not a mapping; cannot save it")
    # the weights are in this folder: do not reload the original files when rebuilding
    model_config["checkpoint"] = None
    for encoder in ("image_encoder", "text_encoder"):
        if isinstance(model_config.get(encoder), dict):
            model_config[encoder]["pretrained"] = None
    visual = getattr(model, "visual_encoder", None)
    if visual is not None:
        meta.update(image_size=int(visual.image_size), grid_size=int(visual.grid_size))
    meta.setdefault("text_form", "official")
    meta["source_format"] = meta.pop("format", meta.get("source_format"))
    meta.pop("source", None)
    save_file(_unique_tensors(model), str(folder / SAFETENSORS_NAME),
              metadata={"format": FORMAT_OWN, "model": name,
                        "pretrained_cfg": json.dumps(meta, sort_keys=True)})
    OmegaConf.save(OmegaConf.create({"model": name, "model_config": model_config,
                                     "pretrained_cfg": meta}), folder / CONFIG_NAME)
    logger.info("wrote %s and %s", folder / SAFETENSORS_NAME, folder / CONFIG_NAME)
    return folder
