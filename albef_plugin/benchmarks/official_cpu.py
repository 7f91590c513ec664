"""``tools/benchmark.py --preset official-cpu``: our step at the sizes the official
salesforce/ALBEF step was timed at on a 2-core CPU, beside its figures.

The official code is not part of this project: its step times below were measured
outside it (same machine kind, same sizes, fp32, AdamW, median step). Ours are measured
here in alternating rounds (batch 8, batch 32, batch 8, ...) so that a change of machine
load hits both sizes alike; each round is ``warmup`` untimed then ``steps`` timed steps,
its median step time is the round's figure, and the table gives the median of the rounds.
The 1-minute load average is recorded with every round: on a shared machine it explains
most of the spread.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

from albef_plugin.benchmarks.train_step import (build_optimizer, machine_load, make_train_step,
                                                synthetic_batch, text_vocabulary, time_steps)

__all__ = ["MODEL_OVERRIDES", "OFFICIAL_STEP_S", "TARGET_STEP_S", "build_case", "run_official_cpu",
           "format_official_cpu"]

IMAGE_SIZE = 64
TEXT_LEN = 30
THREADS = 2
BATCH_SIZES = (8, 32)
# ViT width 128, depth 2, 2 heads, 64 px, 16-px patches; BERT width 128, 4 layers (fusion
# from layer 2), 2 heads, feed-forward 512, full 30,522-word vocabulary; ITC embed 256,
# queue 65,536.
MODEL_OVERRIDES = (
    f"image_encoder.image_size={IMAGE_SIZE}", "image_encoder.patch_size=16",
    "image_encoder.width=128", "image_encoder.depth=2", "image_encoder.num_heads=2",
    "text_encoder.hidden_size=128", "text_encoder.num_hidden_layers=4",
    "text_encoder.fusion_layer=2", "text_encoder.num_attention_heads=2",
    "text_encoder.intermediate_size=512", "text_encoder.vocab_size=30522",
    "embed_dim=256", "queue_size=65536",
)
# Official salesforce/ALBEF step (fp32, AdamW) at these sizes on a 2-core machine, seconds.
OFFICIAL_STEP_S = {8: 0.449, 32: 1.296}
# Twice the official speed (issue target, on an idle machine of that kind).
TARGET_STEP_S = {8: 0.22, 32: 0.65}


def build_case(batch_size: int, seed: int = 0, overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Model, optimizer, train step and batch of one batch size (fp32, CPU, train mode)."""
    from albef_plugin.models import build_model

    torch.manual_seed(seed)
    device = torch.device("cpu")
    model = build_model("albef_pretrain", [*MODEL_OVERRIDES, *overrides]).train()
    optimizer = build_optimizer(model, lr=1e-4, fused=False)
    generator = torch.Generator().manual_seed(seed)
    image_size = int(model.config.image_encoder.image_size)  # IMAGE_SIZE unless overridden
    batch = synthetic_batch(batch_size, image_size, TEXT_LEN, device=device, generator=generator,
                            **text_vocabulary(model))
    return {"model": model, "optimizer": optimizer, "batch": batch,
            "step": make_train_step(model, optimizer, "fp32", device)}


def run_official_cpu(rounds: int = 5, steps: int = 10, warmup: int = 3,
                     batch_sizes: Sequence[int] = BATCH_SIZES, threads: int = THREADS,
                     overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Time the preset; returns per-batch-size round medians, their median and the loads."""
    torch.set_num_threads(threads)
    cases = {b: build_case(b, overrides=overrides) for b in batch_sizes}
    per_round: Dict[int, List[float]] = {b: [] for b in batch_sizes}
    cpu_per_step: Dict[int, List[float]] = {b: [] for b in batch_sizes}
    loads: List[Dict[str, Any]] = []
    for _ in range(rounds):
        for b in batch_sizes:
            cpu_start = time.process_time()
            durations = time_steps(cases[b]["step"], cases[b]["batch"], steps, warmup,
                                   torch.device("cpu"))
            # CPU seconds of all threads per step: far less sensitive to other processes
            # than wall time (they take turns on the cores, they do not add work)
            cpu_per_step[b].append((time.process_time() - cpu_start) / (steps + warmup))
            per_round[b].append(statistics.median(durations))
            loads.append({"batch_size": b, **machine_load()})
    rows = []
    for b in batch_sizes:
        ours = statistics.median(per_round[b])
        official = OFFICIAL_STEP_S.get(b)
        rows.append({"batch_size": b, "official_step_s": official, "step_s": ours,
                     "round_step_s": per_round[b], "img_per_s": b / ours,
                     "cpu_s_per_step": statistics.median(cpu_per_step[b]),
                     "speedup_vs_official": official / ours if official else None,
                     "target_step_s": TARGET_STEP_S.get(b)})
    return {"preset": "official-cpu", "threads": torch.get_num_threads(), "rounds": rounds,
            "steps": steps, "warmup": warmup, "overrides": list(overrides), "rows": rows,
            "loads": loads, "load_1min_median": statistics.median(l["load_1min"] for l in loads)}


def format_official_cpu(result: Dict[str, Any]) -> str:
    """Markdown table: batch, official, ours, speed ratio, target, load during the rounds."""
    lines = [
        f"official-cpu preset: fp32, {result['threads']} threads, median of {result['rounds']} "
        f"rounds of {result['steps']} steps (after {result['warmup']} warm-up)"
        + (f", overrides {' '.join(result['overrides'])}" if result["overrides"] else ""),
        "",
        "| batch | official | ours | ours / official speed | target (idle) | rounds (s) "
        "| CPU s / step |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        official = f"{row['official_step_s']:.3f} s" if row["official_step_s"] else "n/a"
        speedup = f"{row['speedup_vs_official']:.2f}x" if row["speedup_vs_official"] else "n/a"
        target = f"<= {row['target_step_s']:.2f} s" if row["target_step_s"] else "n/a"
        rounds = " ".join(f"{s:.3f}" for s in row["round_step_s"])
        lines.append(f"| {row['batch_size']} | {official} | {row['step_s']:.3f} s | {speedup} "
                     f"| {target} | {rounds} | {row['cpu_s_per_step']:.3f} |")
    loads = [l["load_1min"] for l in result["loads"]]
    lines += ["", f"machine load (1-min average) during the rounds: min {min(loads):.2f}, median "
              f"{result['load_1min_median']:.2f}, max {max(loads):.2f} on {result['loads'][0]['cpu_count']} "
              f"cores (timings are only comparable at similar load)"]
    return "\n".join(lines)


def profile_official_cpu(threads: int = THREADS, overrides: Sequence[str] = (),
                         trace_dir: Optional[str] = None,
                         batch_sizes: Sequence[int] = BATCH_SIZES) -> "tuple[Dict[str, Any], str]":
    """Profiler breakdown of the preset step at each batch size: (records, report)."""
    import os

    from albef_plugin.benchmarks.profiling import format_profile, profile_step

    torch.set_num_threads(threads)
    results, reports = {}, []
    for b in batch_sizes:
        case = build_case(b, overrides=overrides)
        trace = os.path.join(trace_dir, f"official_cpu_b{b}.json") if trace_dir else None
        result = profile_step(case["step"], case["batch"], trace_path=trace)
        results[b] = {k: v for k, v in result.items() if k not in ("operators", "frames")}
        reports.append(format_profile(f"official-cpu step, batch {b}", result, detail=True))
    return {"profile": results, **machine_load()}, "\n\n".join(reports)
