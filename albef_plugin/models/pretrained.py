"""Initial weights from local files: DeiT / timm ViT for the image encoder, Hugging Face BERT
for the text and fusion encoders (``image_encoder.pretrained`` / ``text_encoder.pretrained``).

**DeiT / timm ViT** (a ``.pth`` with or without ``"model"``, or a ``.safetensors`` file):
timm's key names are the model's, so only this is mapped:

* ``head.*`` (classifier) is dropped; for *distilled* DeiT also ``head_dist.*`` and
  ``dist_token``, together with the distillation token's row of ``pos_embed`` (row 1), so
  the class token and the patch grid are what remains;
* ``pos_embed`` is resampled to the configured resolution (14x14 at 224 px -> 16x16 at 256 px).

**Hugging Face BERT** (a folder with ``config.json`` and ``model.safetensors``, a sharded
``model.safetensors.index.json`` or ``pytorch_model.bin``), declaratively:

* a leading ``bert.`` is stripped (``BertForMaskedLM`` / ``BertForPreTraining`` files);
* old TF-port names ``LayerNorm.gamma`` / ``LayerNorm.beta`` become ``weight`` / ``bias``;
* dropped: ``pooler.*``, the NSP head ``cls.seq_relationship.*`` and constant buffers
  (``position_ids``, ``token_type_ids``);
* ``embeddings.*`` and ``encoder.layer.N.*`` land on the same names of our BERT, so layers
  ``0 .. fusion_layer-1`` initialise the text encoder and ``fusion_layer .. 11`` the fusion
  encoder, whose cross-attention stays freshly initialised (normal, std 0.02);
* ``cls.predictions.*`` initialises the MLM head (its decoder is tied to the word
  embeddings); a ``BertModel`` folder without it leaves the head fresh, with a warning.

:func:`load_initial_weights` applies both to a model and then copies every online encoder
into its momentum copy (``<name>_m``), which must start equal to the online weights.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from albef_plugin.models.checkpoints import (CheckpointError, LoadResult, copy_online_to_momentum,
                                             load_state_dict_checked, resample_pos_embed,
                                             safe_torch_load)

__all__ = ["load_vit_pretrained", "load_bert_pretrained", "copy_online_to_momentum",
           "load_initial_weights", "read_weights_file", "HF_BERT_RENAMES"]

logger = logging.getLogger(__name__)

FORMAT_TIMM = "timm_vit"
FORMAT_HF_BERT = "hf_bert"

# Hugging Face BERT key renames, applied in order (regex, replacement); None drops the key.
HF_BERT_RENAMES: Tuple[Tuple[str, Optional[str]], ...] = (
    (r"^bert\.", ""),
    (r"LayerNorm\.gamma$", "LayerNorm.weight"),
    (r"LayerNorm\.beta$", "LayerNorm.bias"),
    (r"^pooler\.", None),
    (r"^cls\.seq_relationship\.", None),
    (r"(^|\.)position_ids$", None),
    (r"(^|\.)token_type_ids$", None),
)
# config.json entries that must equal our text encoder's (ours -> Hugging Face name).
_BERT_SIZE_KEYS = {"hidden_size": "hidden_size", "num_attention_heads": "num_attention_heads",
                   "intermediate_size": "intermediate_size", "vocab_size": "vocab_size",
                   "max_position_embeddings": "max_position_embeddings",
                   "type_vocab_size": "type_vocab_size"}


def read_weights_file(path: Union[str, Path], allow_unsafe_pickle: bool = False
                      ) -> Dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch file (bare, or under ``model`` /
    ``state_dict``), with a DDP ``module.`` prefix removed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Mapping[str, Any] = load_file(str(path), device="cpu")
    else:
        state = safe_torch_load(path, allow_unsafe_pickle)
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict")
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{str(path)!r} holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


# ------------------------------------------------------------------------------ ViT
def load_vit_pretrained(encoder: nn.Module, path: Union[str, Path], strict: bool = True,
                        allow_unsafe_pickle: bool = False) -> LoadResult:
    """Initialise a :class:`~albef_plugin.models.vit.VisionEncoder` from DeiT / timm weights.

    Args:
        encoder: the ViT (``model.visual_encoder``).
        path: ``.pth`` (with or without ``"model"``) or ``.safetensors``.
        strict: raise when a weight of the encoder is not in the file (or vice versa).
    """
    state = read_weights_file(path, allow_unsafe_pickle)
    dropped = {}
    for key in [k for k in state if k.startswith(("head.", "head_dist."))]:
        del state[key]
        dropped[key] = "classification head: ALBEF's ViT has none"
    if "dist_token" in state:
        # distilled DeiT: tokens are [cls, dist, patches]; keep cls and the patch grid
        del state["dist_token"]
        dropped["dist_token"] = "distillation token of distilled DeiT: not used"
        if "pos_embed" in state:
            state["pos_embed"] = torch.cat([state["pos_embed"][:, :1], state["pos_embed"][:, 2:]],
                                           dim=1)
    result = LoadResult(format=FORMAT_TIMM, tolerated=dropped)
    own = encoder.state_dict()
    if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
        state["pos_embed"] = resample_pos_embed(state["pos_embed"],
                                                tuple(encoder.patch_embed.grid_size),
                                                int(getattr(encoder, "num_prefix_tokens", 1)))
        result.resampled.append("pos_embed")
    logger.info("initialising the image encoder from %s", path)
    return load_state_dict_checked(encoder, state, fmt=FORMAT_TIMM, strict=strict,
                                   source=str(path), result=result)


# ----------------------------------------------------------------------------- BERT
def _hf_bert_state(folder: Path, allow_unsafe_pickle: bool) -> Dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        return read_weights_file(folder / "model.safetensors")
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: Dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_weights_file(folder / shard))
        return state
    if (folder / "pytorch_model.bin").is_file():
        return read_weights_file(folder / "pytorch_model.bin", allow_unsafe_pickle)
    raise CheckpointError(f"BERT folder {str(folder)!r} has no model.safetensors, "
                          f"model.safetensors.index.json or pytorch_model.bin; give a folder "
                          f"written by transformers' save_pretrained (e.g. bert-base-uncased).")


def _check_bert_config(folder: Path, bert_config: Any) -> None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"BERT folder {str(folder)!r} has no config.json; give a folder "
                              f"written by transformers' save_pretrained.")
    hf = json.loads(config_path.read_text())
    for ours, theirs in _BERT_SIZE_KEYS.items():
        if theirs in hf and int(hf[theirs]) != int(getattr(bert_config, ours)):
            raise CheckpointError(
                f"{config_path} has {theirs}={hf[theirs]} but the text encoder is built with "
                f"text_encoder.{ours}={getattr(bert_config, ours)}; set "
                f"model_config.<model>.text_encoder.{ours}={hf[theirs]} or use matching weights.")
    if int(hf.get("num_hidden_layers", bert_config.num_hidden_layers)) < \
            bert_config.num_hidden_layers:
        raise CheckpointError(
            f"{config_path} has num_hidden_layers={hf['num_hidden_layers']}, fewer than the "
            f"text encoder's {bert_config.num_hidden_layers}; lower "
            f"text_encoder.num_hidden_layers.")
    if hf.get("hidden_act", "gelu") != "gelu":
        logger.warning("%s uses hidden_act=%r; this BERT uses exact (erf) GELU", config_path,
                       hf["hidden_act"])


def _rename_hf_bert(state: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    renamed: Dict[str, torch.Tensor] = {}
    dropped: List[str] = []
    for key, value in state.items():
        new_key: Optional[str] = key
        for pattern, replacement in HF_BERT_RENAMES:
            if re.search(pattern, new_key):
                if replacement is None:
                    new_key = None
                    break
                new_key = re.sub(pattern, replacement, new_key)
        if new_key is None:
            dropped.append(key)
        else:
            renamed[new_key] = value
    return renamed, dropped


def load_bert_pretrained(text_encoder: nn.Module, folder: Union[str, Path], strict: bool = True,
                         allow_unsafe_pickle: bool = False) -> LoadResult:
    """Initialise our BERT (``BertForMaskedLM`` or ``BertModel``) from a Hugging Face folder.

    Args:
        text_encoder: ``model.text_encoder``.
        folder: a ``save_pretrained`` folder of ``BertModel`` / ``BertForMaskedLM`` /
            ``BertForPreTraining`` (e.g. bert-base-uncased).
        strict: raise when a weight is neither in the file nor an expected difference
            (fresh cross-attention, tied decoder, absent MLM head).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"text_encoder.pretrained={str(folder)!r} is not a folder; give a "
                              f"Hugging Face BERT folder with config.json and model.safetensors.")
    config = text_encoder.config
    _check_bert_config(folder, config)
    state, dropped = _rename_hf_bert(_hf_bert_state(folder, allow_unsafe_pickle))
    has_mlm_head = hasattr(text_encoder, "cls") and hasattr(text_encoder, "bert")
    if has_mlm_head:
        state = {(k if k.startswith("cls.") else "bert." + k): v for k, v in state.items()}
    tolerated: Dict[str, str] = {}
    for key in text_encoder.state_dict():
        if ".crossattention." in key:
            tolerated[key] = "cross-attention: new in ALBEF, freshly initialised"
    file_has_head = any(k.startswith("cls.predictions.") for k in state)
    if has_mlm_head and not file_has_head:
        logger.warning("%s has no MLM head (cls.predictions): it stays freshly initialised", folder)
        for key in text_encoder.state_dict():
            if key.startswith("cls."):
                tolerated[key] = "MLM head absent from the BERT folder: freshly initialised"
    if not has_mlm_head:
        for key in [k for k in state if k.startswith("cls.")]:
            tolerated[key] = "MLM head: this text encoder has none"
    extra_layers = [k for k in state if (m := re.match(r"^(bert\.)?encoder\.layer\.(\d+)\.", k))
                    and int(m.group(2)) >= config.num_hidden_layers]
    for key in extra_layers:
        tolerated[key] = "BERT layer beyond text_encoder.num_hidden_layers"
    logger.info("initialising the text encoder from %s", folder)
    result = LoadResult(format=FORMAT_HF_BERT, tolerated={
        k: "not used by ALBEF (pooler, NSP head or a constant buffer)" for k in dropped})
    return load_state_dict_checked(text_encoder, state, fmt=FORMAT_HF_BERT, strict=strict,
                                   source=str(folder), extra_tolerated=tolerated, result=result)


def load_initial_weights(model: nn.Module, image_pretrained: Optional[str],
                         text_pretrained: Optional[str], allow_unsafe_pickle: bool = False
                         ) -> Dict[str, LoadResult]:
    """DeiT weights into ``model.visual_encoder``, BERT into ``model.text_encoder``, then the
    momentum encoders re-copied from the online ones. Returns the results by encoder."""
    results: Dict[str, LoadResult] = {}
    if image_pretrained:
        results["visual_encoder"] = load_vit_pretrained(
            model.visual_encoder, image_pretrained, allow_unsafe_pickle=allow_unsafe_pickle)
    if text_pretrained:
        results["text_encoder"] = load_bert_pretrained(
            model.text_encoder, text_pretrained, allow_unsafe_pickle=allow_unsafe_pickle)
    if results:
        reset = copy_online_to_momentum(model)
        logger.info("momentum encoders re-initialised from the online ones: %s", ", ".join(reset))
    return results
