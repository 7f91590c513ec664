"""An independent, formula-level ALBEF forward computed straight from an official state dict.

Written from the paper and the official formulas, not from the model code: explicit matmuls,
softmax with the official additive mask ``(1 - mask) * -10000``, ``1/sqrt(head_dim)``
scaling, exact erf GELU, LayerNorm eps 1e-6 (ViT) / 1e-12 (BERT), pre-norm ViT blocks,
post-LN BERT blocks, cross-attention keys / values read ``encoder_width`` features, the MLM
head ``dense -> GELU -> LayerNorm -> tied decoder + bias``, token type 0, no pooler.
Comparing the model loaded from the same state dict with this checks the key mapping and
every layer detail at once.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

State = Dict[str, torch.Tensor]
VIT_EPS, BERT_EPS = 1e-6, 1e-12


def _linear(x: torch.Tensor, sd: State, name: str) -> torch.Tensor:
    return x @ sd[name + ".weight"].t() + sd[name + ".bias"]


def _norm(x: torch.Tensor, sd: State, name: str, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * sd[name + ".weight"] + sd[name + ".bias"]


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
            additive_mask: torch.Tensor = None) -> torch.Tensor:
    q, k, v = _heads(q, heads), _heads(k, heads), _heads(v, heads)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if additive_mask is not None:
        scores = scores + additive_mask
    out = scores.softmax(-1) @ v
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


def vit(sd: State, image: torch.Tensor, heads: int, prefix: str = "visual_encoder.") -> torch.Tensor:
    p = prefix
    weight = sd[p + "patch_embed.proj.weight"]
    x = F.conv2d(image, weight, sd[p + "patch_embed.proj.bias"], stride=weight.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[p + "cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd[p + "pos_embed"]
    depth = len({k.split(".")[2] for k in sd if k.startswith(p + "blocks.")})
    for i in range(depth):
        b = f"{p}blocks.{i}."
        h = _norm(x, sd, b + "norm1", VIT_EPS)
        q, k, v = _linear(h, sd, b + "attn.qkv").chunk(3, dim=-1)
        x = x + _linear(_attend(q, k, v, heads), sd, b + "attn.proj")
        h = _norm(x, sd, b + "norm2", VIT_EPS)
        x = x + _linear(_gelu(_linear(h, sd, b + "mlp.fc1")), sd, b + "mlp.fc2")
    return _norm(x, sd, p + "norm", VIT_EPS)


def _bert_attention(hidden, context, sd, name, heads, additive_mask):
    q = _linear(hidden, sd, name + "self.query")
    k = _linear(context, sd, name + "self.key")
    v = _linear(context, sd, name + "self.value")
    out = _linear(_attend(q, k, v, heads, additive_mask), sd, name + "output.dense")
    return _norm(out + hidden, sd, name + "output.LayerNorm", BERT_EPS)


def bert_layers(sd: State, hidden: torch.Tensor, mask: torch.Tensor, start: int, end: int,
                heads: int, image: torch.Tensor = None, prefix: str = "text_encoder.bert.",
                fusion_layer: int = 2) -> torch.Tensor:
    additive = (1.0 - mask[:, None, None, :].float()) * -10000.0
    for i in range(start, end):
        layer = f"{prefix}encoder.layer.{i}."
        hidden = _bert_attention(hidden, hidden, sd, layer + "attention.", heads, additive)
        if i >= fusion_layer:  # image attention mask: all ones
            hidden = _bert_attention(hidden, image, sd, layer + "crossattention.", heads, None)
        inner = _gelu(_linear(hidden, sd, layer + "intermediate.dense"))
        hidden = _norm(_linear(inner, sd, layer + "output.dense") + hidden, sd,
                       layer + "output.LayerNorm", BERT_EPS)
    return hidden


def embeddings(sd: State, input_ids: torch.Tensor, prefix: str = "text_encoder.bert.") -> torch.Tensor:
    e = prefix + "embeddings."
    positions = torch.arange(input_ids.shape[1])
    x = (sd[e + "word_embeddings.weight"][input_ids] + sd[e + "position_embeddings.weight"][positions]
         + sd[e + "token_type_embeddings.weight"][0])
    return _norm(x, sd, e + "LayerNorm", BERT_EPS)


def mlm_head(sd: State, hidden: torch.Tensor, prefix: str = "text_encoder.cls.predictions.") -> torch.Tensor:
    h = _norm(_gelu(_linear(hidden, sd, prefix + "transform.dense")), sd,
              prefix + "transform.LayerNorm", BERT_EPS)
    return h @ sd[prefix + "decoder.weight"].t() + sd[prefix + "bias"]


def official_outputs(sd: State, image: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor, vit_heads: int, bert_heads: int,
                     layers: int, fusion_layer: int) -> Dict[str, torch.Tensor]:
    """``encode_image``/``encode_text``/``fuse``/``itm_logits``/``mlm_logits`` outputs."""
    image_embeds = vit(sd, image, vit_heads)
    image_feat = F.normalize(_linear(image_embeds[:, 0], sd, "vision_proj"), dim=-1)
    text = embeddings(sd, input_ids)
    text_embeds = bert_layers(sd, text, attention_mask, 0, fusion_layer, bert_heads,
                              fusion_layer=fusion_layer)
    text_feat = F.normalize(_linear(text_embeds[:, 0], sd, "text_proj"), dim=-1)
    fused = bert_layers(sd, text_embeds, attention_mask, fusion_layer, layers, bert_heads,
                        image_embeds, fusion_layer=fusion_layer)
    all_layers = bert_layers(sd, text, attention_mask, 0, layers, bert_heads, image_embeds,
                             fusion_layer=fusion_layer)
    return {"image_embeds": image_embeds, "image_feat": image_feat, "text_embeds": text_embeds,
            "text_feat": text_feat, "fused": fused,
            "itm": _linear(fused[:, 0], sd, "itm_head"), "mlm": mlm_head(sd, all_layers)}


def model_outputs(model, image, input_ids, attention_mask) -> Dict[str, torch.Tensor]:
    """The same five outputs from our model (eval mode, no grad)."""
    model.eval()
    with torch.no_grad():
        image_embeds, image_feat = model.encode_image(image)
        text_embeds, text_feat = model.encode_text(input_ids, attention_mask)
        return {"image_embeds": image_embeds, "image_feat": image_feat, "text_embeds": text_embeds,
                "text_feat": text_feat,
                "fused": model.fuse(text_embeds, attention_mask, image_embeds),
                "itm": model.itm_logits(text_embeds, attention_mask, image_embeds),
                "mlm": model.mlm_logits(input_ids, attention_mask, image_embeds)}


def sample_inputs(image_size: int, vocab: int, batch: int = 3, length: int = 7,
                  seed: int = 1) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, ``[CLS] ...`` ids with padding (no [SEP], as the official tokenizer)."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, image_size, image_size, generator=gen)
    ids = torch.randint(3, vocab, (batch, length), generator=gen)
    ids[:, 0] = 1
    lengths = torch.tensor([length] + [max(2, length - 2 - i) for i in range(batch - 1)])
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    return image, ids.masked_fill(mask == 0, 0), mask
