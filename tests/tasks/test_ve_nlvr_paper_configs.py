"""The paper configs of SNLI-VE, NLVR2 and the NLVR2 text-assignment pre-training: official
hyperparameters, and each builds (at a reduced size), loads an official-layout checkpoint made
in the test from official key names, and runs one training step on tiny inputs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from albef_plugin.config.loader import build_config
from albef_plugin.models import build_model

from tests.checkpoints.official_layout import Sizes, official_pretrain_state
from tests.checkpoints.official_task_layout import official_ta_state

CONFIGS = Path(__file__).resolve().parents[2] / "projects" / "albef" / "configs"
SIZES = Sizes()

# config -> (model, dataset, checkpoint layout the paper run starts from, official values)
PAPER = {
    "snli_ve/ve.yaml": ("albef_ve", "albef_ve_json", official_pretrain_state,
                        dict(batch=32, lr=2e-5, min_lr=1e-6, epochs=5, image=384, alpha=0.4, ramp=0.0)),
    "nlvr2/nlvr2.yaml": ("albef_nlvr", "albef_nlvr2_json", official_ta_state,
                         dict(batch=16, lr=2e-5, min_lr=1e-6, epochs=10, image=384, alpha=0.4, ramp=1.0)),
    "nlvr2/nlvr2_ta.yaml": ("albef_nlvr_ta", "albef_pretrain_json", official_pretrain_state,
                            dict(batch=64, lr=2e-5, min_lr=1e-5, epochs=1, image=256)),
}


def _batch(model_name: str, image_size: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, SIZES.vocab, (4, 6), generator=gen)
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    image = torch.randn(4, 3, image_size, image_size, generator=gen)
    batch = {"input_ids": ids, "attention_mask": mask}
    if model_name == "albef_nlvr":
        return {**batch, "image0": image, "image1": image.flip(0), "label": torch.tensor([0, 1, 1, 0])}
    if model_name == "albef_ve":
        return {**batch, "image": image, "label": torch.tensor([0, 1, 2, 1])}
    return {**batch, "image": image}


@pytest.mark.parametrize("config", sorted(PAPER))
def test_paper_config_has_the_official_values_builds_loads_and_trains_a_step(
        monkeypatch, tmp_path, config):
    model_name, dataset, make_state, official = PAPER[config]
    monkeypatch.setenv("ALBEF_DATA_DIR", str(tmp_path))
    cfg = build_config([f"config={CONFIGS / config}"])
    assert cfg.model == model_name and cfg.datasets == dataset
    assert cfg.training.batch_size == official["batch"]
    assert cfg.optimizer.params.lr == pytest.approx(official["lr"])
    assert cfg.optimizer.params.weight_decay == pytest.approx(0.02)
    sched = cfg.scheduler
    assert sched.type == "albef_official" and sched.params.epochs == official["epochs"]
    assert sched.params.min_lr == pytest.approx(official["min_lr"])
    assert sched.params.warmup_lr == pytest.approx(1e-5) and sched.params.warmup_units == 1
    assert cfg.training.max_epochs == official["epochs"]
    model_cfg = cfg.model_config[model_name]
    assert model_cfg.image_encoder.image_size == official["image"]
    assert model_cfg.text_encoder.fusion_layer == 6 and model_cfg.text_encoder.num_hidden_layers == 12
    if "alpha" in official:
        assert model_cfg.alpha == pytest.approx(official["alpha"]) and model_cfg.distill
        assert model_cfg.alpha_ramp_epochs == pytest.approx(official["ramp"])
        assert model_cfg.momentum == pytest.approx(0.995)
    assert str(model_cfg.checkpoint).startswith(str(tmp_path / "weights"))

    # the official-layout checkpoint the run starts from, at a tiny size (trained at 32 px)
    checkpoint = tmp_path / "start.pth"
    torch.save({"model": make_state(SIZES)}, checkpoint)
    overrides = OmegaConf.to_container(model_cfg, resolve=True)
    sizes = SIZES.model_overrides(image_size=48)  # 48 px: the 4x4 position grid is resampled
    overrides["image_encoder"].update(sizes["image_encoder"])
    overrides["text_encoder"].update(sizes["text_encoder"])
    if "embed_dim" in overrides:
        overrides["embed_dim"] = SIZES.embed_dim
    overrides["checkpoint"] = str(checkpoint)  # loaded with strict=True by the constructor
    model = build_model(model_name, overrides).train()
    assert model.pretrained_cfg["checkpoint_image_size"] == SIZES.image_size

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    out = model(_batch(model_name, 48))
    loss = sum(out["losses"].values())
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(changed) > len(before) // 2
