"""The paper retrieval configs: official hyperparameters, and a one-update run of each from
an official-layout pre-training checkpoint on tiny data in the official JSON format."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from PIL import Image

from albef_plugin.config.loader import build_config
from albef_plugin.run import run

from .official_layout import Sizes, official_pretrain_state, to_finetuned_layout

CONFIGS = Path(__file__).resolve().parents[2] / "projects" / "albef" / "configs" / "retrieval"
SIZES = Sizes(vocab=30522)  # the packaged bert-base-uncased tokenizer's vocabulary

# (config, epochs, k_test, train file, updates per epoch at 8 x 32)
PAPER = [("coco", 5, 256, "json_downstream/coco_train.json", 2213),
         ("flickr30k", 10, 128, "json_downstream/flickr30k_train.json", 566)]


@pytest.mark.parametrize("name, epochs, k_test, train_file, updates_per_epoch", PAPER)
def test_paper_configs_resolve_to_the_official_values(monkeypatch, name, epochs, k_test,
                                                      train_file, updates_per_epoch):
    monkeypatch.setenv("ALBEF_DATA_DIR", "/datasets/albef")
    cfg = build_config([f"config={CONFIGS}/{name}.yaml"])
    model = cfg.model_config.albef_retrieval
    data = cfg.dataset_config.albef_retrieval_json
    assert (cfg.model, cfg.datasets, cfg.run_type) == \
        ("albef_retrieval", "albef_retrieval_json", "train_val_test")
    assert model.image_encoder.image_size == 384 and data.image_size == 384
    assert model.checkpoint == "/datasets/albef/weights/ALBEF.pth"
    assert (model.queue_size, model.momentum, model.alpha, model.alpha_ramp_epochs, model.temp) == \
        (65536, 0.995, 0.4, 1.0, 0.07)
    assert (cfg.training.batch_size, cfg.evaluation.batch_size) == (32, 64)
    assert model.queue_size % (cfg.training.batch_size * cfg.launcher.gpus_per_node) == 0
    assert cfg.training.max_epochs == epochs
    assert cfg.training.evaluation_interval == updates_per_epoch
    assert cfg.training.early_stop.criteria == "val/r_mean"
    assert (cfg.optimizer.params.lr, cfg.optimizer.params.weight_decay) == (1e-5, 0.02)
    assert cfg.scheduler.type == "albef_official"
    assert dict(cfg.scheduler.params) == {"epochs": epochs, "min_lr": 1e-6, "warmup_lr": 1e-5,
                                          "warmup_units": 1, "iterations_per_unit": 100}
    (metric,) = cfg.evaluation.metrics
    assert metric.type == "retrieval" and cfg.evaluation.batch_size == 64
    assert (metric.params.k_test, metric.params.itm_plus_itc) == (k_test, False)
    assert list(data.annotations.train) == [train_file]
    text = data.processors.text.params
    assert (text.max_length, text.add_sep) == (30, False)
    assert list(data.processors.train_image.params.scale) == [0.5, 1.0]


def test_zero_shot_flickr_evaluates_the_coco_checkpoint_with_the_flickr_settings(monkeypatch):
    monkeypatch.setenv("ALBEF_DATA_DIR", "/datasets/albef")
    cfg = build_config([f"config={CONFIGS}/flickr30k_zeroshot.yaml"])
    assert cfg.run_type == "test"
    assert cfg.model_config.albef_retrieval.checkpoint == "/datasets/albef/weights/mscoco.pth"
    assert cfg.model_config.albef_retrieval.image_encoder.image_size == 384
    assert cfg.evaluation.metrics[0].params.k_test == 128
    data = cfg.dataset_config.albef_retrieval_json
    assert list(data.annotations.test) == ["json_downstream/flickr30k_test.json"]
    assert list(data.annotations.train) == []


def _flatten(prefix: str, node) -> List[str]:
    if isinstance(node, dict):
        return [item for key, value in node.items() for item in _flatten(f"{prefix}.{key}", value)]
    return [f"{prefix}={node}"]


def _write_tiny_retrieval_data(root: Path, stem: str, num_images: int = 6) -> None:
    """Official re_train / re_eval files with two captions per image, and the images."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "json_downstream").mkdir(exist_ok=True)
    words = ["red", "blue", "square", "circle", "small", "big", "left", "dog", "tree", "car"]
    train, evaluation = [], []
    for i in range(num_images):
        pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i}.jpg")
        captions = [f"a {words[i]} {words[(i + 3) % 10]}", f"the {words[(i + 5) % 10]} thing"]
        train += [{"image": f"{i}.jpg", "caption": c, "image_id": f"img_{i}"} for c in captions]
        evaluation.append({"image": f"{i}.jpg", "caption": captions})
    for split, entries in (("train", train), ("val", evaluation), ("test", evaluation)):
        (root / "json_downstream" / f"{stem}_{split}.json").write_text(json.dumps(entries))


@pytest.mark.parametrize("name, stem, weights, layout", [
    ("coco.yaml", "coco", "ALBEF.pth", "pretrain"),
    ("flickr30k_zeroshot.yaml", "flickr30k", "mscoco.pth", "finetuned")])
def test_paper_config_runs_from_an_official_layout_checkpoint(tmp_path, name, stem, weights, layout):
    data_dir = tmp_path / "data"
    _write_tiny_retrieval_data(data_dir, stem)
    state = official_pretrain_state(SIZES, grid=3)  # trained at 24 px, run at 32 px: resampled
    if layout == "finetuned":
        state = to_finetuned_layout(state)
    (data_dir / "weights").mkdir()
    torch.save({"model": state}, data_dir / "weights" / weights)
    tiny = _flatten("model_config.albef_retrieval", SIZES.model_overrides())
    tiny += ["model_config.albef_retrieval.text_encoder.cls_token_id=101",
             "model_config.albef_retrieval.text_encoder.mask_token_id=103"]
    save_dir = tmp_path / "save"
    trainer = run([f"config={CONFIGS}/{name}", f"env.data_dir={data_dir}",
                   f"env.save_dir={save_dir}", *tiny,
                   "dataset_config.albef_retrieval_json.image_root=images",
                   f"dataset_config.albef_retrieval_json.image_size={SIZES.image_size}",
                   "training.batch_size=4", "training.max_updates=1", "training.num_workers=0",
                   "training.device=cpu", "training.progress_bar=false", "training.tensorboard=false",
                   "training.plot=false", "evaluation.num_workers=0", "evaluation.batch_size=4",
                   "evaluation.metrics=[{type: retrieval, params: {k_test: 4}}]"])
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    tests = [r for r in records if r.get("kind") == "eval" and r.get("split") == "test"]
    assert tests and 0.0 <= tests[-1]["test/albef_retrieval_json/itm_r_mean"] <= 100.0
    trains = [r for r in records if r.get("kind") == "train"]
    if name == "coco.yaml":
        assert [r["update"] for r in trains] == [1]
        assert np.isfinite(trains[0]["total_loss"]) and trains[0]["lr"] == pytest.approx(1e-5)
        assert (save_dir / "current.ckpt").is_file()
    else:  # evaluation only
        assert not trains
    del trainer


def test_demo_config_loads_the_demo_pretraining_checkpoint(tmp_path):
    """demo/retrieval.yaml has the demo pretraining's sizes: its checkpoint loads strictly."""
    from albef_plugin.models import build_model, load_checkpoint

    demo = CONFIGS.parent / "demo"
    pretrain_cfg = build_config([f"config={demo}/pretrain.yaml"]).model_config.albef_pretrain
    retrieval_cfg = build_config([f"config={demo}/retrieval.yaml"]).model_config.albef_retrieval
    assert retrieval_cfg.checkpoint.endswith("demo_pretrain/current.ckpt")
    torch.manual_seed(0)
    pretrain = build_model("albef_pretrain", pretrain_cfg)
    torch.save({"format_version": 1, "model": pretrain.state_dict()}, tmp_path / "current.ckpt")
    retrieval = build_model("albef_retrieval", {**retrieval_cfg, "checkpoint": str(tmp_path / "current.ckpt")})
    torch.testing.assert_close(retrieval.text_encoder.encoder.layer[2].crossattention.self.key.weight,
                               pretrain.text_encoder.bert.encoder.layer[2].crossattention.self.key.weight)
    result = load_checkpoint(retrieval, tmp_path / "current.ckpt", strict=True)
    assert result.missing == [] and result.unexpected == []
