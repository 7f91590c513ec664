"""The demo's text-assignment step (``projects/albef/configs/demo/nlvr2_ta.yaml``) trains through
the trainer on the synthetic pre-training captions, and NLVR2 fine-tuning loads what it writes.

A tiny world and model (seconds): this checks the chain, not what it learns (the NLVR2 learning
test and docs/ve_nlvr2.md have the figures).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "projects" / "albef" / "configs" / "demo"
SIZES = {"image_encoder.width": 32, "image_encoder.depth": 1, "image_encoder.num_heads": 2,
         "text_encoder.hidden_size": 32, "text_encoder.num_hidden_layers": 3,
         "text_encoder.fusion_layer": 1, "text_encoder.num_attention_heads": 2,
         "text_encoder.intermediate_size": 64}


def test_demo_text_assignment_trains_and_nlvr2_loads_its_checkpoint(tmp_path):
    from albef_plugin.models import build_model, load_checkpoint
    from albef_plugin.run import run

    world = {"num_train": 8, "num_val": 2, "num_test": 2, "image_size": 48}
    save_dir = tmp_path / "ta"
    run([f"config={DEMO / 'nlvr2_ta.yaml'}", f"env.save_dir={save_dir}", f"env.data_dir={tmp_path / 'data'}",
         *[f"dataset_config.demo_pretrain.synthetic.{k}={v}" for k, v in world.items()],
         *[f"model_config.albef_nlvr_ta.{k}={v}" for k, v in SIZES.items()],
         "model_config.albef_nlvr_ta.embed_dim=16", "model_config.albef_nlvr_ta.checkpoint=null",
         "training.batch_size=4", "training.max_updates=2", "training.log_interval=1",
         "training.num_workers=0", "training.progress_bar=false", "training.tensorboard=false",
         "training.plot=false"])
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/ta"] for r in records if "train/ta" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), records

    nlvr = build_model("albef_nlvr", [f"{k}={v}" for k, v in SIZES.items()] + [
        "image_encoder.image_size=64", "image_encoder.patch_size=8",  # the demo config's
        "checkpoint=null"])
    result = load_checkpoint(nlvr, save_dir / "current.ckpt", strict=True)
    assert not result.missing and not result.unexpected
    assert any(key.startswith("cls_head.") for key in result.tolerated), result.tolerated

