"""Device and mixed precision: one autocast context and one (possibly disabled) GradScaler.

There is no AMP subclass of the trainer: the step always runs
``with get_autocast(precision, device)`` and ``scaler.scale(loss).backward()``; for fp32
both are no-ops.
"""
from __future__ import annotations

import contextlib
import logging
from typing import ContextManager

import torch

from albef_plugin.distributed import get_local_rank

logger = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "resolve_device", "resolve_precision", "get_autocast", "build_grad_scaler"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``training.device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.

    On CUDA each process uses the GPU of its local rank.
    """
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"training.device={name!r}: expected auto, cpu or cuda.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("training.device=cuda but torch sees no CUDA device; "
                               "set training.device=cpu (or auto).")
        return torch.device("cuda", get_local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn ``training.precision`` into one of fp32 / bf16 / fp16.

    ``auto`` is bf16 on a GPU that supports it, fp32 otherwise (CPU autocast is slower
    than fp32 on most CPUs).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"training.precision={precision!r}: expected one of {PRECISIONS}.")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16"
        logger.warning("training.precision=auto: this GPU has no bf16; using fp32 "
                       "(set training.precision=fp16 for mixed precision).")
    return "fp32"


def get_autocast(precision: str, device: torch.device) -> ContextManager:
    """Autocast for ``precision`` (already resolved) on ``device``; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def build_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that is only enabled for fp16 (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
