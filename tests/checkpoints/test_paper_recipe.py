"""The paper-size pre-training configs and the official learning-rate schedule.

(These exercise ``trainers/schedulers.py`` and ``projects/albef/configs/pretrain``; they live
here with the other paper-fidelity checks.)
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from albef_plugin.config.loader import build_config
from albef_plugin.registry import registry
from albef_plugin.trainers.schedulers import ALBEFOfficialSchedule, build_lr_scheduler

CONFIGS = Path(__file__).resolve().parents[2] / "projects" / "albef" / "configs" / "pretrain"
ITERATIONS_PER_EPOCH = 10_000  # about a 4M epoch at a global batch of 512


def official_schedule(**params):
    params = {"epochs": 30, "min_lr": 1e-5, "warmup_lr": 1e-5, "warmup_units": 20,
              "iterations_per_unit": 100, **params}
    return ALBEFOfficialSchedule.from_config(params, lr=1e-4, max_updates=30 * ITERATIONS_PER_EPOCH,
                                             updates_per_epoch=ITERATIONS_PER_EPOCH)


# Expected values by hand from the official Pretrain.yaml (and timm's CosineLRScheduler with
# warmup_prefix=True): unit k of the warm-up gives 1e-5 + k * (1e-4 - 1e-5) / 20 = 1e-5 + k * 4.5e-6;
# step(k) runs after the update of iteration 100 k, so iteration i uses unit (i - 1) // 100.
@pytest.mark.parametrize("update, expected", [
    (0, 1e-5),                      # initial lr = warmup_lr
    (1, 1e-5),
    (100, 1e-5),                    # step(1) comes after this update
    (101, 1.45e-5),                 # unit 1
    (1000, 1e-5 + 9 * 4.5e-6),      # unit 9 = 5.05e-5
    (1001, 5.5e-5),                 # unit 10: halfway
    (2000, 1e-5 + 19 * 4.5e-6),     # unit 19 = 9.55e-5
    (2001, 1e-4),                   # step(20): t - warmup = 0, cos(0) = 1 -> lr
    (9_999, 1e-4),                  # rest of epoch 0
    (10_000, 1e-5 + 0.5 * 9e-5 * (1 + math.cos(math.pi * 1 / 30))),   # epoch 1
    (15_000, 1e-5 + 0.5 * 9e-5 * (1 + math.cos(math.pi * 1 / 30))),
    (150_000, 1e-5 + 0.5 * 9e-5),   # epoch 15: cos(pi / 2) = 0 -> 5.5e-5
    (290_000, 1e-5 + 0.5 * 9e-5 * (1 + math.cos(math.pi * 29 / 30))),  # last epoch
    (300_000, 1e-5),                # beyond 30 epochs: min_lr (cycle_limit 1)
])
def test_official_curve(update, expected):
    assert official_schedule()(update) == pytest.approx(expected, rel=1e-9, abs=0)


def test_registered_and_short_first_epoch_cuts_the_staircase():
    assert registry.get_scheduler_class("albef_official") is ALBEFOfficialSchedule
    assert registry.get_scheduler_class("timm_cosine_epoch_warmup") is ALBEFOfficialSchedule
    short = ALBEFOfficialSchedule(lr=1e-4, updates_per_epoch=500)
    assert short(499) == pytest.approx(1e-5 + 4 * 4.5e-6)   # still warming up at the epoch end
    assert short(500) == pytest.approx(1e-5 + 0.5 * 9e-5 * (1 + math.cos(math.pi / 30)))
    paper = official_schedule(warmup_units=10)               # the paper's 1000 iterations
    assert paper(1001) == pytest.approx(1e-4)


def test_trainer_builds_it_and_sets_the_optimizer_lr():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([{"params": [param], "lr_scale": 1.0}], lr=1e-4)
    config = type("Cfg", (), {"type": "albef_official", "params": {"epochs": 30}})()
    scheduler = build_lr_scheduler(optimizer, config, lr=1e-4, max_updates=30 * 200,
                                   updates_per_epoch=200)
    scheduler.step(400)  # epoch 2
    assert optimizer.param_groups[0]["lr"] == pytest.approx(
        1e-5 + 0.5 * 9e-5 * (1 + math.cos(math.pi * 2 / 30)))
    with pytest.raises(KeyError, match="warmup_unit"):
        ALBEFOfficialSchedule.from_config({"warmup_unit": 3}, lr=1e-4, max_updates=1,
                                          updates_per_epoch=1)


@pytest.mark.parametrize("name, extra", [("albef_4m", []), ("albef_14m", ["json_pretrain/cc12m.json"])])
def test_paper_configs_resolve_to_the_paper_values(monkeypatch, name, extra):
    monkeypatch.setenv("ALBEF_DATA_DIR", "/datasets/albef")
    cfg = build_config([f"config={CONFIGS}/{name}.yaml"])
    model = cfg.model_config.albef_pretrain
    data = cfg.dataset_config.albef_pretrain_json
    assert (cfg.model, cfg.datasets) == ("albef_pretrain", "albef_pretrain_json")
    assert model.image_encoder.image_size == 256 and data.image_size == 256
    assert (model.image_encoder.width, model.image_encoder.depth) == (768, 12)
    assert (model.text_encoder.num_hidden_layers, model.text_encoder.fusion_layer) == (12, 6)
    assert (model.queue_size, model.momentum, model.alpha, model.alpha_ramp_epochs) == \
        (65536, 0.995, 0.4, 1.0)
    assert (model.mlm_probability, model.temp, model.embed_dim) == (0.15, 0.07, 256)
    assert model.image_encoder.pretrained == \
        "/datasets/albef/weights/deit_base_patch16_224-b5f2ef4d.pth"
    assert model.text_encoder.pretrained == "/datasets/albef/weights/bert-base-uncased"
    assert cfg.training.batch_size * cfg.launcher.gpus_per_node == 512
    assert cfg.training.max_epochs == 30
    assert model.queue_size % (cfg.training.batch_size * cfg.launcher.gpus_per_node) == 0
    assert cfg.optimizer.type == "adam_w"
    assert (cfg.optimizer.params.lr, cfg.optimizer.params.weight_decay) == (1e-4, 0.02)
    assert cfg.scheduler.type == "albef_official"
    assert dict(cfg.scheduler.params) == {"epochs": 30, "min_lr": 1e-5, "warmup_lr": 1e-5,
                                          "warmup_units": 20, "iterations_per_unit": 100}
    assert data.data_dir == "/datasets/albef"
    files = ["json_pretrain/coco.json", "json_pretrain/vg.json", "json_pretrain/cc3m_train.json",
             "json_pretrain/cc3m_val.json", "json_pretrain/sbu.json", *extra]
    assert sorted(data.annotations.train) == sorted(files)
    text = data.processors.text.params
    assert (text.max_length, text.add_sep) == (25, False)
    assert list(data.processors.train_image.params.scale) == [0.2, 1.0]


def test_paper_config_needs_the_data_dir(monkeypatch):
    monkeypatch.delenv("ALBEF_DATA_DIR", raising=False)
    with pytest.raises(Exception, match="ALBEF_DATA_DIR"):
        build_config([f"config={CONFIGS}/albef_4m.yaml"])
