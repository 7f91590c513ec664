"""Tiny ALBEF configs and batches shared by the model tests (CPU, well under a second each)."""
from __future__ import annotations

import copy
from typing import Any, Dict

import pytest
import torch

from albef_plugin.models import build_model

VOCAB, PAD, CLS, MASK = 100, 0, 1, 2

TINY_OVERRIDES: Dict[str, Any] = {
    "image_encoder": {"image_size": 32, "patch_size": 8, "width": 32, "depth": 2, "num_heads": 2},
    "text_encoder": {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 4,
                     "fusion_layer": 2, "num_attention_heads": 2, "intermediate_size": 64,
                     "max_position_embeddings": 32, "pad_token_id": PAD, "cls_token_id": CLS,
                     "mask_token_id": MASK},
    "embed_dim": 16,
    "queue_size": 16,
}


def make_batch(batch_size: int = 4, length: int = 8, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random images and captions ``[CLS] w1 ... [PAD]..`` with varied lengths."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch_size, length), generator=gen)
    input_ids[:, 0] = CLS
    lengths = torch.randint(3, length + 1, (batch_size,), generator=gen)
    lengths[0] = length
    attention_mask = (torch.arange(length)[None] < lengths[:, None]).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, PAD)
    return {"image": torch.randn(batch_size, 3, 32, 32, generator=gen),
            "input_ids": input_ids, "attention_mask": attention_mask,
            "image_id": torch.arange(batch_size)}


@pytest.fixture
def tiny_overrides() -> Dict[str, Any]:
    return copy.deepcopy(TINY_OVERRIDES)


@pytest.fixture
def batch_factory():
    """``batch_factory(batch_size=4, length=8, seed=0)`` -> a batch dict (see make_batch)."""
    return make_batch


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return build_model("albef_pretrain", TINY_OVERRIDES)


@pytest.fixture
def batch():
    return make_batch()
