"""One ALBEF pretraining step on synthetic data, and how to time it.

A step is what the trainer does per batch: forward with the three losses (ITC with the
momentum queue, ITM with hard negatives, MLM with distillation), backward, AdamW step.
The inputs are random, so data loading is not measured.
"""
from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch

from albef_plugin.train_state import TrainState

__all__ = ["AUTOCAST_DTYPES", "synthetic_batch", "text_vocabulary", "build_optimizer",
           "make_train_step", "time_steps", "count_flops", "peak_memory", "machine_load"]

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

Step = Callable[[Dict[str, torch.Tensor]], torch.Tensor]


def synthetic_batch(batch_size: int, image_size: int, text_len: int, vocab_size: int,
                    cls_token_id: int, device: torch.device,
                    generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """A pretraining batch of random images and full-length random captions.

    Returns ``image`` (B, 3, H, W), ``input_ids`` (B, L) starting with [CLS],
    ``attention_mask`` (B, L) of ones, ``image_id`` (B,) all distinct.
    """
    # ordinary word ids: above BERT's special and unused tokens when the vocabulary allows
    low = 1000 if vocab_size > 2000 else min(5, vocab_size - 1)
    input_ids = torch.randint(low, vocab_size, (batch_size, text_len), generator=generator)
    input_ids[:, 0] = cls_token_id
    return {
        "image": torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(device),
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones(batch_size, text_len, dtype=torch.long, device=device),
        "image_id": torch.arange(batch_size, device=device),
    }


def text_vocabulary(model: torch.nn.Module) -> Dict[str, int]:
    """Vocabulary size and [CLS] id from ``model.config.text_encoder`` (BERT's when absent)."""
    text_config = getattr(getattr(model, "config", None), "text_encoder", None)
    return {"vocab_size": int(getattr(text_config, "vocab_size", 30522)),
            "cls_token_id": int(getattr(text_config, "cls_token_id", 101))}


def build_optimizer(model: torch.nn.Module, lr: float, fused: bool) -> torch.optim.Optimizer:
    """AdamW with the official grouping (no weight decay on 1-D tensors and biases).

    ``fused`` asks for the fused kernel; otherwise the multi-tensor (foreach) one, which
    is what the trainer's ``adam_w`` uses on the CPU.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim == 1 or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": 0.02}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr,
                             fused=True if fused else None, foreach=None if fused else True)


def make_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, precision: str,
                    device: torch.device) -> Step:
    """One training step, as the trainer runs it: forward, sum of losses, backward, update."""
    dtype = AUTOCAST_DTYPES[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    # alpha at full strength (after the first-epoch ramp): the compute is the same anyway
    state = TrainState(epoch=1, update=1000, iteration_in_epoch=0, iterations_per_epoch=1000)
    if hasattr(model, "alpha_for"):
        state.alpha = model.alpha_for(state)

    def step(batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        autocast = (torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            output = model(batch, state)
            loss = sum(output["losses"].values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    return step


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Step, batch: Dict[str, torch.Tensor], steps: int, warmup: int,
               device: torch.device) -> List[float]:
    """Seconds of each of ``steps`` timed steps, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        loss = step(batch)
    _synchronize(device)
    if warmup and not torch.isfinite(loss):
        raise RuntimeError(f"the loss is {loss.item()} after {warmup} warm-up steps; "
                           f"the benchmark configuration is numerically broken")
    durations = []
    for _ in range(steps):
        _synchronize(device)
        start = time.perf_counter()
        step(batch)
        _synchronize(device)
        durations.append(time.perf_counter() - start)
    return durations


def count_flops(step: Step, batch: Dict[str, torch.Tensor]) -> int:
    """FLOPs of one full step (forward and backward) as FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step(batch)
    return int(counter.get_total_flops())


def peak_memory(device: torch.device) -> Dict[str, Any]:
    """Peak allocated CUDA memory, or the process's peak RSS on CPU (whole process lifetime)."""
    if device.type == "cuda":
        return {"peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
                "peak_memory_kind": "cuda max_memory_allocated"}
    # ru_maxrss is in KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024
    return {"peak_memory_gib": rss * scale / 2**30, "peak_memory_kind": "process peak RSS"}


def machine_load() -> Dict[str, Any]:
    """1-minute load average and core count: CPU timings mean little without them."""
    load1, load5, _ = os.getloadavg()
    return {"load_1min": round(load1, 2), "load_5min": round(load5, 2), "cpu_count": os.cpu_count()}
