"""``tools/benchmark.py --memory``: resident memory over a long run of the tiny model.

A leak in the training step (autograd graphs kept alive through the queue, tensors
appended to a Python list each update, a growing cache) shows as RSS that keeps rising
after the allocator has warmed up. The run trains a tiny ALBEF (same step as the
trainer: forward with the three losses, backward, AdamW) on a fresh random batch each
update and samples the resident set size (``/proc/self/statm``) along the way; the
verdict compares RSS at ``updates`` with RSS at ``updates / 10``.
"""
from __future__ import annotations

import os
import resource
from typing import Any, Dict, List, Sequence

import torch

__all__ = ["TINY_MODEL_OVERRIDES", "rss_mib", "run_memory_benchmark", "format_memory_benchmark"]

TINY_MODEL_OVERRIDES = (
    "image_encoder.image_size=32", "image_encoder.patch_size=16", "image_encoder.width=32",
    "image_encoder.depth=1", "image_encoder.num_heads=2", "text_encoder.vocab_size=64",
    "text_encoder.hidden_size=32", "text_encoder.num_hidden_layers=2", "text_encoder.fusion_layer=1",
    "text_encoder.num_attention_heads=2", "text_encoder.intermediate_size=64",
    "text_encoder.max_position_embeddings=32", "text_encoder.cls_token_id=1",
    "text_encoder.mask_token_id=2", "embed_dim=16", "queue_size=64",
)
GROWTH_LIMIT = 0.05


def rss_mib() -> float:
    """Current resident set size of this process, MiB (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_memory_benchmark(updates: int = 2000, batch_size: int = 8, text_len: int = 12,
                         samples: int = 20, overrides: Sequence[str] = ()) -> Dict[str, Any]:
    from albef_plugin.benchmarks.train_step import (build_optimizer, make_train_step,
                                                    synthetic_batch, text_vocabulary)
    from albef_plugin.models import build_model

    torch.manual_seed(0)
    model = build_model("albef_pretrain", [*TINY_MODEL_OVERRIDES, *overrides]).train()
    step = make_train_step(model, build_optimizer(model, 1e-4, fused=False), "fp32",
                           torch.device("cpu"))
    vocab = text_vocabulary(model)
    early = max(1, updates // 10)
    marks = sorted({early, updates, *range(updates // samples, updates + 1, max(1, updates // samples))})
    trace: List[Dict[str, float]] = []
    loss = torch.zeros(())
    for update in range(1, updates + 1):
        batch = synthetic_batch(batch_size, 32, text_len, device=torch.device("cpu"), **vocab)
        loss = step(batch)
        if update in marks:
            trace.append({"update": update, "rss_mib": rss_mib()})
    by_update = {row["update"]: row["rss_mib"] for row in trace}
    growth = by_update[updates] / by_update[early] - 1
    return {"updates": updates, "early_update": early, "rss_early_mib": by_update[early],
            "rss_final_mib": by_update[updates], "growth": growth,
            "within_limit": growth <= GROWTH_LIMIT, "trace": trace,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "final_loss": float(loss)}


def format_memory_benchmark(result: Dict[str, Any]) -> str:
    trace = ", ".join(f"{row['update']}: {row['rss_mib']:.0f}" for row in result["trace"])
    verdict = "within" if result["within_limit"] else "OVER"
    return "\n".join([
        f"tiny ALBEF, {result['updates']} updates: RSS {result['rss_early_mib']:.1f} MiB at update "
        f"{result['early_update']}, {result['rss_final_mib']:.1f} MiB at update {result['updates']} "
        f"({result['growth'] * 100:+.2f}%, {verdict} the {GROWTH_LIMIT * 100:.0f}% bound); "
        f"peak {result['peak_rss_mib']:.0f} MiB",
        f"RSS (MiB) by update: {trace}"])
