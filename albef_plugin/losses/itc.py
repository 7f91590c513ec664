"""Image-text contrastive loss with momentum distillation (ALBEF eq. 1-2 and 6).

With online similarities ``s`` (``[B, B + Q]``: the local batch, then the queue), hard
targets ``y`` and momentum similarities ``s_m``, the soft targets are
``q = alpha * softmax(s_m) + (1 - alpha) * y`` and each direction's loss is
``-mean_b sum_j q_bj log_softmax(s)_bj``. ITC is the mean of image-to-text and text-to-image.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F


__all__ = ["itc_loss", "diagonal_targets", "soft_cross_entropy"]

Alpha = Union[float, torch.Tensor]


def diagonal_targets(sim: torch.Tensor) -> torch.Tensor:
    """One-hot targets ``[B, C]``: sample b's positive is column b (its own pair)."""
    batch = sim.shape[0]
    targets = torch.zeros(sim.shape, dtype=torch.float32, device=sim.device)
    index = torch.arange(batch, device=sim.device)
    targets[index, index] = 1.0
    return targets


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``-sum_j targets_j log_softmax(logits)_j`` per row, ``[..., C]`` -> ``[...]`` (fp32)."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)


def _soft_targets(hard: torch.Tensor, sim_m: Optional[torch.Tensor], alpha: Alpha) -> torch.Tensor:
    if sim_m is None:
        return hard
    return alpha * F.softmax(sim_m.detach().float(), dim=-1) + (1 - alpha) * hard


def itc_loss(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor,
             sim_i2t_m: Optional[torch.Tensor] = None, sim_t2i_m: Optional[torch.Tensor] = None,
             alpha: Alpha = 0.0, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ITC loss, a scalar.

    Args:
        sim_i2t: ``[B, C]`` image-to-text similarities / temperature (C = B + queue size).
        sim_t2i: ``[B, C]`` text-to-image similarities / temperature.
        sim_i2t_m, sim_t2i_m: the same from the momentum model (no gradient); None = no
            distillation.
        alpha: distillation weight (0 = plain cross-entropy against ``targets``).
        targets: ``[B, C]`` hard targets, rows summing to 1 (retrieval: all columns of the same
            image, normalised); None = one-hot diagonal over the first B columns.
    """
    if sim_i2t.shape != sim_t2i.shape:
        raise ValueError(f"sim_i2t {tuple(sim_i2t.shape)} and sim_t2i {tuple(sim_t2i.shape)} "
                         f"must have the same shape [B, B + Q]")
    if sim_i2t.shape[1] < sim_i2t.shape[0]:
        raise ValueError(f"similarities of shape {tuple(sim_i2t.shape)} have fewer columns than "
                         f"rows; expected [B, B + Q] with the local batch first")
    hard = diagonal_targets(sim_i2t) if targets is None else targets.float()
    if hard.shape != sim_i2t.shape:
        raise ValueError(f"targets of shape {tuple(hard.shape)} do not match similarities "
                         f"{tuple(sim_i2t.shape)}")
    loss_i2t = soft_cross_entropy(sim_i2t, _soft_targets(hard, sim_i2t_m, alpha)).mean()
    loss_t2i = soft_cross_entropy(sim_t2i, _soft_targets(hard, sim_t2i_m, alpha)).mean()
    return (loss_i2t + loss_t2i) / 2

