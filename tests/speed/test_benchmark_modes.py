"""The measurement modes of tools/benchmark.py, run at toy sizes: each produces the figures
it promises (and the profiler accounts for the whole step)."""
import pytest
import torch

from albef_plugin.benchmarks import data_loading, evaluation, memory, official_cpu, profiling

# Shrinks the official-cpu preset (applied after its sizes) so a step takes milliseconds.
SMALL = ["image_encoder.image_size=32", "image_encoder.width=32", "text_encoder.hidden_size=32",
         "text_encoder.intermediate_size=64", "text_encoder.vocab_size=512",
         "text_encoder.cls_token_id=1", "text_encoder.mask_token_id=2", "queue_size=64",
         "embed_dim=16"]


def test_official_cpu_preset_sizes_are_the_issue_ones():
    cfg = dict(item.split("=") for item in official_cpu.MODEL_OVERRIDES)
    assert cfg["image_encoder.width"] == "128" and cfg["image_encoder.depth"] == "2"
    assert cfg["text_encoder.num_hidden_layers"] == "4" and cfg["text_encoder.fusion_layer"] == "2"
    assert cfg["text_encoder.vocab_size"] == "30522" and cfg["queue_size"] == "65536"
    assert official_cpu.OFFICIAL_STEP_S == {8: 0.449, 32: 1.296}


def test_official_cpu_rounds_and_table():
    result = official_cpu.run_official_cpu(rounds=2, steps=2, warmup=1, batch_sizes=(4,),
                                           threads=1, overrides=SMALL)
    row = result["rows"][0]
    assert len(row["round_step_s"]) == 2 and row["step_s"] > 0 and row["cpu_s_per_step"] > 0
    assert row["official_step_s"] is None  # no official figure at batch 4
    assert len(result["loads"]) == 2 and "load_1min" in result["loads"][0]
    table = official_cpu.format_official_cpu(
        {**result, "rows": [{**row, "batch_size": 8, "official_step_s": 0.449,
                             "speedup_vs_official": 0.449 / row["step_s"], "target_step_s": 0.22}]})
    assert "| 8 | 0.449 s |" in table and "machine load" in table


def test_profile_breakdown_covers_the_step():
    torch.set_num_threads(1)
    case = official_cpu.build_case(4, overrides=SMALL)
    result = profiling.profile_step(case["step"], case["batch"], steps=2, warmup=1)
    shares = {name: row["share"] for name, row in result["categories"].items()}
    for name in ("attention", "vocabulary projection", "queue similarities", "momentum update",
                 "optimizer", "Python overhead"):
        assert name in shares, name
    # backward ops are charged to their forward's category
    assert result["categories"]["attention"]["backward_ms"] > 0
    assert result["categories"]["momentum update"]["backward_ms"] == 0
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-6)
    assert all(share >= 0 for name, share in shares.items() if name != "Python overhead")
    assert "aten::" in result["operators"]


def test_profile_categories_follow_the_frames():
    assert profiling.categorize(["torch/optim/adamw.py(200): step"]) == "optimizer"
    assert profiling.categorize(["nn.Module: BertAttention_3", "x.py(1): forward"]) == "attention"
    assert profiling.categorize(["a/momentum.py(60): momentum_update",
                                 "nn.Module: BertAttention_0"]) == "momentum update"
    assert profiling.categorize(["x.py(1): forward"]) == profiling.OTHER


def test_data_benchmark_measures_both_backends(tmp_path):
    paths = data_loading.write_world_jpegs(tmp_path, 3, size=64)
    for backend in ("pil", "tensor"):
        row = data_loading.per_core_throughput(paths, backend, samples=3, image_size=32)
        assert row["img_per_s_per_core"] > 0
    assert set(row.keys()) >= {"backend", "ms_per_image"}
    assert set(row["stages_ms"]) == {"decode (torchvision.io)", "crop, flip, RandAugment, normalise"}
    pil = data_loading.per_core_throughput(paths, "pil", samples=2, image_size=32)
    assert set(pil["stages_ms"]) == {"decode", "random resized crop", "RandAugment",
                                     "to tensor + normalise"}
    loader = data_loading.loader_throughput(paths, "tensor", workers=0, batches=1, batch_size=2,
                                            image_size=32)
    assert loader["img_per_s"] > 0


def test_eval_benchmark_times_each_stage_and_counts_paper_flops():
    result = evaluation.run_cpu_evaluation(num_images=6, k=3, threads=1)
    assert result["captions"] == 30 and result["fusion_pairs"] == 3 * 36
    assert set(result["timings_s"]) >= {"encode_s", "itm_rerank_s", "recall_s"}
    per_item = evaluation.paper_size_flops(text_len=8)
    # ViT-B/16 at 384 px: ~2 * 86M params * 577 tokens ~ 100 GFLOP, plus attention
    assert 90e9 < per_item["image_encode"] < 140e9
    assert per_item["itm_pair"] > per_item["text_encode"] > 0
    estimate = evaluation.paper_size_estimate(per_item)
    assert estimate["fusion_pairs"] == 256 * 30000
    assert estimate["extrapolated_gpu_s"]["itm_rerank"] > 0


def test_memory_benchmark_samples_rss():
    result = memory.run_memory_benchmark(updates=20, samples=4)
    assert result["early_update"] == 2 and result["trace"][-1]["update"] == 20
    assert result["rss_final_mib"] > 0 and isinstance(result["within_limit"], bool)


@pytest.mark.slow
def test_rss_does_not_grow_over_2000_updates():
    """The issue's bound: RSS after 2,000 updates of the tiny model within 5% of RSS at 200."""
    result = memory.run_memory_benchmark(updates=2000, samples=10)
    assert result["growth"] <= memory.GROWTH_LIMIT, memory.format_memory_benchmark(result)
