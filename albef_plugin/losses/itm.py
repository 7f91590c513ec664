"""Image-text matching with hard negatives (the ALBEF paper, section 3.2).

For every text one negative image, and for every image one negative text, is drawn from the
local batch with probability proportional to ``softmax(similarity)``, positives excluded. The
fusion encoder then classifies ``3B`` pairs: ``B`` positives, ``B`` (text, negative image) and
``B`` (negative text, image). :func:`sample_hard_negative_sets` draws ``n`` distinct negatives
per row instead (the pre-training model's ``itm_negatives``; the paper draws one).

Unlike the official loop (``multinomial(...).item()`` per row, which crashes with "invalid
multinomial distribution" at batch size 1 or when a batch holds one image only), the sampling
here is one vectorised call; a row with no possible negative gets a placeholder index and is
marked invalid, and :func:`itm_loss` gives invalid pairs zero weight.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


__all__ = ["positive_mask_from_ids", "sample_hard_negatives", "sample_hard_negative_sets",
           "itm_labels", "itm_loss"]


def positive_mask_from_ids(image_ids: Optional[torch.Tensor], batch_size: int,
                           device: torch.device) -> torch.Tensor:
    """``[B, B]`` bool, True where image i and text t are a positive pair.

    With ``image_ids`` (``[B]``), every pair showing the same image is positive; without, only
    the diagonal.
    """
    if image_ids is None:
        return torch.eye(batch_size, dtype=torch.bool, device=device)
    if image_ids.shape != (batch_size,):
        raise ValueError(f"image_id must have shape [B]=[{batch_size}], got {tuple(image_ids.shape)}")
    return image_ids[:, None] == image_ids[None, :]


@torch.no_grad()
def _sample_rows(sim: torch.Tensor, exclude: torch.Tensor, generator: Optional[torch.Generator],
                 num: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """``num`` distinct columns per row, drawn with weights ``softmax(sim)`` zeroed at
    ``exclude``; returns ``index [R, num]`` and ``valid [R, num]``."""
    weights = F.softmax(sim.float(), dim=1).masked_fill(exclude, 0.0)
    enough = (weights > 0).sum(dim=1) >= num
    # A row with fewer than num candidates would make multinomial fail: draw its candidates
    # uniformly, then (a million times less likely) the excluded columns; draws of an
    # excluded column are reported invalid, so the loss ignores their pairs.
    fallback = (~exclude).float() + 1e-6 * exclude.float()
    weights = torch.where(enough[:, None], weights, fallback)
    index = torch.multinomial(weights, num, generator=generator)
    return index, ~exclude.gather(1, index)


def sample_hard_negatives(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor,
                          positive_mask: Optional[torch.Tensor] = None,
                          generator: Optional[torch.Generator] = None
                          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one hard negative per text and per image from the local batch.

    Only the first ``B`` columns of the similarities (the local batch, not the queue) are used,
    as in the official code. No gradient, no Python loop, no host sync.

    Args:
        sim_i2t: ``[B, >=B]`` image-to-text similarities (online, divided by temperature).
        sim_t2i: ``[B, >=B]`` text-to-image similarities.
        positive_mask: ``[B, B]`` bool, ``[i, t]`` True when image i and text t match (see
            :func:`positive_mask_from_ids`); None = the diagonal.
        generator: optional RNG for the draws (same device as the similarities).

    Returns:
        ``neg_image_index [B]``: for text b, the index of its negative image;
        ``neg_text_index [B]``: for image b, the index of its negative text;
        ``valid_image [B]``, ``valid_text [B]``: bool, False where the row had no negative to
        draw (the index is then a placeholder and the pair must be ignored).
    """
    sets = sample_hard_negative_sets(sim_i2t, sim_t2i, 1, positive_mask, generator)
    return tuple(part[0] for part in sets)


def sample_hard_negative_sets(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, num_negatives: int,
                              positive_mask: Optional[torch.Tensor] = None,
                              generator: Optional[torch.Generator] = None
                              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``num_negatives`` distinct hard negatives per text and per image.

    The same as :func:`sample_hard_negatives` (arguments and order of the results), with a
    leading dimension: ``neg_image_index [n, B]`` (row j: every text's j-th negative image),
    ``neg_text_index [n, B]``, ``valid_image [n, B]``, ``valid_text [n, B]``.
    """
    batch = sim_i2t.shape[0]
    if sim_i2t.shape[1] < batch or sim_t2i.shape[:1] != (batch,) or sim_t2i.shape[1] < batch:
        raise ValueError(f"similarities must be [B, >=B]; got {tuple(sim_i2t.shape)} and "
                         f"{tuple(sim_t2i.shape)}")
    if not 1 <= num_negatives <= batch:
        raise ValueError(f"num_negatives={num_negatives} must be in [1, batch size {batch}]")
    if positive_mask is None:
        positive_mask = torch.eye(batch, dtype=torch.bool, device=sim_i2t.device)
    if positive_mask.shape != (batch, batch):
        raise ValueError(f"positive_mask must be [B, B]=[{batch}, {batch}], "
                         f"got {tuple(positive_mask.shape)}")
    with torch.no_grad():
        # text t -> image: row t of sim_t2i, positives are positive_mask[:, t]
        neg_image_index, valid_image = _sample_rows(sim_t2i[:, :batch], positive_mask.t(),
                                                    generator, num_negatives)
        # image i -> text: row i of sim_i2t, positives are positive_mask[i, :]
        neg_text_index, valid_text = _sample_rows(sim_i2t[:, :batch], positive_mask, generator,
                                                  num_negatives)
    return neg_image_index.t(), neg_text_index.t(), valid_image.t(), valid_text.t()


def itm_labels(batch_size: int, device: torch.device, num_negatives: int = 1) -> torch.Tensor:
    """Labels of the ``(1 + 2n)B`` ITM pairs in the standard order: ``B`` ones then ``2nB``
    zeros (``n = num_negatives``; the paper's 1 gives ``3B`` pairs)."""
    labels = torch.zeros((1 + 2 * num_negatives) * batch_size, dtype=torch.long, device=device)
    labels[:batch_size] = 1
    return labels


def itm_loss(logits: torch.Tensor, labels: Optional[torch.Tensor] = None,
             valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy of the ITM head over the valid pairs, a scalar.

    Args:
        logits: ``[N, 2]``, usually ``N = 3B`` (positives, (text, negative image), (negative
            text, image)), or ``(1 + 2n)B`` with ``n`` negatives per sample.
        labels: ``[N]``; None = the :func:`itm_labels` order of ``3B`` pairs (1 for the first
            B, else 0); pass :func:`itm_labels` with ``num_negatives`` for other ``N``.
        valid: ``[N]`` bool, False for pairs without a real negative; None = all valid.
            The loss is the mean over valid pairs (the official mean when all are valid).
    """
    if logits.dim() != 2 or logits.shape[1] != 2:
        raise ValueError(f"ITM logits must be [N, 2], got {tuple(logits.shape)}")
    if labels is None:
        if logits.shape[0] % 3:
            raise ValueError(f"ITM logits have {logits.shape[0]} rows; without labels 3B rows "
                             f"(positives, then two sets of negatives) are expected")
        labels = itm_labels(logits.shape[0] // 3, logits.device)
    per_pair = F.cross_entropy(logits.float(), labels, reduction="none")
    if valid is None:
        return per_pair.mean()
    weights = valid.to(per_pair.dtype)
    return (per_pair * weights).sum() / weights.sum().clamp_min(1.0)

