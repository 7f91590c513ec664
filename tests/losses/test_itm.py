"""Hard-negative sampling and the ITM loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import pytest

from albef_plugin.losses.itm import (itm_labels, itm_loss, positive_mask_from_ids,
                                     sample_hard_negative_sets, sample_hard_negatives)


def _sims(batch, queue=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, batch + queue, generator=gen) * 5,
            torch.randn(batch, batch + queue, generator=gen) * 5)


# a batch of 8 captions of 5 images (image 2 has three captions)
IMAGE_IDS = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])


def _draws_with_image_ids(draw):
    """``draw(sim_i2t, sim_t2i, positives, generator)`` for 20 seeds of similarities of a batch
    with :data:`IMAGE_IDS`, one generator for all."""
    positives = positive_mask_from_ids(IMAGE_IDS, 8, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    return [draw(*_sims(8, seed=seed), positives, gen) for seed in range(20)]


def test_negatives_never_positive_with_image_ids():
    draws = _draws_with_image_ids(lambda i2t, t2i, positives, gen: sample_hard_negatives(
        i2t, t2i, positives, generator=gen))
    for neg_image, neg_text, valid_image, valid_text in draws:
        assert valid_image.all() and valid_text.all()
        rows = torch.arange(8)
        assert (IMAGE_IDS[neg_image] != IMAGE_IDS[rows]).all()  # text b vs its negative image
        assert (IMAGE_IDS[neg_text] != IMAGE_IDS[rows]).all()   # image b vs its negative text


def test_negatives_follow_the_similarity_weights():
    # text 0 is far closer to image 2 than to image 1 or 3: almost always picked
    sim_t2i = torch.tensor([[0., 0., 10., 0.]]).repeat(4, 1)
    sim_i2t = torch.zeros(4, 4)
    gen = torch.Generator().manual_seed(0)
    picks = torch.stack([sample_hard_negatives(sim_i2t, sim_t2i, generator=gen)[0][0]
                         for _ in range(50)])
    assert (picks == 2).float().mean() > 0.9


def test_batch_of_one_and_all_same_image_do_not_crash():
    sim_i2t, sim_t2i = _sims(1)
    _, _, valid_image, valid_text = sample_hard_negatives(sim_i2t, sim_t2i)
    assert not valid_image.any() and not valid_text.any()
    same = positive_mask_from_ids(torch.zeros(5, dtype=torch.long), 5, torch.device("cpu"))
    sim_i2t, sim_t2i = _sims(5)
    neg_image, neg_text, valid_image, valid_text = sample_hard_negatives(sim_i2t, sim_t2i, same)
    assert not valid_image.any() and not valid_text.any()
    assert ((0 <= neg_image) & (neg_image < 5)).all() and ((0 <= neg_text) & (neg_text < 5)).all()


def test_several_negatives_per_row_are_distinct_and_never_positive():
    draws = _draws_with_image_ids(lambda i2t, t2i, positives, gen: sample_hard_negative_sets(
        i2t, t2i, 3, positives, generator=gen))
    for neg_image, neg_text, valid_image, valid_text in draws:
        assert neg_image.shape == neg_text.shape == valid_image.shape == (3, 8)
        assert valid_image.all() and valid_text.all()
        for negatives in (neg_image, neg_text):
            assert (IMAGE_IDS[negatives] != IMAGE_IDS[None, :]).all()
            # three different captions or images per row (the image ids may repeat: image 2
            # has three captions, each a distinct negative)
            assert all(len(set(negatives[:, b].tolist())) == 3 for b in range(8))


def test_one_negative_set_draws_what_sample_hard_negatives_draws():
    sim_i2t, sim_t2i = _sims(6)
    single = sample_hard_negatives(sim_i2t, sim_t2i, generator=torch.Generator().manual_seed(3))
    sets = sample_hard_negative_sets(sim_i2t, sim_t2i, 1, generator=torch.Generator().manual_seed(3))
    for one, stacked in zip(single, sets):
        assert torch.equal(one, stacked[0])


def test_rows_with_too_few_negatives_report_the_missing_draws_invalid():
    # images 0 and 1 have two captions each in a batch of four: every row has two negatives
    image_ids = torch.tensor([0, 0, 1, 1])
    positives = positive_mask_from_ids(image_ids, 4, torch.device("cpu"))
    sim_i2t, sim_t2i = _sims(4)
    neg_image, neg_text, valid_image, valid_text = sample_hard_negative_sets(
        sim_i2t, sim_t2i, 3, positives)
    # three draws of which only two can be negatives: the positive draw is marked invalid
    assert valid_image.sum(0).tolist() == [2, 2, 2, 2] and valid_text.sum(0).tolist() == [2, 2, 2, 2]
    assert (image_ids[neg_text][valid_text] != image_ids.expand(3, 4)[valid_text]).all()
    with pytest.raises(ValueError, match="num_negatives=5"):
        sample_hard_negative_sets(sim_i2t, sim_t2i, 5, positives)


def test_itm_loss_ignores_invalid_pairs():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 2, generator=gen)
    labels = itm_labels(3, torch.device("cpu"))
    assert labels.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert itm_labels(2, torch.device("cpu"), num_negatives=2).tolist() == [1, 1] + [0] * 8
    torch.testing.assert_close(itm_loss(logits), F.cross_entropy(logits, labels))
    valid = torch.tensor([True] * 3 + [True, False, True] + [False, True, True])
    expected = F.cross_entropy(logits[valid], labels[valid])
    torch.testing.assert_close(itm_loss(logits, valid=valid), expected)
