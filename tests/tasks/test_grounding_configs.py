"""The grounding paper config (official hyperparameters; one update from an official-layout
checkpoint on tiny RefCOCO+ files) and the demo config (loads the demo pretraining layout)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from albef_plugin.config.loader import build_config
from albef_plugin.run import run

from checkpoints.official_layout import Sizes, official_pretrain_state
from tasks.test_grounding import _write_refcoco

CONFIGS = Path(__file__).resolve().parents[2] / "projects" / "albef" / "configs"
SIZES = Sizes(vocab=30522)  # the packaged bert-base-uncased tokenizer's vocabulary


def test_paper_config_resolves_to_the_official_values(monkeypatch):
    monkeypatch.setenv("ALBEF_DATA_DIR", "/datasets/albef")
    cfg = build_config([f"config={CONFIGS}/grounding/refcoco_plus.yaml"])
    model, data = cfg.model_config.albef_grounding, cfg.dataset_config.albef_grounding_json
    assert (cfg.model, cfg.datasets, cfg.run_type) == ("albef_grounding", "albef_grounding_json",
                                                       "train_val_test")
    assert model.image_encoder.image_size == 384 and data.image_size == 384
    assert model.checkpoint == "/datasets/albef/weights/ALBEF.pth"
    assert (model.gradcam_mode, model.gradcam_layer) == ("itm", None)  # None: fusion_layer + 2 = 8
    assert (model.queue_size, model.momentum, model.alpha, model.temp) == (65536, 0.995, 0.4, 0.07)
    assert (cfg.training.batch_size, cfg.evaluation.batch_size, cfg.training.max_epochs) == (32, 32, 5)
    assert (cfg.optimizer.params.lr, cfg.optimizer.params.weight_decay) == (1e-5, 0.02)
    assert dict(cfg.scheduler.params) == {"epochs": 5, "min_lr": 1e-6, "warmup_lr": 1e-5,
                                          "warmup_units": 1, "iterations_per_unit": 100}
    assert cfg.training.early_stop.criteria == "val/accuracy"
    assert list(data.processors.train_image.params.scale) == [1.0, 1.0]  # official: no crop
    assert data.refs_file == "refcoco+/refs(unc).p" and data.dets_file == "refcoco+/dets.json"


def _flatten(prefix, node):
    if isinstance(node, dict):
        return [item for key, value in node.items() for item in _flatten(f"{prefix}.{key}", value)]
    return [f"{prefix}={node}"]


def test_paper_config_runs_one_update_from_an_official_layout_checkpoint(tmp_path):
    data_dir = tmp_path / "data"
    root = _write_refcoco(data_dir / "refcoco+")
    (data_dir / "json_downstream").mkdir()
    for split in ("val", "test"):
        (data_dir / "json_downstream" / f"refcoco+_{split}.json").write_text(
            (root / f"refcoco+_{split}.json").read_text())
    train = [{"image": f"{i}.jpg", "text": t} for i in range(3) for t in ("left thing", "right one")]
    (data_dir / "json_downstream" / "refcoco+_train.json").write_text(json.dumps(train))
    (data_dir / "weights").mkdir()
    torch.save({"model": official_pretrain_state(SIZES, grid=3)}, data_dir / "weights" / "ALBEF.pth")
    tiny = _flatten("model_config.albef_grounding", SIZES.model_overrides())
    tiny += ["model_config.albef_grounding.text_encoder.cls_token_id=101",
             "model_config.albef_grounding.text_encoder.mask_token_id=103",
             "model_config.albef_grounding.gradcam_layer=3", "model_config.albef_grounding.itc_block=1"]
    save_dir = tmp_path / "save"
    run([f"config={CONFIGS}/grounding/refcoco_plus.yaml", f"env.data_dir={data_dir}",
         f"env.save_dir={save_dir}", *tiny,
         "dataset_config.albef_grounding_json.image_root=refcoco+/images",
         f"dataset_config.albef_grounding_json.image_size={SIZES.image_size}",
         "training.batch_size=4", "training.max_updates=1", "training.num_workers=0",
         "training.device=cpu", "training.progress_bar=false", "training.tensorboard=false",
         "training.plot=false", "evaluation.num_workers=0", "evaluation.batch_size=4"])
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    trains = [r for r in records if r.get("kind") == "train"]
    assert [r["update"] for r in trains] == [1] and np.isfinite(trains[0]["total_loss"])
    evals = {r["split"]: r for r in records if r.get("kind") == "eval"}
    assert set(evals) >= {"val", "testA", "testB"}
    for split in ("testA", "testB"):
        assert 0.0 <= evals[split][f"{split}/albef_grounding_json/accuracy"] <= 100.0
        assert evals[split][f"{split}/albef_grounding_json/num_refs"] == 2.0


def test_demo_config_loads_the_demo_pretraining_checkpoint(tmp_path):
    from albef_plugin.models import build_model, load_checkpoint

    pretrain_cfg = build_config([f"config={CONFIGS}/demo/pretrain.yaml"]).model_config.albef_pretrain
    grounding_cfg = build_config([f"config={CONFIGS}/demo/grounding.yaml"]).model_config.albef_grounding
    torch.manual_seed(0)
    pretrain = build_model("albef_pretrain", pretrain_cfg)
    torch.save({"format_version": 1, "model": pretrain.state_dict()}, tmp_path / "current.ckpt")
    model = build_model("albef_grounding", {**grounding_cfg, "checkpoint": str(tmp_path / "current.ckpt")})
    result = load_checkpoint(model, tmp_path / "current.ckpt", strict=True)
    assert result.missing == [] and result.unexpected == []
    assert model.gradcam_layer == 3
