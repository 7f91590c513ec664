"""Formula-level SNLI-VE / NLVR2 forwards straight from official state dicts.

Reuses the layer formulas of ``official_reference`` (explicit matmuls, the official additive
mask, post-LN BERT, pre-norm ViT) and adds what the tasks change:

- VE: all BERT layers from the token ids with cross-attention to the image in layers
  ``>= fusion_layer``; ``cls_head`` = Linear, ReLU, Linear on the last [CLS].
- NLVR2: both images through the ViT in one batch, then split; fusion block ``i`` attends
  image ``(i - fusion_layer) % 2``; the same ``cls_head`` shape to 2 classes.
- TA: the NLVR2 stack on given image pairs, ``ta_head`` (Linear to 3) on [CLS]; the negative
  sampling weights softmax(vision_proj-feature similarity / 0.07) with the diagonal zeroed.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from .official_reference import (BERT_EPS, _bert_attention, _gelu, _linear, _norm, embeddings,
                                 vit)

State = Dict[str, torch.Tensor]
PREFIX = "text_encoder."


def cls_head(sd: State, cls: torch.Tensor, prefix: str = "cls_head.") -> torch.Tensor:
    return _linear(torch.relu(_linear(cls, sd, prefix + "0")), sd, prefix + "2")


def _layer(sd: State, hidden: torch.Tensor, additive: torch.Tensor, index: int, heads: int,
           image: torch.Tensor = None, prefix: str = PREFIX) -> torch.Tensor:
    layer = f"{prefix}encoder.layer.{index}."
    hidden = _bert_attention(hidden, hidden, sd, layer + "attention.", heads, additive)
    if image is not None:  # image attention mask: all ones
        hidden = _bert_attention(hidden, image, sd, layer + "crossattention.", heads, None)
    inner = _gelu(_linear(hidden, sd, layer + "intermediate.dense"))
    return _norm(_linear(inner, sd, layer + "output.dense") + hidden, sd,
                 layer + "output.LayerNorm", BERT_EPS)


def _additive(mask: torch.Tensor) -> torch.Tensor:
    return (1.0 - mask[:, None, None, :].float()) * -10000.0


def ve_logits(sd: State, image: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor,
              vit_heads: int, bert_heads: int, layers: int, fusion_layer: int,
              prefix: str = "") -> torch.Tensor:
    """Official VE eval forward: ``cls_head(text_encoder(ids, image)[:, 0])`` -> ``[B, 3]``."""
    image_embeds = vit(sd, image, vit_heads, prefix=f"visual_encoder{prefix}.")
    text = f"text_encoder{prefix}."
    hidden, additive = embeddings(sd, input_ids, prefix=text), _additive(mask)
    for i in range(layers):
        hidden = _layer(sd, hidden, additive, i, bert_heads,
                        image_embeds if i >= fusion_layer else None, prefix=text)
    return cls_head(sd, hidden[:, 0], f"cls_head{prefix}.")


def nlvr_cls(sd: State, image0_embeds: torch.Tensor, image1_embeds: torch.Tensor,
             input_ids: torch.Tensor, mask: torch.Tensor, bert_heads: int, layers: int,
             fusion_layer: int, prefix: str = PREFIX) -> torch.Tensor:
    """The last [CLS] of the NLVR2 BERT: fusion block i attends image (i - fusion_layer) % 2."""
    hidden, additive = embeddings(sd, input_ids, prefix=prefix), _additive(mask)
    images = (image0_embeds, image1_embeds)
    for i in range(layers):
        image = images[(i - fusion_layer) % 2] if i >= fusion_layer else None
        hidden = _layer(sd, hidden, additive, i, bert_heads, image, prefix=prefix)
    return hidden[:, 0]


def nlvr_image_embeds(sd: State, image0: torch.Tensor, image1: torch.Tensor, vit_heads: int,
                      prefix: str = "visual_encoder."):
    """Both images through the ViT in one batch, then split (official ``torch.split``)."""
    embeds = vit(sd, torch.cat([image0, image1]), vit_heads, prefix=prefix)
    return embeds[: image0.shape[0]], embeds[image0.shape[0]:]


def nlvr_logits(sd: State, image0: torch.Tensor, image1: torch.Tensor, input_ids: torch.Tensor,
                mask: torch.Tensor, vit_heads: int, bert_heads: int, layers: int,
                fusion_layer: int) -> torch.Tensor:
    """Official NLVR2 eval forward -> ``[B, 2]``."""
    e0, e1 = nlvr_image_embeds(sd, image0, image1, vit_heads)
    return cls_head(sd, nlvr_cls(sd, e0, e1, input_ids, mask, bert_heads, layers, fusion_layer))


def ta_logits(sd: State, image0_embeds: torch.Tensor, image1_embeds: torch.Tensor,
              input_ids: torch.Tensor, mask: torch.Tensor, bert_heads: int, layers: int,
              fusion_layer: int) -> torch.Tensor:
    """Official TA head on given image pairs -> ``[B, 3]``."""
    cls = nlvr_cls(sd, image0_embeds, image1_embeds, input_ids, mask, bert_heads, layers,
                   fusion_layer)
    return _linear(cls, sd, "ta_head")


def ta_negative_weights(sd: State, image_embeds: torch.Tensor) -> torch.Tensor:
    """softmax(vision_proj feature similarity / 0.07) per row, diagonal zeroed."""
    feat = F.normalize(_linear(image_embeds[:, 0], sd, "vision_proj"), dim=-1)
    weights = (feat @ feat.t() / 0.07).softmax(dim=1)
    return weights.fill_diagonal_(0)
