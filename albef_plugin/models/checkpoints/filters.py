"""Per-model checkpoint filters: how one model reads the layouts other files come in.

timm gives every model family a ``checkpoint_filter_fn``; here each model class declares,
for each *source layout* it can read, a :class:`CheckpointFilter`: a rename table (regex ->
replacement), optionally a code step (e.g. duplicating fusion layers), and two tables of
expected differences with their reasons (file keys the model does not use; model keys the
layout does not hold). :func:`albef_plugin.models.checkpoints.load_checkpoint` applies the
model's filter first, then the model-independent steps (``module.`` prefix, position-embedding
resampling, queue sizes, momentum copies absent from the file) and a checked load.

The source layout is read off the keys (:func:`text_encoder_layout`): pre-training files keep
the text encoder with its MLM head (``text_encoder.bert.*`` + ``text_encoder.cls.*``), task
files without (``text_encoder.embeddings.*``, ``text_encoder.encoder.*``). Our own trainer
checkpoints and converted folders have the layout of the model that wrote them, so the same
tables map an ``albef_pretrain`` checkpoint of ours onto a task model.

Layer-index helpers for task layouts (f = ``fusion_layer``, n = fusion layers):
:func:`duplicate_fusion_layers` (NLVR2: fusion layer f+i -> f+2i and f+2i+1) and
:func:`fusion_layers_to_decoder` (VQA: fusion layers f..f+n-1 -> decoder layers 0..n-1).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import torch

__all__ = ["LAYOUT_TEXT_WITH_MLM_HEAD", "LAYOUT_TEXT_PLAIN", "text_encoder_layout",
           "CheckpointFilter", "rename_keys", "copy_layers", "duplicate_fusion_layers",
           "fusion_layers_to_decoder", "STRIP_BERT_PREFIX", "ADD_BERT_PREFIX"]

State = Dict[str, torch.Tensor]

LAYOUT_TEXT_WITH_MLM_HEAD = "text_encoder_with_mlm_head"  # ALBEF.pth, albef_pretrain
LAYOUT_TEXT_PLAIN = "text_encoder_plain"                  # mscoco.pth, refcoco.pth, VE, NLVR2

# Rename rows shared by the ALBEF models (online and momentum text encoders).
STRIP_BERT_PREFIX: Tuple[Tuple[str, str], ...] = (
    (r"^(text_encoder(?:_m)?)\.bert\.", r"\1."),)
ADD_BERT_PREFIX: Tuple[Tuple[str, str], ...] = (
    (r"^(text_encoder(?:_m)?)\.(embeddings|encoder)\.", r"\1.bert.\2."),)


def text_encoder_layout(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Which text-encoder layout a state dict has, from its keys; None if it has no text encoder."""
    if any(k.startswith("text_encoder.bert.") for k in state):
        return LAYOUT_TEXT_WITH_MLM_HEAD
    if any(k.startswith(("text_encoder.embeddings.", "text_encoder.encoder.")) for k in state):
        return LAYOUT_TEXT_PLAIN
    return None


def rename_keys(state: Mapping[str, torch.Tensor],
                renames: Sequence[Tuple[str, str]]) -> State:
    """Apply ``(regex, replacement)`` rows to every key, in order (``re.sub``, first match)."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in renames]
    out: State = {}
    for key, value in state.items():
        for pattern, replacement in compiled:
            key = pattern.sub(replacement, key, count=1)
        out[key] = value
    return out


def copy_layers(state: Mapping[str, torch.Tensor], source_prefix: str, target_prefix: str,
                mapping: Mapping[int, Sequence[int]], keep_source: bool = True) -> State:
    """Copy ``{source_prefix}layer.{i}.*`` to ``{target_prefix}layer.{j}.*`` for each j in
    ``mapping[i]``; other keys are kept. ``keep_source=False`` drops the mapped source keys
    (those whose layers are copied elsewhere) unless a target key overwrites them."""
    pattern = re.compile(re.escape(source_prefix) + r"layer\.(\d+)\.(.*)$")
    out: State = {}
    copies: State = {}
    for key, value in state.items():
        match = pattern.match(key)
        if match is None or int(match.group(1)) not in mapping:
            out[key] = value
            continue
        if keep_source:
            out[key] = value
        for target in mapping[int(match.group(1))]:
            copies[f"{target_prefix}layer.{target}.{match.group(2)}"] = value
    out.update(copies)
    return out


def duplicate_fusion_layers(state: Mapping[str, torch.Tensor], prefix: str, fusion_layer: int,
                            num_fusion_layers: int) -> State:
    """NLVR2 initialisation: fusion layer ``f+i`` becomes the pair ``f+2i``, ``f+2i+1``.

    ``prefix`` is the encoder's layer-list prefix, e.g. ``"text_encoder.encoder."``; layers
    below ``fusion_layer`` keep their index. Cross-attention keys and values are copied to both
    layers of a pair (a model sharing them between the pair reads the same tensor twice).
    """
    mapping = {fusion_layer + i: [fusion_layer + 2 * i, fusion_layer + 2 * i + 1]
               for i in range(num_fusion_layers)}
    return copy_layers(state, prefix, prefix, mapping, keep_source=False)


def fusion_layers_to_decoder(state: Mapping[str, torch.Tensor], encoder_prefix: str,
                             decoder_prefix: str, fusion_layer: int,
                             num_fusion_layers: int) -> State:
    """VQA initialisation: encoder fusion layers ``f..f+n-1`` are copied to decoder layers
    ``0..n-1`` (the encoder keeps them). Prefixes end with ``"encoder."``, e.g.
    ``"text_encoder.encoder."`` -> ``"text_decoder.bert.encoder."``."""
    mapping = {fusion_layer + i: [i] for i in range(num_fusion_layers)}
    return copy_layers(state, encoder_prefix, decoder_prefix, mapping, keep_source=True)


def _first_reason(rules: Iterable[Tuple[str, str]], key: str) -> Optional[str]:
    for pattern, reason in rules:
        if re.search(pattern, key):
            return reason
    return None


@dataclass(frozen=True)
class CheckpointFilter:
    """How a model reads one source layout.

    Attributes:
        renames: ``(regex, replacement)`` rows applied to every file key, in order.
        remap: an optional code step after the renames (layer duplication, copies), given the
            renamed state dict and returning the one to load.
        unused: ``(regex, reason)``: file keys (after renaming) the model has no use for.
        absent: ``(regex, reason)``: model keys this layout does not hold (left as initialised).
    Anything else that differs is reported as missing / unexpected (``strict=True`` refuses).
    """

    renames: Tuple[Tuple[str, str], ...] = ()
    remap: Optional[Callable[[State], State]] = None
    unused: Tuple[Tuple[str, str], ...] = ()
    absent: Tuple[Tuple[str, str], ...] = ()

    def apply(self, state: Mapping[str, torch.Tensor], model_keys: Iterable[str]
              ) -> Tuple[State, Dict[str, str]]:
        """``(state to load, {key: reason} of the expected differences)``."""
        mapped = rename_keys(state, self.renames)
        if self.remap is not None:
            mapped = self.remap(mapped)
        model_keys = set(model_keys)
        tolerated: Dict[str, str] = {}
        for key in mapped:
            if key not in model_keys and (reason := _first_reason(self.unused, key)):
                tolerated[key] = reason
        for key in model_keys:
            if key not in mapped and (reason := _first_reason(self.absent, key)):
                tolerated[key] = reason
        return mapped, tolerated

