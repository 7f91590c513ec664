"""Momentum (EMA) copies of encoders, as in MoCo / ALBEF.

A momentum copy starts as a deep copy of the online module with gradients off, and after each
optimizer step moves toward it: ``theta_m <- m * theta_m + (1 - m) * theta``. The update is two
fused ``torch._foreach_*`` calls over all tensors at once (no per-tensor Python work on the
device), and is a named, train-only side effect: models call it from one visible line of their
training path.
"""
from __future__ import annotations

import copy
from typing import Iterable, List, Sequence, Tuple

import torch
from torch import nn

__all__ = ["make_momentum_copy", "momentum_update", "paired_parameters"]


def make_momentum_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters never require gradients.

    ``deepcopy`` keeps tied weights tied (e.g. the MLM decoder and the word embeddings).
    """
    momentum = copy.deepcopy(module)
    for param in momentum.parameters():
        param.requires_grad_(False)
    return momentum


def paired_parameters(pairs: Iterable[Tuple[nn.Module, nn.Module]]
                      ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Flatten ``(online, momentum)`` module pairs into two aligned parameter lists.

    Raises a clear error when a pair does not have the same parameter names and shapes (e.g. a
    momentum copy built from a different config).
    """
    online_params: List[torch.Tensor] = []
    momentum_params: List[torch.Tensor] = []
    for online, momentum in pairs:
        online_named = list(online.named_parameters())
        momentum_named = list(momentum.named_parameters())
        if [n for n, _ in online_named] != [n for n, _ in momentum_named]:
            raise ValueError(f"momentum copy of {type(online).__name__} has different parameters "
                             f"than the online module; rebuild it with make_momentum_copy")
        for (name, p), (_, p_m) in zip(online_named, momentum_named):
            if p.shape != p_m.shape:
                raise ValueError(f"momentum parameter {name} has shape {tuple(p_m.shape)}, "
                                 f"online has {tuple(p.shape)}")
            online_params.append(p)
            momentum_params.append(p_m)
    return online_params, momentum_params


@torch.no_grad()
def momentum_update(online_params: Sequence[torch.Tensor],
                    momentum_params: Sequence[torch.Tensor], momentum: float) -> None:
    """In place: ``momentum_params = momentum * momentum_params + (1 - momentum) * online``.

    Args:
        online_params: tensors of the online model.
        momentum_params: the EMA tensors, aligned with ``online_params`` (same order, shapes).
        momentum: EMA coefficient ``m`` in [0, 1] (ALBEF: 0.995).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if len(online_params) != len(momentum_params):
        raise ValueError(f"{len(online_params)} online vs {len(momentum_params)} momentum tensors")
    if not momentum_params:
        return
    # same arithmetic as the official loop (param_m * m + param * (1 - m)), fused over tensors
    torch._foreach_mul_(list(momentum_params), momentum)
    torch._foreach_add_(list(momentum_params), list(online_params), alpha=1.0 - momentum)
