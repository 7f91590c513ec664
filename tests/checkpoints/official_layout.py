"""Official ALBEF checkpoints at a tiny size, built from the official key list.

``official_pretrain_state(sizes)`` returns what ``torch.load("ALBEF.pth")["model"]`` holds, key
for key, with distinct random values in every tensor (and different values in the momentum
copies), so a test can check that each tensor lands on the right parameter.
``to_finetuned_layout`` turns it into the retrieval / grounding layout (``text_encoder.*``
without ``bert.``, no MLM head, plus ``idx_queue``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch


@dataclass(frozen=True)
class Sizes:
    width: int = 48          # ViT width (differs from the BERT width: cross-attention k/v are 32x48)
    depth: int = 2
    vit_heads: int = 2
    patch: int = 8
    image_size: int = 32     # 4x4 grid
    hidden: int = 32
    bert_heads: int = 2
    layers: int = 4
    fusion_layer: int = 2
    intermediate: int = 64
    vocab: int = 100
    max_positions: int = 32
    embed_dim: int = 16
    queue_size: int = 16

    def model_overrides(self, image_size: int = None) -> Dict:
        """``build_model("albef_pretrain", overrides)`` for these sizes."""
        return {
            "image_encoder": {"image_size": image_size or self.image_size, "patch_size": self.patch,
                              "width": self.width, "depth": self.depth,
                              "num_heads": self.vit_heads},
            "text_encoder": {"vocab_size": self.vocab, "hidden_size": self.hidden,
                             "num_hidden_layers": self.layers, "fusion_layer": self.fusion_layer,
                             "num_attention_heads": self.bert_heads,
                             "intermediate_size": self.intermediate,
                             "max_position_embeddings": self.max_positions,
                             "pad_token_id": 0, "cls_token_id": 1, "mask_token_id": 2},
            "embed_dim": self.embed_dim,
            "queue_size": self.queue_size,
        }


def _vit_shapes(s: Sizes, grid: int) -> Dict[str, tuple]:
    w, mlp = s.width, 4 * s.width
    shapes = {"cls_token": (1, 1, w), "pos_embed": (1, 1 + grid * grid, w),
              "patch_embed.proj.weight": (w, 3, s.patch, s.patch), "patch_embed.proj.bias": (w,),
              "norm.weight": (w,), "norm.bias": (w,)}
    for i in range(s.depth):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (w,), b + "norm1.bias": (w,),
                       b + "attn.qkv.weight": (3 * w, w), b + "attn.qkv.bias": (3 * w,),
                       b + "attn.proj.weight": (w, w), b + "attn.proj.bias": (w,),
                       b + "norm2.weight": (w,), b + "norm2.bias": (w,),
                       b + "mlp.fc1.weight": (mlp, w), b + "mlp.fc1.bias": (mlp,),
                       b + "mlp.fc2.weight": (w, mlp), b + "mlp.fc2.bias": (w,)})
    return shapes


def _bert_shapes(s: Sizes) -> Dict[str, tuple]:
    h = s.hidden
    shapes = {"bert.embeddings.word_embeddings.weight": (s.vocab, h),
              "bert.embeddings.position_embeddings.weight": (s.max_positions, h),
              "bert.embeddings.token_type_embeddings.weight": (2, h),
              "bert.embeddings.LayerNorm.weight": (h,), "bert.embeddings.LayerNorm.bias": (h,)}

    def attention(prefix: str, kv_width: int) -> None:
        shapes.update({prefix + "self.query.weight": (h, h), prefix + "self.query.bias": (h,),
                       prefix + "self.key.weight": (h, kv_width), prefix + "self.key.bias": (h,),
                       prefix + "self.value.weight": (h, kv_width), prefix + "self.value.bias": (h,),
                       prefix + "output.dense.weight": (h, h), prefix + "output.dense.bias": (h,),
                       prefix + "output.LayerNorm.weight": (h,),
                       prefix + "output.LayerNorm.bias": (h,)})

    for i in range(s.layers):
        layer = f"bert.encoder.layer.{i}."
        attention(layer + "attention.", h)
        if i >= s.fusion_layer:
            attention(layer + "crossattention.", s.width)
        shapes.update({layer + "intermediate.dense.weight": (s.intermediate, h),
                       layer + "intermediate.dense.bias": (s.intermediate,),
                       layer + "output.dense.weight": (h, s.intermediate),
                       layer + "output.dense.bias": (h,),
                       layer + "output.LayerNorm.weight": (h,), layer + "output.LayerNorm.bias": (h,)})
    shapes.update({"cls.predictions.bias": (s.vocab,),
                   "cls.predictions.transform.dense.weight": (h, h),
                   "cls.predictions.transform.dense.bias": (h,),
                   "cls.predictions.transform.LayerNorm.weight": (h,),
                   "cls.predictions.transform.LayerNorm.bias": (h,)})
    return shapes


def _random(shape: tuple, key: str, gen: torch.Generator) -> torch.Tensor:
    if key.endswith(("LayerNorm.weight", "norm1.weight", "norm2.weight", "norm.weight")):
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if key.endswith(("pos_embed", "cls_token", "embeddings.weight")):
        return 0.5 * torch.randn(shape, generator=gen)
    scale = 0.02 if key.endswith("bias") else 0.15
    return scale * torch.randn(shape, generator=gen)


def official_pretrain_state(s: Sizes = Sizes(), grid: int = None, seed: int = 0,
                            queue_size: int = None) -> Dict[str, torch.Tensor]:
    """The ``model`` state dict of an official pre-training checkpoint (ALBEF.pth layout)."""
    gen = torch.Generator().manual_seed(seed)
    grid = grid or s.image_size // s.patch
    queue_size = queue_size or s.queue_size
    state: Dict[str, torch.Tensor] = {}
    for suffix in ("", "_m"):  # online, then momentum copies with their own values
        for key, shape in _vit_shapes(s, grid).items():
            state[f"visual_encoder{suffix}.{key}"] = _random(shape, key, gen)
        text = f"text_encoder{suffix}."
        for key, shape in _bert_shapes(s).items():
            state[text + key] = _random(shape, key, gen)
        state[text + "bert.embeddings.position_ids"] = torch.arange(s.max_positions)[None]
        # the MLM decoder is tied to the word embeddings and to predictions.bias
        state[text + "cls.predictions.decoder.weight"] = \
            state[text + "bert.embeddings.word_embeddings.weight"]
        state[text + "cls.predictions.decoder.bias"] = state[text + "cls.predictions.bias"]
        state[f"vision_proj{suffix}.weight"] = _random((s.embed_dim, s.width), "w", gen)
        state[f"vision_proj{suffix}.bias"] = _random((s.embed_dim,), "bias", gen)
        state[f"text_proj{suffix}.weight"] = _random((s.embed_dim, s.hidden), "w", gen)
        state[f"text_proj{suffix}.bias"] = _random((s.embed_dim,), "bias", gen)
    state["itm_head.weight"] = _random((2, s.hidden), "w", gen)
    state["itm_head.bias"] = _random((2,), "bias", gen)
    state["temp"] = torch.tensor(0.0523)
    for name in ("image_queue", "text_queue"):
        state[name] = torch.nn.functional.normalize(
            torch.randn(s.embed_dim, queue_size, generator=gen), dim=0)
    state["queue_ptr"] = torch.tensor([queue_size // 2])
    return state


def to_finetuned_layout(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Retrieval / grounding layout: ``text_encoder.X`` for ``text_encoder.bert.X``, no MLM
    head, an ``idx_queue``."""
    out = {}
    for key, value in state.items():
        if ".cls." in key:
            continue
        out[key.replace("text_encoder.bert.", "text_encoder.")
               .replace("text_encoder_m.bert.", "text_encoder_m.")] = value
    out["idx_queue"] = torch.full((1, state["image_queue"].shape[1]), -100)
    return out
