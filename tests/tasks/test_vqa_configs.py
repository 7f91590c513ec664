"""The paper VQA config (official hyperparameters; one update from an official-layout
pre-training checkpoint on tiny official-format data) and the demo config's checkpoint."""
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
from checkpoints.official_layout import official_pretrain_state

from .vqa_reference import VQA_SIZES

CONFIGS = Path(__file__).resolve().parents[2] / "projects" / "albef" / "configs"
SIZES = VQA_SIZES.__class__(**{**VQA_SIZES.__dict__, "vocab": 30522})  # the packaged tokenizer


def test_paper_config_resolves_to_the_official_values(monkeypatch):
    monkeypatch.setenv("ALBEF_DATA_DIR", "/datasets/albef")
    cfg = build_config([f"config={CONFIGS}/vqa/vqa.yaml"])
    model, data = cfg.model_config.albef_vqa, cfg.dataset_config.albef_vqa_json
    assert (cfg.model, cfg.datasets, cfg.run_type) == ("albef_vqa", "albef_vqa_json", "train_test")
    assert model.image_encoder.image_size == 384 and data.image_size == 384
    assert model.checkpoint == "/datasets/albef/weights/ALBEF.pth"
    assert (model.momentum, model.alpha, model.alpha_ramp_epochs, model.distill) == (0.995, 0.4, 1.0, True)
    assert model.score_first_token_twice is True
    assert (model.text_encoder.num_hidden_layers, model.text_encoder.fusion_layer) == (12, 6)
    assert (cfg.training.batch_size, cfg.evaluation.batch_size, cfg.training.max_epochs) == (32, 16, 8)
    assert cfg.training.batch_size * cfg.launcher.gpus_per_node == 256
    assert (cfg.optimizer.params.lr, cfg.optimizer.params.weight_decay) == (2e-5, 0.02)
    assert cfg.scheduler.type == "albef_official"
    assert dict(cfg.scheduler.params) == {"epochs": 8, "min_lr": 1e-6, "warmup_lr": 1e-5,
                                          "warmup_units": 4, "iterations_per_unit": 100}
    assert [(m.type, m.params.k_test) for m in cfg.evaluation.metrics] == [("vqa", 128)]
    assert list(data.annotations.train) == ["json_downstream/vqa_train.json",
                                            "json_downstream/vqa_val.json",
                                            "json_downstream/vg_qa.json"]
    assert list(data.annotations.val) == [] and list(data.annotations.test) == ["json_downstream/vqa_test.json"]
    assert (data.max_question_words.train, data.max_question_words.test) == (30, 50)
    assert data.processors.answer.params.add_sep is True
    assert data.processors.text.params.add_sep is False
    assert list(data.processors.train_image.params.scale) == [0.5, 1.0]


def _flatten(prefix: str, node) -> List[str]:
    if isinstance(node, dict):
        return [item for key, value in node.items() for item in _flatten(f"{prefix}.{key}", value)]
    return [f"{prefix}={node}"]


def _write_tiny_vqa_data(root: Path) -> None:
    rng = np.random.default_rng(0)
    for folder in ("images/coco/train2014", "images/visual_genome", "json_downstream"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(4):
        pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images/coco/train2014" / f"{i}.jpg")
        Image.fromarray(pixels).save(root / "images/visual_genome" / f"{i}.jpg")
    train = [{"question": f"What is in picture {i}?", "answer": ["cat"] * 6 + ["dog"] * 4,
              "image": f"train2014/{i}.jpg", "dataset": "vqa"} for i in range(4)]
    vg = [{"question": "What colour?", "answer": "red", "image": f"{i}.jpg", "dataset": "vg"}
          for i in range(2)]
    test = [{"question_id": 100 + i, "question": "What is it?", "image": f"train2014/{i}.jpg",
             "dataset": "vqa"} for i in range(3)]
    files = {"vqa_train.json": train, "vqa_val.json": train[:2], "vg_qa.json": vg,
             "vqa_test.json": test, "answer_list.json": ["cat", "dog", "red", "two"]}
    for name, data in files.items():
        (root / "json_downstream" / name).write_text(json.dumps(data))


def test_paper_config_runs_one_update_from_an_official_pretraining_checkpoint(tmp_path):
    data_dir, save_dir = tmp_path / "data", tmp_path / "save"
    _write_tiny_vqa_data(data_dir)
    (data_dir / "weights").mkdir()
    # trained at 24 px, run at 32 px: the position embeddings are resampled
    torch.save({"model": official_pretrain_state(SIZES, grid=3)}, data_dir / "weights" / "ALBEF.pth")
    overrides = SIZES.model_overrides()
    overrides.pop("queue_size")
    overrides["text_encoder"].update(cls_token_id=101, mask_token_id=103)
    trainer = run([f"config={CONFIGS}/vqa/vqa.yaml", f"env.data_dir={data_dir}",
                   f"env.save_dir={save_dir}", *_flatten("model_config.albef_vqa", overrides),
                   f"dataset_config.albef_vqa_json.image_size={SIZES.image_size}",
                   "training.batch_size=4", "training.max_updates=1", "training.num_workers=0",
                   "training.device=cpu", "training.progress_bar=false", "training.tensorboard=false",
                   "training.plot=false", "evaluation.num_workers=0", "evaluation.batch_size=2",
                   "evaluation.metrics=[{type: vqa, params: {k_test: 3}}]"])
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    trains = [r for r in records if r.get("kind") == "train"]
    assert [r["update"] for r in trains] == [1] and np.isfinite(trains[0]["total_loss"])
    assert trains[0]["lr"] == pytest.approx(1e-5)  # the first step of the warm-up staircase
    tests = [r for r in records if r.get("kind") == "eval" and r.get("split") == "test"]
    assert tests[-1]["test/albef_vqa_json/num_questions"] == 3
    results = json.loads((save_dir / "test_albef_vqa_json_vqa_result.json").read_text())
    assert [r["question_id"] for r in results] == [100, 101, 102]
    assert all(r["answer"] in ("cat", "dog", "red", "two") for r in results)
    del trainer


def test_demo_config_loads_the_demo_pretraining_checkpoint(tmp_path):
    from albef_plugin.models import build_model, load_checkpoint

    pretrain_cfg = build_config([f"config={CONFIGS}/demo/pretrain.yaml"]).model_config.albef_pretrain
    vqa_cfg = build_config([f"config={CONFIGS}/demo/vqa.yaml"]).model_config.albef_vqa
    assert vqa_cfg.checkpoint.endswith("demo_pretrain/current.ckpt")
    torch.manual_seed(0)
    pretrain = build_model("albef_pretrain", pretrain_cfg)
    torch.save({"format_version": 1, "model": pretrain.state_dict()}, tmp_path / "current.ckpt")
    vqa = build_model("albef_vqa", {**vqa_cfg, "checkpoint": str(tmp_path / "current.ckpt")})
    torch.testing.assert_close(vqa.text_decoder.bert.encoder.layer[1].crossattention.self.key.weight,
                               pretrain.text_encoder.bert.encoder.layer[3].crossattention.self.key.weight)
    result = load_checkpoint(vqa, tmp_path / "current.ckpt", strict=True)
    assert result.missing == [] and result.unexpected == []
