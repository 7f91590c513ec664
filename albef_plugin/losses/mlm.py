"""Masked language modelling with momentum distillation.

Masking follows BERT and the official ALBEF: each token is chosen with probability 0.15
(never ``[PAD]`` or ``[CLS]``); of the chosen, 80% become ``[MASK]``, 10% a random id drawn
uniformly from the whole vocabulary, 10% stay. The loss is
``(1 - alpha) * CE + alpha * soft-CE(softmax(teacher logits))`` over the vocabulary axis,
averaged over the chosen positions.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F


__all__ = ["IGNORE_INDEX", "mask_tokens", "masked_capacity", "select_masked_positions",
           "mlm_loss"]

IGNORE_INDEX = -100


def _uniform(shape: torch.Size, device: torch.device,
             generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.rand(shape, device=device, generator=generator)


def mask_tokens(input_ids: torch.Tensor, vocab_size: int, mask_token_id: int, pad_token_id: int,
                cls_token_id: int, probability: float = 0.15,
                generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """BERT masking, vectorised and without host sync.

    Args:
        input_ids: ``[B, L]`` token ids (not modified).
        vocab_size: random replacements are uniform over ``[0, vocab_size)``.
        mask_token_id, pad_token_id, cls_token_id: special ids; PAD and CLS are never chosen.
        probability: chance that a token is chosen for prediction.
        generator: optional RNG (on the device of ``input_ids``).

    Returns:
        ``masked_ids [B, L]``: the input with chosen tokens replaced (80% [MASK], 10% random);
        ``labels [B, L]``: the original id at chosen positions, ``-100`` elsewhere.
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"mlm probability must be in [0, 1], got {probability}")
    device = input_ids.device
    chosen = _uniform(input_ids.shape, device, generator) < probability
    chosen &= (input_ids != pad_token_id) & (input_ids != cls_token_id)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    to_mask = chosen & (_uniform(input_ids.shape, device, generator) < 0.8)
    # half of the remaining 20% -> 10% of all chosen tokens become a random id
    to_random = chosen & ~to_mask & (_uniform(input_ids.shape, device, generator) < 0.5)
    random_ids = torch.randint(vocab_size, input_ids.shape, device=device, generator=generator,
                               dtype=input_ids.dtype)
    masked_ids = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked_ids = torch.where(to_random, random_ids, masked_ids)
    return masked_ids, labels


def masked_capacity(num_tokens: int, probability: float, sigmas: float = 6.0) -> int:
    """A fixed number of positions that holds the masked ones with near certainty.

    The masked count is Binomial(num_tokens, p); mean + ``sigmas`` standard deviations (+8 for
    tiny batches), capped at ``num_tokens``. A static size keeps the training step free of host
    syncs (a boolean index would need one) and friendly to ``torch.compile``.
    """
    mean = num_tokens * probability
    std = math.sqrt(num_tokens * probability * (1.0 - probability))
    return min(num_tokens, int(math.ceil(mean + sigmas * std)) + 8)


def select_masked_positions(labels: torch.Tensor, capacity: int) -> torch.Tensor:
    """Flat indices ``[capacity]`` into ``labels.view(-1)``: masked positions first.

    Positions past the masked ones have label -100 and drop out of the loss; if more than
    ``capacity`` positions are masked (beyond ``sigmas`` standard deviations), the caller must
    unmask the rest (see ``ALBEFPretrain``) so that the loss stays exact.
    """
    not_masked = (labels.reshape(-1) == IGNORE_INDEX).to(torch.int8)
    order = torch.argsort(not_masked, stable=True)  # masked (0) first, in position order
    return order[:capacity]


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor, logits_m: Optional[torch.Tensor] = None,
             alpha: Union[float, torch.Tensor] = 0.0) -> torch.Tensor:
    """MLM loss with optional distillation, a scalar.

    Args:
        logits: ``[..., V]`` student logits (all positions, or only gathered ones).
        labels: ``[...]`` target ids, -100 where nothing is predicted.
        logits_m: ``[..., V]`` teacher (momentum) logits at the same positions; None = no
            distillation.
        alpha: distillation weight.

    Returns ``(1 - alpha) * CE + alpha * soft-CE``, each averaged over positions with a label
    (0 when there is none, instead of the NaN of an empty mean).
    """
    vocab = logits.shape[-1]
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
    flat_logits = logits.reshape(-1, vocab).float()
    flat_labels = labels.reshape(-1)
    has_label = (flat_labels != IGNORE_INDEX).to(flat_logits.dtype)
    count = has_label.sum().clamp_min(1.0)
    log_probs = F.log_softmax(flat_logits, dim=-1)
    token_ce = F.nll_loss(log_probs, flat_labels, ignore_index=IGNORE_INDEX, reduction="none")
    loss = token_ce.sum() / count
    if logits_m is None:
        return loss
    if logits_m.shape != logits.shape:
        raise ValueError(f"teacher logits {tuple(logits_m.shape)} do not match student "
                         f"{tuple(logits.shape)}")
    soft = F.softmax(logits_m.detach().reshape(-1, vocab).float(), dim=-1)
    token_distill = -(soft * log_probs).sum(dim=-1)
    distill = (token_distill * has_label).sum() / count
    return (1 - alpha) * loss + alpha * distill

