"""The timm-based image encoder: all tokens out, official parameter names, clear errors."""
from __future__ import annotations

import pytest
import torch

from albef_plugin.models.vit import VisionEncoder

TINY = dict(image_size=32, patch_size=8, width=32, depth=2, num_heads=2)


def test_returns_all_tokens_after_final_norm():
    torch.manual_seed(0)
    vit = VisionEncoder(**TINY).eval()
    image = torch.randn(2, 3, 32, 32)
    tokens = vit(image)
    assert tokens.shape == (2, 1 + 16, 32)
    # after the final LayerNorm (weight 1, bias 0 at init) every token has ~zero mean
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(2, 17), atol=1e-5, rtol=0)


def test_parameter_names_are_the_official_keys():
    keys = set(VisionEncoder(**TINY).state_dict())
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                "blocks.1.norm1.weight", "blocks.1.attn.qkv.weight", "blocks.1.attn.qkv.bias",
                "blocks.1.attn.proj.weight", "blocks.1.norm2.bias", "blocks.1.mlp.fc1.weight",
                "blocks.1.mlp.fc2.bias", "norm.weight", "norm.bias"}
    assert expected <= keys, sorted(expected - keys)
    assert not [k for k in keys if k.startswith(("head", "fc_norm"))]


def test_gradient_checkpointing_same_output():
    torch.manual_seed(0)
    vit = VisionEncoder(**TINY, drop_path_rate=0.0)
    image = torch.randn(2, 3, 32, 32)
    plain = vit(image)
    vit.set_grad_checkpointing(True)
    checkpointed = vit(image)
    torch.testing.assert_close(plain, checkpointed)


def test_wrong_image_size_is_a_clear_error():
    vit = VisionEncoder(**TINY)
    with pytest.raises(ValueError, match="image_size"):
        vit(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="patch_size"):
        VisionEncoder(image_size=30, patch_size=8, width=32, depth=1, num_heads=2)
