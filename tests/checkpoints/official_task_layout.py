"""Official SNLI-VE / NLVR2 state dicts at a tiny size, from the official key names.

No fine-tuned VE or NLVR2 checkpoint was released; their layout is the official code's own
``state_dict()`` (``models/model_ve.py``, ``model_nlvr.py``, ``model_pretrain_nlvr.py``), which
LAVIS's ``albef_snli_ve_lavis.pt`` / ``albef_nlvr_lavis.pt`` follow:

- VE: ``visual_encoder.*``, ``text_encoder.{embeddings,encoder.layer.0-11}.*`` (a ``BertModel``,
  no ``bert.`` prefix, no MLM head), ``cls_head.{0,2}.*`` and the momentum copies
  ``visual_encoder_m.*``, ``text_encoder_m.*``, ``cls_head_m.*``.
- NLVR2: the same with 18 BERT layers (6 text + 6 pairs of fusion blocks) and a 2-way head.
  Within a pair the cross-attention key / value Linear modules are one object, so
  ``state_dict()`` lists the same tensor under both layer indices.
- TA (``pretrain_model_nlvr.pth``): ``visual_encoder``, the 18-layer ``text_encoder``,
  ``vision_proj``, ``text_proj``, ``temp``, ``ta_head``; no momentum model.

At the tiny size the BERT has ``fusion_layer`` text layers and ``layers - fusion_layer``
fusion layers (pairs in NLVR2).
"""
from __future__ import annotations

import dataclasses
from typing import Dict

import torch

from .official_layout import Sizes, _bert_shapes, _random, _vit_shapes, official_pretrain_state

State = Dict[str, torch.Tensor]


def nlvr_layers(s: Sizes) -> int:
    """BERT depth of the NLVR2 model: text layers + two per pre-training fusion layer."""
    return s.fusion_layer + 2 * (s.layers - s.fusion_layer)


def _encoder(s: Sizes, gen: torch.Generator, prefix: str, layers: int) -> State:
    """A ``BertModel`` (no ``bert.`` prefix, no MLM head) with ``layers`` layers."""
    shapes = _bert_shapes(dataclasses.replace(s, layers=layers))
    state = {}
    for key, shape in shapes.items():
        if key.startswith("bert."):
            state[prefix + key[len("bert."):]] = _random(shape, key, gen)
    state[prefix + "embeddings.position_ids"] = torch.arange(s.max_positions)[None]
    return state


def _share_pair_key_value(state: State, prefix: str, s: Sizes, layers: int) -> None:
    """One tensor for the cross-attention key / value of the two blocks of each pair."""
    for first in range(s.fusion_layer, layers, 2):
        for part in ("key", "value"):
            for kind in ("weight", "bias"):
                a = f"{prefix}encoder.layer.{first}.crossattention.self.{part}.{kind}"
                b = f"{prefix}encoder.layer.{first + 1}.crossattention.self.{part}.{kind}"
                state[a] = state[b]  # the official code assigns layer first+1's to layer first


def _head(s: Sizes, gen: torch.Generator, prefix: str, classes: int) -> State:
    h = s.hidden
    return {prefix + "0.weight": _random((h, h), "w", gen), prefix + "0.bias": _random((h,), "bias", gen),
            prefix + "2.weight": _random((classes, h), "w", gen),
            prefix + "2.bias": _random((classes,), "bias", gen)}


def _vit(s: Sizes, gen: torch.Generator, prefix: str, grid: int = None) -> State:
    grid = grid or s.image_size // s.patch
    return {prefix + k: _random(shape, k, gen) for k, shape in _vit_shapes(s, grid).items()}


def official_ve_state(s: Sizes = Sizes(), seed: int = 10, distill: bool = True) -> State:
    """``model_ve.ALBEF.state_dict()`` (with the momentum copies when ``distill``)."""
    gen = torch.Generator().manual_seed(seed)
    state: State = {}
    for suffix in ("", "_m") if distill else ("",):
        state.update(_vit(s, gen, f"visual_encoder{suffix}."))
        state.update(_encoder(s, gen, f"text_encoder{suffix}.", s.layers))
        state.update(_head(s, gen, f"cls_head{suffix}.", 3))
    return state


def official_nlvr_state(s: Sizes = Sizes(), seed: int = 11, distill: bool = True) -> State:
    """``model_nlvr.ALBEF.state_dict()``: 18-layer-style BERT with shared pair key / value."""
    gen = torch.Generator().manual_seed(seed)
    layers = nlvr_layers(s)
    state: State = {}
    for suffix in ("", "_m") if distill else ("",):
        state.update(_vit(s, gen, f"visual_encoder{suffix}."))
        state.update(_encoder(s, gen, f"text_encoder{suffix}.", layers))
        _share_pair_key_value(state, f"text_encoder{suffix}.", s, layers)
        state.update(_head(s, gen, f"cls_head{suffix}.", 2))
    return state


def official_ta_state(s: Sizes = Sizes(), seed: int = 12, grid: int = None) -> State:
    """``pretrain_model_nlvr.pth``'s ``model``: TA pre-training model, no momentum copies."""
    gen = torch.Generator().manual_seed(seed)
    layers = nlvr_layers(s)
    state = _vit(s, gen, "visual_encoder.", grid)
    state.update(_encoder(s, gen, "text_encoder.", layers))
    _share_pair_key_value(state, "text_encoder.", s, layers)
    state["vision_proj.weight"] = _random((s.embed_dim, s.width), "w", gen)
    state["vision_proj.bias"] = _random((s.embed_dim,), "bias", gen)
    state["text_proj.weight"] = _random((s.embed_dim, s.hidden), "w", gen)
    state["text_proj.bias"] = _random((s.embed_dim,), "bias", gen)
    state["temp"] = torch.tensor(0.07)
    state["ta_head.weight"] = _random((3, s.hidden), "w", gen)
    state["ta_head.bias"] = _random((3,), "bias", gen)
    return state


__all__ = ["Sizes", "nlvr_layers", "official_ve_state", "official_nlvr_state", "official_ta_state",
           "official_pretrain_state"]
