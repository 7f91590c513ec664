"""tools/benchmark.py: a tiny pretraining step on CPU gives positive img/s and FLOPs."""
import importlib.util
import json
from pathlib import Path

import pytest

from retrieval_fakes import TINY_ALBEF_OVERRIDES

TOOL = Path(__file__).resolve().parents[2] / "tools" / "benchmark.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("albef_benchmark_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_argv(*extra):
    overrides = [o for o in TINY_ALBEF_OVERRIDES if not o.startswith("image_encoder.image_size")]
    return ["--device", "cpu", "--batch-size", "4", "--image-size", "32", "--text-len", "8",
            "--steps", "2", "--warmup", "1", *extra, "--model-overrides", *overrides]


def test_tiny_cpu_run_reports_throughput_flops_and_memory(benchmark, capsys):
    result = benchmark.main(tiny_argv("--json"))
    assert result["img_per_s"] > 0
    assert result["flops_per_step"] > 0 and result["tflop_per_s"] > 0
    assert result["peak_memory_gib"] > 0 and result["peak_memory_kind"] == "process peak RSS"
    assert result["img_per_s"] == pytest.approx(4 / result["step_time_s_median"])
    assert "reference_img_per_s" not in result  # not the paper size

    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == result
    assert any("images / s" in line for line in lines)


def test_flops_grow_with_the_batch(benchmark):
    small = benchmark.main(tiny_argv("--precision", "bf16"))
    large = benchmark.main(tiny_argv("--precision", "bf16")[:3] + ["8"] + tiny_argv()[4:])
    assert large["batch_size"] == 8 and small["precision"] == "bf16"
    # every matmul of the step scales with the batch (ITC logits against the queue too)
    assert large["flops_per_step"] > 1.8 * small["flops_per_step"]


def test_paper_size_report_shows_the_official_reference(benchmark):
    args = benchmark.parse_args(["--device", "cpu", "--precision", "bf16"])
    assert benchmark.is_paper_size(args)
    assert not benchmark.is_paper_size(benchmark.parse_args(["--device", "cpu", "--batch-size", "32"]))
    result = {"model": "albef_pretrain", "device": "cpu", "precision": "bf16", "batch_size": 64,
              "image_size": 256, "text_len": 30, "model_overrides": [], "img_per_s": 100.0,
              "step_time_s_median": 0.64, "tflop_per_step": 19.0, "tflop_per_s": 29.7,
              "peak_memory_gib": 30.0, "peak_memory_kind": "cuda max_memory_allocated",
              "reference_img_per_s": benchmark.REFERENCE_IMG_PER_S["bf16"],
              "reference_tflop_per_step": benchmark.REFERENCE_TFLOP_PER_STEP}
    report = benchmark.format_report(result)
    assert "official ALBEF on 1x H200: 253.0" in report and "19.18" in report


def test_malformed_override_is_rejected(benchmark):
    with pytest.raises(SystemExit, match="not KEY=VALUE"):
        benchmark.main(tiny_argv()[:-1] + ["image_encoder.width"])


def test_preset_defaults_and_profile_needs_the_preset(benchmark):
    args = benchmark.parse_args(["--device", "cpu", "--preset", "official-cpu"])
    assert (args.steps, args.warmup, args.rounds) == (10, 3, 5)  # the protocol
    args = benchmark.parse_args(["--device", "cpu"])
    assert (args.steps, args.warmup) == (20, 5)
    with pytest.raises(SystemExit, match="--profile needs --preset official-cpu"):
        benchmark.main(["--device", "cpu", "--profile"])
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--device", "cpu", "--preset", "official-cpu", "--rounds", "0"])
