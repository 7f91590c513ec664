"""ITC similarities against the queue without concatenating it: the same values and gradients
as the concatenated form, although enqueue overwrites the queue between forward and backward."""
import pytest
import torch

from albef_plugin.models.queue import enqueue, similarity_with_queue


def _setup(seed=0, batch=4, dim=8, size=16):
    gen = torch.Generator().manual_seed(seed)
    queue = torch.nn.functional.normalize(torch.randn(dim, size, generator=gen), dim=0)
    ptr = torch.tensor([12])  # the next enqueue wraps around the end of the ring
    rows = torch.randn(batch, dim, generator=gen, requires_grad=True)
    batch_columns = torch.randn(dim, batch, generator=gen)
    weights = torch.randn(batch, batch + size, generator=gen)
    return queue, ptr, rows, batch_columns, weights


def test_values_and_gradients_equal_the_concatenated_form_across_an_enqueue():
    queue, ptr, rows, batch_columns, weights = _setup()
    expected = rows @ torch.cat([batch_columns, queue.clone()], dim=1)
    (expected * weights).sum().backward()
    expected_grad, rows.grad = rows.grad.clone(), None
    before = queue.clone()

    sims = similarity_with_queue(rows, batch_columns, queue, ptr, global_batch=4)
    enqueue([queue], ptr, [torch.randn(4, 8)])  # the step's in-place write, before backward
    assert not torch.equal(queue, before)
    after = queue.clone()
    (sims * weights).sum().backward()
    torch.testing.assert_close(sims, expected)
    torch.testing.assert_close(rows.grad, expected_grad)
    assert torch.equal(queue, after)  # the backward put the new columns back
    assert int(ptr) == 0


def test_two_writes_before_backward_are_an_error():
    queue, ptr, rows, batch_columns, weights = _setup()
    sims = similarity_with_queue(rows, batch_columns, queue, ptr, global_batch=4)
    enqueue([queue], ptr, [torch.randn(4, 8)])
    enqueue([queue], ptr, [torch.randn(4, 8)])
    with pytest.raises(RuntimeError, match="written 2 times"):
        (sims * weights).sum().backward()


def test_model_similarities_match_the_concatenated_form():
    """ALBEFBase.similarities (copy-free in the official form) against the formula."""
    from albef_plugin.models import build_model
    from albef_plugin.models.albef.base import TINY_ALBEF_OVERRIDES

    torch.manual_seed(0)
    model = build_model("albef_pretrain", TINY_ALBEF_OVERRIDES).train()
    gen = torch.Generator().manual_seed(1)
    feats = [torch.nn.functional.normalize(torch.randn(4, 16, generator=gen), dim=-1)
             for _ in range(4)]
    image_feat, text_feat, image_feat_m, text_feat_m = feats
    image_feat.requires_grad_(True)
    got = model.similarities(image_feat, text_feat, image_feat_m, text_feat_m)
    temp = model.temp.detach()
    text_all = torch.cat([text_feat_m.t(), model.text_queue], 1)
    image_all = torch.cat([image_feat_m.t(), model.image_queue], 1)
    want = (image_feat @ text_all / temp, text_feat @ image_all / temp,
            image_feat_m @ text_all / temp, text_feat_m @ image_all / temp)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.detach(), w.detach())
