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
import json
import logging
import os
import statistics
import sys
from typing import Any, Dict, List, Optional, Sequence

import torch

# Allow running from a source checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from albef_plugin.benchmarks.train_step import (AUTOCAST_DTYPES, build_optimizer,  # noqa: E402
                                                count_flops, machine_load, make_train_step,
                                                peak_memory, synthetic_batch, text_vocabulary,
                                                time_steps)

logger = logging.getLogger("albef_plugin.tools.benchmark")

PAPER_SIZE = {"model": "albef_pretrain", "batch_size": 64, "image_size": 256, "text_len": 30}
# The official ALBEF implementation measured on one H200 at paper size (same step:
# forward with the three losses, backward, AdamW). TFLOP per step counted the same way.
REFERENCE_IMG_PER_S = {"fp32": 115.8, "bf16": 253.0}
REFERENCE_TFLOP_PER_STEP = 19.18


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=PAPER_SIZE["model"], help="registered model name")
    parser.add_argument("--batch-size", type=int, default=PAPER_SIZE["batch_size"])
    parser.add_argument("--image-size", type=int, default=PAPER_SIZE["image_size"])
    parser.add_argument("--text-len", type=int, default=PAPER_SIZE["text_len"],
                        help="tokens per caption, [CLS] included")
    parser.add_argument("--precision", choices=sorted(AUTOCAST_DTYPES), default="fp32",
                        help="fp32, or autocast to bf16 / fp16 (fp16 adds a GradScaler)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps (default 20; 10 with --preset)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default 5; 3 with --preset)")
    parser.add_argument("--model-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="model config overrides, e.g. image_encoder.width=128")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--fused-adamw", action="store_true",
                        help="fused AdamW kernel (CUDA); the official code used the default")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the encoders in place, as training.compile=true")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 matmuls in fp32 (off in the official reference)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU intra-op threads (torch.set_num_threads); default: torch's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    modes = parser.add_argument_group("other measurements (each replaces the single-step timing)")
    modes.add_argument("--preset", choices=("official-cpu",), default=None,
                       help="official-cpu: batch 8 and 32 at the sizes the official step was "
                            "timed at on a 2-core CPU, beside its figures")
    modes.add_argument("--rounds", type=int, default=5,
                       help="--preset: alternating rounds; the table gives their median")
    modes.add_argument("--profile", action="store_true",
                       help="with --preset official-cpu: torch.profiler breakdown of the step "
                            "(attention, vocabulary projection, queue, momentum, optimizer, "
                            "Python overhead) at each batch size")
    modes.add_argument("--trace-dir", default=None,
                       help="--profile: also write Chrome traces here")
    modes.add_argument("--data", action="store_true",
                       help="image pipeline img/s per core from 512-px JPEGs (both backends)")
    modes.add_argument("--data-workers", type=int, default=2,
                       help="--data: DataLoader workers for the end-to-end figure (0: skip)")
    modes.add_argument("--eval", action="store_true",
                       help="retrieval evaluator at 1,000 x 5,000 with the demo model on the "
                            "CPU, plus FLOPs and extrapolated GPU time at paper size")
    modes.add_argument("--eval-images", type=int, default=1000, help="--eval: images (x5 captions)")
    modes.add_argument("--eval-k", type=int, default=128, help="--eval: candidates re-ranked")
    modes.add_argument("--memory", action="store_true",
                       help="RSS over --memory-updates updates of the tiny model")
    modes.add_argument("--memory-updates", type=int, default=2000)
    args = parser.parse_args(argv)
    preset = args.preset is not None
    if args.steps is None:
        args.steps = 10 if preset else 20
    if args.warmup is None:
        args.warmup = 3 if preset else 5
    for name in ("batch_size", "image_size", "text_len", "steps", "rounds"):
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
    vocab = text_vocabulary(model)
    batch = synthetic_batch(args.batch_size, args.image_size, args.text_len, device=device, **vocab)
    optimizer = build_optimizer(model, args.lr, args.fused_adamw)
    step = make_train_step(model, optimizer, args.precision, device)
    logger.info("benchmarking %s (%.1fM trainable parameters) on %s, %s, batch %d, %d px, %d tokens",
                args.model, num_params / 1e6, device, args.precision, args.batch_size,
                args.image_size, args.text_len)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    flops = None
    if args.compile:
        # counted eagerly (the same ops): FlopCounterMode does not see inside compiled kernels
        flops = count_flops(step, batch)
        # what training.compile does (trainers/build.py: wrap_model); compiles in warm-up
        if not hasattr(model, "compile_encoders"):
            raise SystemExit(f"--compile: model {args.model} has no compile_encoders()")
        model.compile_encoders()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
    durations = time_steps(step, batch, args.steps, args.warmup, device)
    memory = peak_memory(device)
    if flops is None:
        flops = count_flops(step, batch)

    step_s = statistics.median(durations)
    result: Dict[str, Any] = {
        "model": args.model,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": args.precision,
        "compile": args.compile,
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
        **machine_load(),
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
    if args.data:
        from albef_plugin.benchmarks.data_loading import format_data_benchmark, run_data_benchmark

        result = run_data_benchmark(workers=args.data_workers)
        report = format_data_benchmark(result)
    elif args.eval:
        from albef_plugin.benchmarks.evaluation import format_eval_benchmark, run_eval_benchmark

        result = run_eval_benchmark(args.eval_images, args.eval_k, threads=args.threads or 2)
        report = format_eval_benchmark(result)
    elif args.memory:
        from albef_plugin.benchmarks.memory import format_memory_benchmark, run_memory_benchmark

        result = run_memory_benchmark(args.memory_updates)
        report = format_memory_benchmark(result)
    elif args.profile:
        if args.preset != "official-cpu":
            raise SystemExit("--profile needs --preset official-cpu (the sizes it breaks down)")
        from albef_plugin.benchmarks.official_cpu import profile_official_cpu

        result, report = profile_official_cpu(threads=args.threads or 2, overrides=args.model_overrides,
                                              trace_dir=args.trace_dir)
    elif args.preset == "official-cpu":
        from albef_plugin.benchmarks.official_cpu import format_official_cpu, run_official_cpu

        result = run_official_cpu(rounds=args.rounds, steps=args.steps, warmup=args.warmup,
                                  threads=args.threads or 2, overrides=args.model_overrides)
        report = format_official_cpu(result)
    else:
        result = run_benchmark(args)
        report = format_report(result)
    # the report is this tool's output (stdout), not a log message
    sys.stdout.write(report + "\n")
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
