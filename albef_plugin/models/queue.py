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

from typing import Any, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from albef_plugin.distributed import all_gather_concat

__all__ = ["register_feature_queues", "enqueue", "check_queue_size", "similarity_with_queue"]


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


class _MatmulWithQueue(torch.autograd.Function):
    """``rows @ queue`` for a queue that :func:`enqueue` overwrites in place before the backward.

    Autograd would keep ``queue`` for the backward and then refuse it (modified in place), so
    the plain form needs a copy of the whole ``[D, Q]`` queue every step (64 MiB at the paper's
    size, most of the ITC cost on a CPU). Here the forward keeps only the ``[D, n]`` columns
    the next enqueue will overwrite, and the backward puts them back for its matmul and then
    restores the new ones: the backward reads exactly the forward's queue, without the copy.
    One enqueue (one in-place write) may happen between forward and backward, as in a step;
    more is an error.
    """

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, queue: torch.Tensor,
                columns: torch.Tensor) -> torch.Tensor:
        ctx.queue, ctx.columns, ctx.version = queue, columns, queue._version
        ctx.overwritten = queue.index_select(1, columns)
        return rows @ queue

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, None, None]:
        queue, columns = ctx.queue, ctx.columns
        writes = queue._version - ctx.version
        if writes == 0:
            return grad @ queue.t(), None, None
        if writes != 1:
            raise RuntimeError(f"the feature queue was written {writes} times between a forward "
                               f"and its backward; run backward after each forward")
        with torch.no_grad():
            current = queue.index_select(1, columns)
            queue.index_copy_(1, columns, ctx.overwritten)
            grad_rows = grad @ queue.t()
            queue.index_copy_(1, columns, current)
        ctx.version = queue._version - 1  # a second backward (retain_graph) sees one write again
        return grad_rows, None, None


def similarity_with_queue(rows: torch.Tensor, batch_columns: torch.Tensor, queue: torch.Tensor,
                          queue_ptr: torch.Tensor, global_batch: int) -> torch.Tensor:
    """``rows @ [batch_columns | queue]`` (``[N, D] @ [D, B + Q]``) without concatenating the
    queue: ``batch_columns`` is ``[D, B]``; ``global_batch`` columns from ``queue_ptr`` on are the
    ones the step's :func:`enqueue` overwrites (see :class:`_MatmulWithQueue`)."""
    if not (rows.requires_grad and torch.is_grad_enabled()):
        return torch.cat([rows @ batch_columns, rows @ queue], dim=1)
    columns = (queue_ptr + torch.arange(global_batch, device=queue_ptr.device)) % queue.shape[1]
    return torch.cat([rows @ batch_columns, _MatmulWithQueue.apply(rows, queue, columns)], dim=1)
