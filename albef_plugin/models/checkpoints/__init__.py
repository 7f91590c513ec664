"""Loading model weights: official ALBEF checkpoints, this project's own files, safetensors.

:func:`load_checkpoint` reads a file (or takes a state dict), recognises its format by
sentinel keys, maps it onto the model and loads it, returning a :class:`LoadResult`:

==========================  ============================================================
format                      recognised by
==========================  ============================================================
``albef_plugin``            a trainer checkpoint (``format_version`` + ``model``) or a
                            folder / safetensors file written by ``tools/convert_checkpoint.py``
``albef_official_pretrain`` ``text_encoder.bert.*`` keys (``ALBEF.pth``, ``ALBEF_4M.pth``)
``albef_official_finetuned`` ``text_encoder.embeddings.*`` without ``bert.`` (retrieval and
                            grounding checkpoints: ``mscoco.pth``, ``flickr30k.pth``, ...)
``state_dict``              anything else (a bare state dict, loaded key for key)
==========================  ============================================================

The mapping is a short, declarative pipeline (no suffix matching):

1. drop a ``module.`` prefix (DDP);
2. the model's own checkpoint filter (``model.checkpoint_filter(state)``, see ``filters.py``):
   a rename table per source layout (e.g. ``albef_retrieval`` strips ``text_encoder.bert.``
   from pre-training files and ignores their MLM head), layer-index remapping where a task
   needs it, and the differences that layout is expected to have, with their reasons;
3. resample ``*pos_embed`` of every ViT whose grid differs from the file's (bicubic,
   ``align_corners=False``, class token kept: the official ``interpolate_pos_embed``);
4. keep the model's freshly initialised ITC queues when the file's queue size differs;
   momentum copies (``<name>_m``) the file has no key of are copied from the loaded online
   weights (files exported without the momentum model);
5. compare keys; every difference is either expected (the model's filter, or the
   model-independent :data:`TOLERATED` table; reported in ``LoadResult.tolerated`` with its
   reason) or reported in ``missing`` / ``unexpected``, which ``strict=True`` turns into an
   error listing them (e.g. a checkpoint of another task). A tensor of the wrong shape is
   always an error.

After a load, ``model.pretrained_cfg`` records what travels with the weights (format,
source, text form, image size, normalisation); processors derive from it (see
``albef_plugin.inference``).

Files are read with :func:`safe_torch_load` (``weights_only=True``): a file that would need
arbitrary unpickling is refused unless the caller explicitly allows it.

Modules: ``reading.py`` (safe reading, format detection, metadata), ``mapping.py`` (the steps
above and the tolerated-differences table); this file ties them together.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Union

from torch import nn

from albef_plugin.models.checkpoints.filters import (CheckpointFilter, copy_layers,
                                                     duplicate_fusion_layers,
                                                     fusion_layers_to_decoder, rename_keys,
                                                     text_encoder_layout)
from albef_plugin.models.checkpoints.mapping import (QUEUE_KEYS, TOLERATED, LoadResult,
                                                     absent_momentum_children,
                                                     copy_online_to_momentum,
                                                     group_keys_by_prefix, image_size_of,
                                                     keep_model_queues, load_state_dict_checked,
                                                     resample_pos_embed, resample_vit_pos_embeds,
                                                     strip_module_prefix)
from albef_plugin.models.checkpoints.reading import (CONFIG_NAME, FORMAT_OFFICIAL_FINETUNED,
                                                     FORMAT_OFFICIAL_PRETRAIN, FORMAT_OWN,
                                                     FORMAT_STATE_DICT, HARMLESS_GLOBALS,
                                                     SAFETENSORS_NAME, TEXT_FORM_OFFICIAL,
                                                     TEXT_FORM_WITH_SEP, CheckpointContents,
                                                     CheckpointError, UnsafeCheckpointError,
                                                     detect_format, read_checkpoint,
                                                     safe_torch_load)

__all__ = [
    "CheckpointError", "UnsafeCheckpointError", "LoadResult", "CheckpointContents", "TOLERATED",
    "QUEUE_KEYS", "HARMLESS_GLOBALS",
    "FORMAT_OWN", "FORMAT_OFFICIAL_PRETRAIN", "FORMAT_OFFICIAL_FINETUNED", "FORMAT_STATE_DICT",
    "TEXT_FORM_OFFICIAL", "TEXT_FORM_WITH_SEP", "SAFETENSORS_NAME", "CONFIG_NAME",
    "safe_torch_load", "read_checkpoint", "detect_format", "resample_pos_embed", "image_size_of",
    "load_checkpoint", "load_state_dict_checked", "group_keys_by_prefix", "copy_online_to_momentum",
    "CheckpointFilter", "rename_keys", "copy_layers", "duplicate_fusion_layers",
    "fusion_layers_to_decoder", "text_encoder_layout",
]

logger = logging.getLogger(__name__)


def _pretrained_cfg(model: nn.Module, contents: CheckpointContents) -> Dict[str, Any]:
    """The metadata that travels with the weights (timm's ``pretrained_cfg`` idea)."""
    from albef_plugin.processors.image import CLIP_MEAN, CLIP_STD

    meta = contents.metadata
    text_form = meta.get("text_form")
    if text_form is None:
        # official files were trained on "[CLS] text"; so is this project by default
        text_form = TEXT_FORM_OFFICIAL
    visual = getattr(model, "visual_encoder", None)
    return {
        "format": contents.format,
        "source": contents.source,
        "text_form": text_form,
        "image_size": getattr(visual, "image_size", meta.get("image_size")),
        "checkpoint_image_size": meta.get("image_size"),
        "mean": list(meta.get("mean", CLIP_MEAN)),
        "std": list(meta.get("std", CLIP_STD)),
    }


def load_checkpoint(model: nn.Module,
                    path_or_state_dict: Union[str, Path, Mapping[str, Any], CheckpointContents],
                    strict: bool = False, allow_unsafe_pickle: bool = False) -> LoadResult:
    """Load official ALBEF weights, this project's checkpoints or a state dict into ``model``.

    Args:
        model: e.g. ``build_model("albef_pretrain")``; its sizes must match the file's (the
            image resolution may differ: position embeddings are resampled).
        path_or_state_dict: a ``.pth`` / ``.ckpt`` / ``.safetensors`` file, a folder written
            by ``tools/convert_checkpoint.py``, or an in-memory (state) dict.
        strict: raise :class:`CheckpointError` on any missing or unexpected key that is not
            an expected difference (the model's checkpoint filter, :data:`TOLERATED`); e.g. a
            checkpoint of another task is refused with the list of differing keys.
        allow_unsafe_pickle: trusted files only; see :func:`safe_torch_load`.

    Returns:
        A :class:`LoadResult`. Sets ``model.pretrained_cfg`` (format, source, text form,
        image size, mean / std).
    """
    contents = read_checkpoint(path_or_state_dict, allow_unsafe_pickle)
    own = model.state_dict()
    state = strip_module_prefix(dict(contents.state_dict))
    expected: Dict[str, str] = {}
    checkpoint_filter = getattr(model, "checkpoint_filter", None)
    if checkpoint_filter is not None:
        state, expected = checkpoint_filter(state)
    contents.metadata.setdefault("image_size", image_size_of(state))
    result = LoadResult(format=contents.format)
    result.resampled = resample_vit_pos_embeds(model, state, own)
    keep_model_queues(state, own, result.tolerated)
    absent = absent_momentum_children(model, state)
    # A model may keep its construction-time momentum weights instead (the official NLVR.py
    # order, behind a config switch: see models/albef/nlvr.py).
    keep_momentum = bool(getattr(model, "keep_momentum_init_when_absent", False))
    reason = ("momentum copy absent from the file: kept at the model's construction-time "
              "weights (official order)" if keep_momentum else
              "momentum copy absent from the file: re-initialised from the loaded online weights")
    expected.update({k: reason for k in own if k.split(".")[0] in absent})
    logger.info("loading %s (format %s) into %s", contents.source, contents.format,
                type(model).__name__)
    load_state_dict_checked(model, state, fmt=contents.format, strict=strict,
                            source=contents.source, extra_tolerated=expected, result=result)
    if absent and not keep_momentum:
        copy_online_to_momentum(model, absent)
    model.pretrained_cfg = _pretrained_cfg(model, contents)  # type: ignore[assignment]
    return result
