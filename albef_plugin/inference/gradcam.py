"""Grad-CAM heat-maps of ALBEF (the official grounding evaluation and visualisation notebook).

ITM mode (:func:`itm_gradcam`, the default): the attention probabilities of one fusion
layer's cross-attention ``A [B, heads, L_text, 1+N]`` and their gradient ``dA`` of the ITM
match logit ``itm_head(fusion [CLS])[:, 1].sum()``; drop the image [CLS] column, then
``A * clamp(dA, 0)`` with padded text positions zeroed, averaged over heads. Each text
token's row is that token's map; the whole-sentence map averages the rows over all ``L``
positions, padding counted as zeros (as the official code does).

ITC mode (:func:`itc_gradcam`): the gradient of the diagonal ``sim(image_i, text_i) / temp``
with respect to one ViT block's self-attention, the row of the image [CLS] query.

Only the recorded layer leaves scaled_dot_product_attention (``record_attention``), and only
for the duration of the call.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, NamedTuple, Optional

import torch
from torch import nn

__all__ = ["GradCAM", "itm_gradcam", "itc_gradcam", "cross_attention_of"]


class GradCAM(NamedTuple):
    """``sentence [B, g, g]``: the whole-expression map; ``tokens [B, L, g, g]`` (ITM mode; None
    in ITC mode): one map per text position (zeros at padding); ``score [B]``: the score whose
    gradient made the maps (ITM match logit, or ITC sim / temp)."""

    sentence: torch.Tensor
    tokens: Optional[torch.Tensor]
    score: torch.Tensor


def cross_attention_of(model: nn.Module, layer: int) -> nn.Module:
    """The ``BertSelfAttention`` of text/fusion layer ``layer``'s cross-attention."""
    bert = getattr(model.text_encoder, "bert", model.text_encoder)
    layers = bert.encoder.layer
    if not 0 <= layer < len(layers) or not layers[layer].has_cross_attention:
        raise ValueError(f"text layer {layer} has no cross-attention (fusion layers are "
                         f"{bert.config.fusion_layer}..{len(layers) - 1}); pick one of those.")
    return layers[layer].crossattention.self


@contextlib.contextmanager
def _recording(attention: nn.Module) -> Iterator[nn.Module]:
    attention.record_attention = True
    try:
        yield attention
    finally:
        attention.record_attention = False
        attention.attention_map = None


def _grid(num_patches: int) -> int:
    side = int(round(num_patches ** 0.5))
    if side * side != num_patches:
        raise ValueError(f"{num_patches} image patches do not form a square grid")
    return side


def itm_gradcam(model: Any, image: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, layer: int) -> GradCAM:
    """ITM-mode Grad-CAM on the cross-attention of text layer ``layer`` (see the module doc)."""
    attention = cross_attention_of(model, layer)
    with torch.enable_grad(), _recording(attention):
        image_embeds, _ = model.encode_image(image)
        text_embeds, _ = model.encode_text(input_ids, attention_mask)
        score = model.itm_logits(text_embeds, attention_mask, image_embeds)[:, 1]
        maps = attention.attention_map
        grads = torch.autograd.grad(score.sum(), maps)[0]
    batch, _, length, tokens = maps.shape
    side = _grid(tokens - 1)
    mask = attention_mask.to(maps.dtype).view(batch, 1, length, 1)
    cam = maps.detach()[..., 1:] * mask
    grad = grads[..., 1:].clamp(min=0) * mask
    per_token = (cam * grad).mean(dim=1).view(batch, length, side, side)
    return GradCAM(sentence=per_token.mean(dim=1), tokens=per_token, score=score.detach())


def itc_gradcam(model: Any, image: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, block: int) -> GradCAM:
    """ITC-mode Grad-CAM on ViT block ``block``'s self-attention (see the module doc)."""
    with torch.enable_grad(), model.visual_encoder.record_attention(block) as recorded:
        _, image_feat = model.encode_image(image)
        _, text_feat = model.encode_text(input_ids, attention_mask)
        score = (image_feat * text_feat).sum(dim=-1) / model.temp
        maps = recorded[-1]
        grads = torch.autograd.grad(score.sum(), maps)[0]
    batch = maps.shape[0]
    side = _grid(maps.shape[-1] - 1)
    cam = maps.detach()[:, :, 0, 1:]
    grad = grads[:, :, 0, 1:].clamp(min=0)
    sentence = (cam * grad).mean(dim=1).view(batch, side, side)
    return GradCAM(sentence=sentence, tokens=None, score=score.detach())
