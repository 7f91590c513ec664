"""Where the time of one training step goes: ``tools/benchmark.py --profile``.

``torch.profiler`` records a few steps with Python stacks and module names
(``with_stack``). Every top-level operator (an aten op not nested in
another one) is put in one category by the Python frames and modules it was called from:

- attention: BERT self/cross-attention blocks and the ViT attention (QKV, SDPA, output
  projection and its LayerNorm);
- vocabulary projection: the MLM head (transform and 30,522-way decoder) and the MLM loss;
- queue similarities: [batch | queue] similarities, the ITC loss and the enqueue;
- momentum update: the EMA of the momentum encoders;
- optimizer: ``AdamW.step`` and ``zero_grad``;
- ITM sampling: hard-negative sampling (softmax + multinomial);
- feed-forward: the BERT and ViT MLPs (with their output LayerNorm);
- embeddings: BERT word/position embeddings, the ViT patch embedding;
- other model: the rest (ViT LayerNorms and position embedding, projections, ITM head, MLM
  masking, the concatenation of the ITM pairs, batch plumbing).

Backward operators carry no Python stack; each ``autograd::engine::evaluate_function``
node is charged to the category of the forward op with the same ``sequence_nr``.
"Python overhead" is the step's wall time not covered by any top-level operator: the
interpreter, module calls, dispatch outside kernels.
"""
from __future__ import annotations

import statistics
import time
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["CATEGORIES", "categorize", "profile_step", "format_profile"]

# (category, markers): the first category whose marker appears in a frame wins.
CATEGORIES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("momentum update", ("momentum_update",)),
    ("optimizer", ("torch/optim/", "zero_grad")),
    ("vocabulary projection", ("nn.Module: BertOnlyMLMHead", "nn.Module: BertLMPredictionHead",
                               ": mlm_loss")),
    ("queue similarities", (": similarities", ": _similarities", ": itc_loss", ": enqueue",
                            ": itc_targets")),
    ("ITM sampling", (": sample_hard_negatives",)),
    ("attention", ("nn.Module: BertAttention", "nn.Module: Attention_")),
    ("feed-forward", ("nn.Module: BertIntermediate", "nn.Module: BertOutput", "nn.Module: Mlp_")),
    ("embeddings", ("nn.Module: BertEmbeddings", "nn.Module: PatchEmbed")),
)
OTHER = "other model"


def categorize(stack: Sequence[str]) -> str:
    """The category of an op from its Python stack (innermost frame first)."""
    for name, markers in CATEGORIES:
        if any(marker in frame for frame in stack for marker in markers):
            return name
    return OTHER


def _is_op(event: Any) -> bool:
    return not (getattr(event, "is_python_function", False) or event.name.startswith("ProfilerStep")
                or getattr(event, "is_user_annotation", False))


def _python_stack(event: Any) -> Tuple[List[str], bool]:
    """(names of the Python frames / modules around ``event``, innermost first; whether an op
    encloses it). With ``with_stack`` the profiler records Python calls as parent events."""
    frames, nested = list(getattr(event, "stack", None) or []), False
    parent = event.cpu_parent
    while parent is not None:
        if getattr(parent, "is_python_function", False):
            frames.append(parent.name)
        elif _is_op(parent):
            nested = True
        parent = parent.cpu_parent
    return frames, nested


def _breakdown(events: List[Any]) -> Dict[str, Dict[str, float]]:
    """Microseconds of the top-level ops per category, split into forward and backward."""
    ops = [e for e in events if _is_op(e)]
    by_sequence: Dict[int, str] = {}
    top_level = []
    for event in ops:
        frames, nested = _python_stack(event)
        backward = event.name.startswith("autograd::engine::evaluate_function")
        if event.sequence_nr >= 0 and not backward and frames:
            by_sequence.setdefault(event.sequence_nr, categorize(frames))
        if not nested:
            top_level.append((event, frames, backward))
    times: Dict[str, Dict[str, float]] = defaultdict(lambda: {"forward": 0.0, "backward": 0.0})
    for event, frames, backward in top_level:
        duration = event.time_range.elapsed_us()
        if backward:
            times[by_sequence.get(event.sequence_nr, OTHER)]["backward"] += duration
        else:
            times[categorize(frames)]["forward"] += duration
    return times


def profile_step(step: Any, batch: Dict[str, torch.Tensor], steps: int = 3, warmup: int = 3,
                 trace_path: Optional[str] = None) -> Dict[str, Any]:
    """Profile ``steps`` training steps after ``warmup``; returns the shares per category,
    the top operators by self CPU time and the Python overhead."""
    for _ in range(warmup):
        step(batch)
    walls: List[float] = []
    with profile(activities=[ProfilerActivity.CPU], with_stack=True, record_shapes=False) as prof:
        for _ in range(steps):
            start = time.perf_counter()
            step(batch)
            walls.append(time.perf_counter() - start)
            prof.step()
    events = list(prof.events())
    times = _breakdown(events)
    wall_us = sum(walls) * 1e6
    covered = sum(t["forward"] + t["backward"] for t in times.values())
    categories = {name: {"forward_ms": t["forward"] / 1e3 / steps,
                         "backward_ms": t["backward"] / 1e3 / steps,
                         "share": (t["forward"] + t["backward"]) / wall_us}
                  for name, t in sorted(times.items(), key=lambda kv: -sum(kv[1].values()))}
    categories["Python overhead"] = {"forward_ms": (wall_us - covered) / 1e3 / steps,
                                     "backward_ms": 0.0, "share": (wall_us - covered) / wall_us}
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    by_frame = prof.key_averages(group_by_stack_n=4).table(sort_by="self_cpu_time_total",
                                                           row_limit=12)
    if trace_path:
        prof.export_chrome_trace(trace_path)
    return {"step_s_median": statistics.median(walls), "steps": steps,
            "categories": categories, "operators": table, "frames": by_frame}


def format_profile(label: str, result: Dict[str, Any], detail: bool = False) -> str:
    lines = [f"{label}: step {result['step_s_median'] * 1e3:.0f} ms under the profiler "
             f"(median of {result['steps']})", "",
             "| category | forward ms | backward ms | share of step |", "|---|---|---|---|"]
    for name, row in result["categories"].items():
        lines.append(f"| {name} | {row['forward_ms']:.1f} | {row['backward_ms']:.1f} "
                     f"| {row['share'] * 100:.1f}% |")
    if detail:
        lines += ["", "top operators by self CPU time:", result["operators"],
                  "top Python frames (4 deep) by self CPU time:", result["frames"]]
    return "\n".join(lines)
