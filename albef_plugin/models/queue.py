"""MoCo-style feature queues for ITC negatives.

ALBEF keeps the momentum features of past batches in ``[D, Q]`` buffers named ``image_queue``
and ``text_queue`` plus a pointer ``queue_ptr`` -- at the *top level* of the model's state dict
(official checkpoint keys). So the buffers are registered directly on the model with
:func:`register_feature_queues`, and :func:`enqueue` writes into them; a wrapping submodule
would have renamed the keys to ``queue.image_queue``.

The write needs no host sync: the target columns ``(ptr + arange(B)) % Q`` are computed on the
device and filled with ``index_copy_``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from albef_plugin.distributed import all_gather_concat

__all__ = ["register_feature_queues", "enqueue", "check_queue_size"]


def register_feature_queues(module: nn.Module, embed_dim: int, queue_size: int,
                            with_idx_queue: bool = False) -> None:
    """Register ``image_queue``/``text_queue`` ``[embed_dim, queue_size]`` (random unit columns),
    ``queue_ptr`` long ``[1]`` and, for retrieval, ``idx_queue`` long ``[1, queue_size]`` filled
    with -100 (no image), as buffers of ``module``."""
    if queue_size < 0:
        raise ValueError(f"queue_size must be >= 0 (0: no queue, in-batch negatives only), "
                         f"got {queue_size}")
    module.register_buffer("image_queue", F.normalize(torch.randn(embed_dim, queue_size), dim=0))
    module.register_buffer("text_queue", F.normalize(torch.randn(embed_dim, queue_size), dim=0))
    module.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
    if with_idx_queue:
        module.register_buffer("idx_queue", torch.full((1, queue_size), -100, dtype=torch.long))


def check_queue_size(queue_size: int, global_batch: int) -> None:
    """The queue is filled in whole global batches, so its size must be a multiple of one."""
    if queue_size % global_batch:
        raise ValueError(
            f"queue_size={queue_size} is not a multiple of the global batch size {global_batch} "
            f"(per-process batch x world size). Set model_config.queue_size to a multiple of it "
            f"(e.g. {max(1, queue_size // global_batch) * global_batch}), or change the batch size; "
            f"training batches must all have the same size (drop_last).")


@torch.no_grad()
def enqueue(queues: Sequence[torch.Tensor], queue_ptr: torch.Tensor,
            batches: Sequence[torch.Tensor]) -> None:
    """Gather ``batches`` from all ranks and write them into ``queues`` at ``queue_ptr``.

    Args:
        queues: ``[D_k, Q]`` buffers, written in place (column = one sample).
        queue_ptr: long ``[1]`` buffer, advanced by the global batch size (mod Q) in place.
        batches: per-queue local values, ``[B, D_k]`` (features) or ``[B]`` (ids).
    """
    if len(queues) != len(batches):
        raise ValueError(f"{len(queues)} queues but {len(batches)} batches to enqueue")
    queue_size = queues[0].shape[1]
    if queue_size == 0:  # no queue: ITC uses the in-batch negatives only
        return
    gathered = [all_gather_concat(batch.detach()) for batch in batches]
    global_batch = gathered[0].shape[0]
    check_queue_size(queue_size, global_batch)
    columns = (queue_ptr + torch.arange(global_batch, device=queue_ptr.device)) % queue_size
    for queue, values in zip(queues, gathered):
        if values.shape[0] != global_batch:
            raise ValueError("all batches enqueued together must have the same batch size")
        queue.index_copy_(1, columns, values.reshape(global_batch, -1).t().to(queue.dtype))
    queue_ptr.copy_((queue_ptr + global_batch) % queue_size)
