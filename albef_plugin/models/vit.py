"""ViT image encoder: timm's ``VisionTransformer`` returning every token.

ALBEF uses a DeiT/ViT-B/16 with pre-norm blocks, qkv bias, LayerNorm eps 1e-6, a final
``norm`` and no head. timm's implementation has exactly the official parameter names
(``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.attn.qkv``, ``norm``), so this
class subclasses it instead of wrapping it: the model's ``visual_encoder.*`` state-dict keys
then match the official checkpoints with no prefix to strip. Attention runs through
``scaled_dot_product_attention`` (timm's fused attention).
"""
from __future__ import annotations

import contextlib
from functools import partial
from typing import Iterator, List

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn


__all__ = ["VisionEncoder"]


class VisionEncoder(VisionTransformer):
    """ViT returning all tokens after the final norm.

    Args:
        image_size: input resolution (square), e.g. 256 for pre-training, 384 for fine-tuning.
        patch_size: patch side in pixels.
        width: token width (``embed_dim``).
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP relative to ``width``.
        drop_path_rate: stochastic depth, linearly increasing over blocks (ALBEF: 0).
    """

    def __init__(self, *, image_size: int = 256, patch_size: int = 16, width: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0) -> None:
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} is not a multiple of patch_size="
                             f"{patch_size}; choose sizes where it is (ALBEF: 256/16, 384/16).")
        if width % num_heads:
            raise ValueError(f"ViT width={width} is not divisible by num_heads={num_heads}.")
        super().__init__(
            img_size=image_size, patch_size=patch_size, embed_dim=width, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=0, global_pool="",
            class_token=True, drop_path_rate=drop_path_rate)
        self.image_size = image_size
        self.patch_size = patch_size
        self.width = width

    @property
    def grid_size(self) -> int:
        """Patches per side (16 at 256 px with patch 16)."""
        return self.image_size // self.patch_size

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``image [B, 3, H, W]`` -> tokens ``[B, 1 + N, width]`` (token 0 is [CLS])."""
        if image.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"image of size {tuple(image.shape[-2:])} but the image encoder was built for "
                f"{self.image_size}x{self.image_size}; resize in the image processor or set "
                f"image_encoder.image_size.")
        return self.forward_features(image)

    @contextlib.contextmanager
    def record_attention(self, block: int) -> Iterator[List[torch.Tensor]]:
        """Keep the self-attention probabilities ``[B, heads, 1+N, 1+N]`` of ``blocks[block]``.

        Inside the context that block runs timm's explicit (non-fused) attention and every
        forward appends its probabilities, still in the autograd graph, to the yielded list
        (ITC Grad-CAM differentiates a score with respect to them). Every other block, and
        this one outside the context, stays on scaled_dot_product_attention.
        """
        if not -len(self.blocks) <= block < len(self.blocks):
            raise ValueError(f"ViT block {block} does not exist: the image encoder has "
                             f"{len(self.blocks)} blocks (0..{len(self.blocks) - 1}).")
        attn = self.blocks[block].attn
        maps: List[torch.Tensor] = []
        # the probabilities are the input of attn_drop in timm's explicit path (identity in eval)
        handle = attn.attn_drop.register_forward_hook(lambda _m, inputs, _out: maps.append(inputs[0]))
        fused = attn.fused_attn
        attn.fused_attn = False
        try:
            yield maps
        finally:
            attn.fused_attn = fused
            handle.remove()
