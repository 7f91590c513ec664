"""``tools/benchmark.py --eval``: the retrieval evaluator at COCO size, stage by stage.

On the CPU it runs the registered ``retrieval`` metric (``RetrievalEvaluator``: ITC over
all pairs, then ITM re-ranking of each query's top ``k``, batched over pairs and reusing
the encoded tokens) with the demo model on ``images`` x ``5 * images`` captions. The
images are random tensors at the model's resolution and the captions are the synthetic
world's (real lengths), so the timing is that of the real work; the recalls themselves
are meaningless for an untrained model and are not reported.

At paper size (5,000 images x 25,000 captions, k 256, ViT-B/16 at 384 px and BERT-base
with 6 fusion layers) it counts the FLOPs of each stage with ``FlopCounterMode`` on the
meta device (no memory, no compute) and extrapolates a GPU time from an assumed
achieved rate, which is printed with the result.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List

import torch

__all__ = ["DEMO_MODEL_OVERRIDES", "CaptionedImages", "run_cpu_evaluation", "paper_size_flops",
           "paper_size_estimate",
           "run_eval_benchmark", "format_eval_benchmark"]

# The demo model (projects/albef/configs/demo/pretrain.yaml)
DEMO_MODEL_OVERRIDES = (
    "image_encoder.image_size=64", "image_encoder.patch_size=8", "image_encoder.width=128",
    "image_encoder.depth=4", "image_encoder.num_heads=4", "text_encoder.hidden_size=128",
    "text_encoder.num_hidden_layers=5", "text_encoder.fusion_layer=2",
    "text_encoder.num_attention_heads=4", "text_encoder.intermediate_size=512", "embed_dim=128",
    "queue_size=0",
)
# Official COCO retrieval evaluation: 5k test images, 5 captions each, top 256 re-ranked,
# images at 384 px (fine-tuning resolution), captions padded to the batch maximum (<= 30).
PAPER_EVAL = {"images": 5000, "captions": 25000, "k": 256, "image_size": 384, "text_len": 30}
# Assumed sustained bf16 rate for these batched, mid-sized matmuls on one H200 (about a
# third of its 989 TFLOP/s dense peak). A guess until measured: the GPU time printed is
# FLOPs / this rate.
ASSUMED_H200_BF16_TFLOPS = 300.0


class CaptionedImages(torch.utils.data.Dataset):
    """The evaluator's dataset contract: random images, world captions, 5 per image."""

    def __init__(self, num_images: int, image_size: int, captions_per_image: int = 5,
                 seed: int = 0) -> None:
        from albef_plugin.datasets.synthetic.generate import WorldSpec, make_scene
        from albef_plugin.processors.text import TextProcessor

        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(num_images, 3, image_size, image_size, generator=generator)
        spec = WorldSpec(num_test=num_images)
        self.texts: List[str] = []
        self.img2txt: List[List[int]] = []
        self.txt2img: List[int] = []
        for index in range(num_images):
            captions = make_scene(spec, "test", index).captions
            self.img2txt.append([])
            for j in range(captions_per_image):
                self.img2txt[-1].append(len(self.texts))
                self.txt2img.append(index)
                self.texts.append(captions[j % len(captions)])
        self.text_processor = TextProcessor(max_length=30)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return {"image": self.images[index], "index": index}


def run_cpu_evaluation(num_images: int = 1000, k: int = 128, threads: int = 2) -> Dict[str, Any]:
    """Time ``RetrievalEvaluator.evaluate`` with the demo model on the CPU, per stage."""
    from albef_plugin.metrics.base import EvalContext
    from albef_plugin.metrics.retrieval_eval import RetrievalEvaluator
    from albef_plugin.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model("albef_pretrain", list(DEMO_MODEL_OVERRIDES)).eval()
    dataset = CaptionedImages(num_images, image_size=64)
    evaluator = RetrievalEvaluator(k_test=k)
    start = time.perf_counter()
    evaluator.evaluate(model, dataset, EvalContext(device="cpu", num_workers=0))
    wall = time.perf_counter() - start
    pairs = k * (len(dataset) + len(dataset.texts))
    return {"images": len(dataset), "captions": len(dataset.texts), "k": k, "threads": threads,
            "timings_s": dict(evaluator.timings), "wall_s": wall, "fusion_pairs": pairs,
            "pairs_per_s": pairs / evaluator.timings["itm_rerank_s"]}


def paper_size_flops(text_len: int = PAPER_EVAL["text_len"]) -> Dict[str, float]:
    """FLOPs per image encode, per caption encode and per ITM pair at paper size (meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    from albef_plugin.models import build_model

    with torch.device("meta"):
        model = build_model("albef_pretrain", [
            f"image_encoder.image_size={PAPER_EVAL['image_size']}", "queue_size=0"]).eval()
        image = torch.empty(1, 3, PAPER_EVAL["image_size"], PAPER_EVAL["image_size"])
        ids = torch.zeros(1, text_len, dtype=torch.long)
        mask = torch.ones(1, text_len, dtype=torch.long)

    def flops(fn) -> float:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            fn()
        return float(counter.get_total_flops())

    image_embeds, _ = model.encode_image(image)
    text_embeds, _ = model.encode_text(ids, mask)
    return {"image_encode": flops(lambda: model.encode_image(image)),
            "text_encode": flops(lambda: model.encode_text(ids, mask)),
            "itm_pair": flops(lambda: model.itm_logits(text_embeds, mask, image_embeds))}


def paper_size_estimate(per_item: Dict[str, float]) -> Dict[str, Any]:
    images, captions, k = PAPER_EVAL["images"], PAPER_EVAL["captions"], PAPER_EVAL["k"]
    pairs = k * (images + captions)
    stages = {"encode": images * per_item["image_encode"] + captions * per_item["text_encode"],
              "itm_rerank": pairs * per_item["itm_pair"]}
    rate = ASSUMED_H200_BF16_TFLOPS * 1e12
    return {"per_item_gflop": {name: v / 1e9 for name, v in per_item.items()},
            "fusion_pairs": pairs, "stage_tflop": {n: v / 1e12 for n, v in stages.items()},
            "assumed_tflop_per_s": ASSUMED_H200_BF16_TFLOPS,
            "extrapolated_gpu_s": {n: v / rate for n, v in stages.items()}}


def run_eval_benchmark(num_images: int = 1000, k: int = 128, threads: int = 2) -> Dict[str, Any]:
    from albef_plugin.benchmarks.train_step import machine_load

    return {"cpu": run_cpu_evaluation(num_images, k, threads),
            "paper": paper_size_estimate(paper_size_flops()), **machine_load()}


def format_eval_benchmark(result: Dict[str, Any]) -> str:
    cpu, paper = result["cpu"], result["paper"]
    stages = ", ".join(f"{name.replace('_s', '')} {sec:.1f} s" for name, sec in cpu["timings_s"].items())
    lines = [
        f"retrieval evaluation on the CPU ({cpu['threads']} threads), demo model: "
        f"{cpu['images']} images x {cpu['captions']} captions, k {cpu['k']}: {stages}",
        f"  ITM re-ranking: {cpu['fusion_pairs']:,} fusion passes, {cpu['pairs_per_s']:.0f} / s",
        f"paper size ({PAPER_EVAL['images']} x {PAPER_EVAL['captions']}, k {PAPER_EVAL['k']}, "
        f"{PAPER_EVAL['image_size']} px, {PAPER_EVAL['text_len']} tokens): "
        f"{paper['fusion_pairs']:,} fusion passes",
        "  GFLOP per image encode {image_encode:.1f}, per caption encode {text_encode:.2f}, "
        "per ITM pair {itm_pair:.2f}".format(**paper["per_item_gflop"]),
    ]
    for stage, tflop in paper["stage_tflop"].items():
        lines.append(f"  {stage}: {tflop:,.0f} TFLOP -> {paper['extrapolated_gpu_s'][stage]:.0f} s "
                     f"on one H200 at an assumed {paper['assumed_tflop_per_s']:.0f} TFLOP/s bf16 "
                     f"(extrapolated, not measured)")
    lines.append(f"machine load (1-min average) {result['load_1min']:.2f} on {result['cpu_count']} cores")
    return "\n".join(lines)
