"""BERT masking and the MLM loss with distillation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from albef_plugin.losses.mlm import (IGNORE_INDEX, mask_tokens, masked_capacity,
                                     mlm_loss, select_masked_positions)

VOCAB, PAD, CLS, MASK = 1000, 0, 101, 103


def _captions(batch=400, length=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(200, VOCAB, (batch, length), generator=gen)
    ids[:, 0] = CLS
    lengths = torch.randint(5, length + 1, (batch,), generator=gen)
    return ids.masked_fill(torch.arange(length)[None] >= lengths[:, None], PAD)


def test_never_masks_pad_or_cls_and_labels_only_where_chosen():
    ids = _captions()
    masked, labels = mask_tokens(ids, VOCAB, MASK, PAD, CLS, 0.15,
                                 generator=torch.Generator().manual_seed(1))
    special = (ids == PAD) | (ids == CLS)
    assert (masked[special] == ids[special]).all()
    assert (labels[special] == IGNORE_INDEX).all()
    chosen = labels != IGNORE_INDEX
    assert (labels[chosen] == ids[chosen]).all()
    assert (masked[~chosen] == ids[~chosen]).all()


def test_proportions_15_and_80_10_10():
    ids = _captions()
    masked, labels = mask_tokens(ids, VOCAB, MASK, PAD, CLS, 0.15,
                                 generator=torch.Generator().manual_seed(2))
    eligible = (ids != PAD) & (ids != CLS)
    chosen = labels != IGNORE_INDEX
    rate = chosen.sum() / eligible.sum()
    assert abs(rate.item() - 0.15) < 0.01
    n = chosen.sum().item()
    as_mask = (masked[chosen] == MASK).sum().item() / n
    unchanged = (masked[chosen] == ids[chosen]).sum().item() / n
    assert abs(as_mask - 0.8) < 0.03
    # random ids rarely equal the original, so unchanged is ~10% (+0.1% chance hits)
    assert abs(unchanged - 0.1) < 0.02
    assert abs((1 - as_mask - unchanged) - 0.1) < 0.02
    random_ids = masked[chosen & (masked != MASK) & (masked != ids)]
    assert random_ids.min() >= 0 and random_ids.max() < VOCAB
    assert (random_ids < 200).any()  # uniform over the whole vocabulary, not only word ids


def test_alpha_zero_is_cross_entropy_over_masked_positions():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=gen)
    labels = torch.full((3, 5), IGNORE_INDEX)
    labels[0, 1], labels[2, 3], labels[2, 4] = 4, 7, 0
    expected = F.cross_entropy(logits.view(-1, 11), labels.view(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(mlm_loss(logits, labels), expected)


def test_distillation_over_vocabulary_axis():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 7, generator=gen)
    logits_m = torch.randn(2, 4, 7, generator=gen)
    labels = torch.full((2, 4), IGNORE_INDEX)
    labels[0, 0], labels[1, 2] = 3, 5
    chosen = labels != IGNORE_INDEX
    ce = F.cross_entropy(logits[chosen], labels[chosen])
    soft = -(logits_m[chosen].softmax(-1) * logits[chosen].log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(mlm_loss(logits, labels, logits_m, 0.4), 0.6 * ce + 0.4 * soft)


def test_no_masked_token_gives_zero_not_nan():
    loss = mlm_loss(torch.randn(2, 3, 5), torch.full((2, 3), IGNORE_INDEX))
    assert loss.item() == 0.0


def test_masked_positions_come_first_within_capacity():
    labels = torch.full((2, 6), IGNORE_INDEX)
    labels[0, 4], labels[1, 1] = 9, 8
    positions = select_masked_positions(labels, 3)
    assert positions.tolist()[:2] == [4, 7]
    assert masked_capacity(1920, 0.15) < 1920 // 4  # the point: far fewer than all tokens
    assert masked_capacity(10, 0.15) == 10
    with pytest.raises(ValueError, match="probability"):
        mask_tokens(torch.zeros(2, 2, dtype=torch.long), VOCAB, MASK, PAD, CLS, 1.5)
