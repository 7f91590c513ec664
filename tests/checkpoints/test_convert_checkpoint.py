"""tools/convert_checkpoint.py: official .pth -> safetensors folder -> identical model."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

from albef_plugin.inference import infer_albef_overrides
from albef_plugin.models import build_model, load_checkpoint
from albef_plugin.models.checkpoints import FORMAT_OWN

from .official_layout import Sizes, official_pretrain_state
from .official_reference import model_outputs, sample_inputs

SIZES = Sizes()
TOOL = Path(__file__).resolve().parents[2] / "tools" / "convert_checkpoint.py"
HEADS = ["--set", f"image_encoder.num_heads={SIZES.vit_heads}",
         "--set", f"text_encoder.num_attention_heads={SIZES.bert_heads}"]


def convert_main():
    spec = importlib.util.spec_from_file_location("convert_checkpoint", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_sizes_are_inferred_from_an_official_state_dict():
    overrides = infer_albef_overrides(official_pretrain_state(SIZES, grid=6))
    assert overrides["image_encoder"]["image_size"] == 48  # 6x6 grid of 8 px patches
    assert overrides["image_encoder"]["width"] == SIZES.width
    assert overrides["image_encoder"]["depth"] == SIZES.depth
    assert overrides["text_encoder"]["fusion_layer"] == SIZES.fusion_layer
    assert overrides["text_encoder"]["num_hidden_layers"] == SIZES.layers
    assert overrides["text_encoder"]["vocab_size"] == SIZES.vocab
    assert (overrides["embed_dim"], overrides["queue_size"]) == (SIZES.embed_dim, SIZES.queue_size)


def test_round_trip_gives_identical_outputs(tmp_path):
    state = official_pretrain_state(SIZES, grid=6)  # an official file at 48 px
    source = tmp_path / "ALBEF.pth"
    torch.save({"model": state, "epoch": 29}, source)
    destination = convert_main()([str(source), str(tmp_path / "converted"), *HEADS])

    config = yaml.safe_load((destination / "config.yaml").read_text())
    assert config["model"] == "albef_pretrain"
    assert config["pretrained_cfg"]["text_form"] == "official"
    assert config["pretrained_cfg"]["image_size"] == 48 and config["pretrained_cfg"]["grid_size"] == 6
    assert config["model_config"]["image_encoder"]["image_size"] == 48
    assert config["model_config"]["checkpoint"] is None
    with safe_open(str(destination / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
        assert handle.metadata()["format"] == FORMAT_OWN
    # tied tensors are stored once
    assert "text_encoder.bert.embeddings.word_embeddings.weight" in keys
    assert "text_encoder.cls.predictions.decoder.weight" not in keys

    reference = build_model("albef_pretrain", {**SIZES.model_overrides(image_size=48)})
    load_checkpoint(reference, source, strict=True)
    rebuilt = build_model("albef_pretrain", config["model_config"])
    result = load_checkpoint(rebuilt, destination, strict=True)
    assert result.missing == [] and result.unexpected == [] and result.format == FORMAT_OWN
    assert result.tolerated["text_encoder.cls.predictions.decoder.weight"].startswith("tied to")
    assert rebuilt.text_encoder.cls.predictions.decoder.weight is \
        rebuilt.text_encoder.bert.embeddings.word_embeddings.weight
    for key, value in reference.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    inputs = sample_inputs(48, SIZES.vocab)
    ours, theirs = model_outputs(rebuilt, *inputs), model_outputs(reference, *inputs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert rebuilt.pretrained_cfg["text_form"] == "official"
