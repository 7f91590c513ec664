#!/usr/bin/env python
"""Time one ALBEF pretraining step on synthetic data: img/s, TFLOP/s, peak memory.

A step is what the trainer does per batch: forward with the three losses (ITC with the
momentum queue, ITM with hard negatives, MLM with distillation), backward, AdamW step.
The inputs are random, so data loading is not measured.

Paper size (the default: ``albef_pretrain``, batch 64, 256 px, 30 tokens, queue 65536)::

    python tools/benchmark.py --device cuda --precision bf16

A tiny configuration that runs on a CPU in seconds::

    python tools/benchmark.py --device cpu --batch-size 4 --image-size 32 --text-len 8 \\
        --steps 2 --warmup 1 --model-overrides image_encoder.patch_size=16 \\
        image_encoder.width=32 image_encoder.depth=1 ...

Timing: ``--warmup`` untimed steps, then ``--steps`` timed steps (CUDA synchronised
around each); the median step time gives img/s. FLOPs are counted once, over one
extra step, with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions
and attention; elementwise ops are not counted), so TFLOP/s = FLOPs per step /
median step time.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

# Allow running from a source checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from albef_plugin.train_state import TrainState  # noqa: E402

logger = logging.getLogger("albef_plugin.tools.benchmark")

PAPER_SIZE = {"model": "albef_pretrain", "batch_size": 64, "image_size": 256, "text_len": 30}
# The official ALBEF implementation measured on one H200 at paper size (same step:
# forward with the three losses, backward, AdamW). TFLOP per step counted the same way.
REFERENCE_IMG_PER_S = {"fp32": 115.8, "bf16": 253.0}
REFERENCE_TFLOP_PER_STEP = 19.18

_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=PAPER_SIZE["model"], help="registered model name")
    parser.add_argument("--batch-size", type=int, default=PAPER_SIZE["batch_size"])
    parser.add_argument("--image-size", type=int, default=PAPER_SIZE["image_size"])
    parser.add_argument("--text-len", type=int, default=PAPER_SIZE["text_len"],
                        help="tokens per caption, [CLS] included")
    parser.add_argument("--precision", choices=sorted(_AUTOCAST_DTYPES), default="fp32",
                        help="fp32, or autocast to bf16 / fp16 (fp16 adds a GradScaler)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--model-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="model config overrides, e.g. image_encoder.width=128")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--fused-adamw", action="store_true",
                        help="fused AdamW kernel (CUDA); the official code used the default")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 matmuls in fp32 (off in the official reference)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU intra-op threads (torch.set_num_threads); default: torch's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    args = parser.parse_args(argv)
    for name in ("batch_size", "image_size", "text_len", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False; use --device cpu")
    return args


def model_overrides(args: argparse.Namespace) -> List[str]:
    """The dotlist handed to ``build_model``: the image size from ``--image-size``, then
    ``--model-overrides`` (values parsed as YAML by OmegaConf)."""
    for item in args.model_overrides:
        if "=" not in item or item.startswith("="):
            raise SystemExit(f"--model-overrides: {item!r} is not KEY=VALUE "
                             f"(e.g. image_encoder.width=128)")
    # the ViT's position embeddings are sized for one resolution: keep the two in step
    return [f"image_encoder.image_size={args.image_size}", *args.model_overrides]


def synthetic_batch(batch_size: int, image_size: int, text_len: int, vocab_size: int,
                    cls_token_id: int, device: torch.device) -> Dict[str, torch.Tensor]:
    """A pretraining batch of random images and full-length random captions.

    Returns ``image`` (B, 3, H, W), ``input_ids`` (B, L) starting with [CLS],
    ``attention_mask`` (B, L) of ones, ``image_id`` (B,) all distinct.
    """
    # ordinary word ids: above BERT's special and unused tokens when the vocabulary allows
    low = 1000 if vocab_size > 2000 else min(5, vocab_size - 1)
    input_ids = torch.randint(low, vocab_size, (batch_size, text_len), device=device)
    input_ids[:, 0] = cls_token_id
    return {
        "image": torch.randn(batch_size, 3, image_size, image_size, device=device),
        "input_ids": input_ids,
        "attention_mask": torch.ones(batch_size, text_len, dtype=torch.long, device=device),
        "image_id": torch.arange(batch_size, device=device),
    }


def _text_vocabulary(model: torch.nn.Module) -> Dict[str, int]:
    """Vocabulary size and [CLS] id from ``model.config.text_encoder`` (BERT's when absent)."""
    text_config = getattr(getattr(model, "config", None), "text_encoder", None)
    return {"vocab_size": int(getattr(text_config, "vocab_size", 30522)),
            "cls_token_id": int(getattr(text_config, "cls_token_id", 101))}


def build_optimizer(model: torch.nn.Module, lr: float, fused: bool) -> torch.optim.Optimizer:
    """AdamW with the official grouping: no weight decay on 1-D tensors and biases."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim == 1 or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": 0.02}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, fused=fused or None)


def make_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, precision: str,
                    device: torch.device) -> Callable[[Dict[str, torch.Tensor]], torch.Tensor]:
    """One training step, as the trainer runs it: forward, sum of losses, backward, update."""
    dtype = _AUTOCAST_DTYPES[precision]
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


def time_steps(step: Callable[[Dict[str, torch.Tensor]], torch.Tensor],
               batch: Dict[str, torch.Tensor], steps: int, warmup: int,
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


def count_flops(step: Callable[[Dict[str, torch.Tensor]], torch.Tensor],
                batch: Dict[str, torch.Tensor]) -> int:
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


def is_paper_size(args: argparse.Namespace) -> bool:
    return (not args.model_overrides
            and all(getattr(args, key) == value for key, value in PAPER_SIZE.items()))


def run_benchmark(args: argparse.Namespace) -> Dict[str, Any]:
    """Build the model, time its training step, count its FLOPs. Returns the result record."""
    from albef_plugin.models import build_model

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    model = build_model(args.model, model_overrides(args)).to(device).train()
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    vocab = _text_vocabulary(model)
    batch = synthetic_batch(args.batch_size, args.image_size, args.text_len, device=device, **vocab)
    optimizer = build_optimizer(model, args.lr, args.fused_adamw)
    step = make_train_step(model, optimizer, args.precision, device)
    logger.info("benchmarking %s (%.1fM trainable parameters) on %s, %s, batch %d, %d px, %d tokens",
                args.model, num_params / 1e6, device, args.precision, args.batch_size,
                args.image_size, args.text_len)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    durations = time_steps(step, batch, args.steps, args.warmup, device)
    memory = peak_memory(device)
    flops = count_flops(step, batch)

    step_s = statistics.median(durations)
    result: Dict[str, Any] = {
        "model": args.model,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": args.precision,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "text_len": args.text_len,
        "model_overrides": list(args.model_overrides),
        "trainable_params": num_params,
        "cpu_threads": torch.get_num_threads(),
        "steps": args.steps,
        "warmup": args.warmup,
        "step_time_s_median": step_s,
        "step_time_s_mean": statistics.fmean(durations),
        "img_per_s": args.batch_size / step_s,
        "flops_per_step": flops,
        "tflop_per_step": flops / 1e12,
        "tflop_per_s": flops / step_s / 1e12,
        **memory,
    }
    if is_paper_size(args):
        result["reference_img_per_s"] = REFERENCE_IMG_PER_S.get(args.precision)
        result["reference_tflop_per_step"] = REFERENCE_TFLOP_PER_STEP
    return result


def format_report(result: Dict[str, Any]) -> str:
    """Human-readable summary, with the official reference beside ours at paper size."""
    reference = "reference_tflop_per_step" in result

    def line(label: str, ours: str, ref: Optional[str] = None) -> str:
        text = f"  {label:<18} {ours:>14}"
        return text + (f"   official ALBEF on 1x H200: {ref}" if reference and ref else "")

    ref_img = result.get("reference_img_per_s")
    lines = [
        f"ALBEF benchmark: {result['model']} on {result['device']}, {result['precision']}, "
        f"batch {result['batch_size']}, {result['image_size']} px, {result['text_len']} tokens"
        + (f", overrides {' '.join(result['model_overrides'])}" if result["model_overrides"] else ""),
        line("images / s", f"{result['img_per_s']:.1f}", f"{ref_img:.1f}" if ref_img else "n/a"),
        line("step time (median)", f"{result['step_time_s_median'] * 1e3:.1f} ms"),
        line("TFLOP / step", f"{result['tflop_per_step']:.4g}",
             f"{result.get('reference_tflop_per_step', 0):.2f}"),
        line("TFLOP / s", f"{result['tflop_per_s']:.4g}",
             f"{ref_img / result['batch_size'] * REFERENCE_TFLOP_PER_STEP:.1f}" if ref_img else None),
        line("peak memory", f"{result['peak_memory_gib']:.2f} GiB",
             None) + f"   ({result['peak_memory_kind']})",
    ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Command-line entry point; returns the result record (also printed)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    result = run_benchmark(args)
    # the report is this tool's output (stdout), not a log message
    sys.stdout.write(format_report(result) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
