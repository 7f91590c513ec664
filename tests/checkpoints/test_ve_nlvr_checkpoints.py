"""Checkpoints into ``albef_ve`` / ``albef_nlvr`` / ``albef_nlvr_ta``: pre-training files, the TA
file, the official code's own task ``state_dict()`` layouts, and another task's file refused."""
from __future__ import annotations

import pytest
import torch

from albef_plugin.models import build_model, load_checkpoint
from albef_plugin.models.checkpoints import CheckpointError

from .official_layout import Sizes, official_pretrain_state, to_finetuned_layout
from .official_task_layout import official_nlvr_state, official_ta_state, official_ve_state

SIZES = Sizes()
F = SIZES.fusion_layer


def tiny(name: str, **extra) -> torch.nn.Module:
    overrides = SIZES.model_overrides()
    overrides.pop("queue_size")
    if name != "albef_nlvr_ta":
        overrides.pop("embed_dim")
    overrides.update(extra)
    torch.manual_seed(7)
    return build_model(name, overrides)


def only_position_ids(result) -> bool:
    return all(k.endswith("position_ids") for k in result.tolerated)


@pytest.mark.parametrize("name, make", [("albef_ve", official_ve_state),
                                        ("albef_nlvr", official_nlvr_state),
                                        ("albef_nlvr_ta", official_ta_state)])
def test_the_official_task_layouts_load_key_for_key(tmp_path, name, make):
    state = make(SIZES)
    path = tmp_path / f"{name}.pth"
    torch.save({"model": state, "epoch": 3}, path)
    model = tiny(name)
    result = load_checkpoint(model, path, strict=True)
    assert result.missing == [] and result.unexpected == []
    own = model.state_dict()
    for key, value in state.items():
        if key in own:
            assert torch.equal(own[key], value), key
    if name == "albef_nlvr_ta":  # the official TA model's unused text_proj / temp
        assert {"text_proj.weight", "text_proj.bias", "temp"} <= set(result.tolerated)
    else:
        assert only_position_ids(result), result.tolerated


def test_ve_from_a_pretraining_checkpoint_strips_bert_and_starts_a_fresh_head():
    state = official_pretrain_state(SIZES)
    model = tiny("albef_ve")
    head = model.cls_head[2].weight.clone()
    result = load_checkpoint(model, state, strict=True)
    assert result.missing == [] and result.unexpected == []
    for key in ("cls_head.0.weight", "cls_head_m.2.bias", "itm_head.weight", "temp", "image_queue",
                "text_encoder.cls.predictions.bias", "vision_proj_m.weight"):
        assert key in result.tolerated, key
    assert torch.equal(model.cls_head[2].weight, head)
    torch.testing.assert_close(model.text_encoder.encoder.layer[3].crossattention.self.key.weight,
                               state["text_encoder.bert.encoder.layer.3.crossattention.self.key.weight"])
    # the pre-training momentum encoders load into the momentum model (official VE.py)
    torch.testing.assert_close(model.visual_encoder_m.blocks[1].attn.qkv.weight,
                               state["visual_encoder_m.blocks.1.attn.qkv.weight"])


@pytest.mark.parametrize("name", ["albef_nlvr", "albef_nlvr_ta"])
def test_nlvr_from_a_pretraining_checkpoint_duplicates_each_fusion_layer_into_its_pair(name):
    state = official_pretrain_state(SIZES)
    model = tiny(name)
    result = load_checkpoint(model, state, strict=True)
    assert result.missing == [] and result.unexpected == []
    layers = model.text_encoder.encoder.layer
    for i in range(SIZES.layers - F):
        source = f"text_encoder.bert.encoder.layer.{F + i}."
        for target in (F + 2 * i, F + 2 * i + 1):
            for part in ("attention.self.query", "crossattention.self.query",
                         "crossattention.self.key", "crossattention.self.value", "output.dense"):
                module = layers[target].get_submodule(part)
                torch.testing.assert_close(module.weight, state[source + part + ".weight"])
    for i in range(F):  # text layers keep their index
        torch.testing.assert_close(layers[i].attention.self.query.weight,
                                   state[f"text_encoder.bert.encoder.layer.{i}.attention.self.query.weight"])
    if name == "albef_nlvr_ta":  # vision_proj picks the negatives: it comes from the file
        torch.testing.assert_close(model.vision_proj.weight, state["vision_proj.weight"])
        assert "ta_head.weight" in result.tolerated and "text_proj.weight" in result.tolerated
    else:
        torch.testing.assert_close(model.text_encoder_m.encoder.layer[F + 1].intermediate.dense.weight,
                                   state[f"text_encoder_m.bert.encoder.layer.{F}.intermediate.dense.weight"])


def test_nlvr_from_the_ta_checkpoint_starts_the_momentum_model_from_the_loaded_weights(tmp_path):
    state = official_ta_state(SIZES)
    path = tmp_path / "pretrain_model_nlvr.pth"
    torch.save({"model": state}, path)
    fixed = tiny("albef_nlvr")
    result = load_checkpoint(fixed, path, strict=True)
    assert result.missing == [] and result.unexpected == []
    assert {"ta_head.weight", "vision_proj.weight", "text_proj.bias", "temp", "cls_head.0.weight",
            "cls_head_m.0.weight", "visual_encoder_m.pos_embed"} <= set(result.tolerated)
    for online, momentum in (("visual_encoder", "visual_encoder_m"), ("text_encoder", "text_encoder_m")):
        for (name, p), (_, p_m) in zip(getattr(fixed, online).named_parameters(),
                                       getattr(fixed, momentum).named_parameters()):
            assert torch.equal(p, p_m), f"{momentum}.{name}"
    torch.testing.assert_close(fixed.text_encoder_m.encoder.layer[0].attention.self.query.weight,
                               state["text_encoder.encoder.layer.0.attention.self.query.weight"])

    # official_momentum_init: the official NLVR.py order (copy_params, then the load): the
    # momentum model keeps the construction-time weights, not the TA checkpoint's
    official = tiny("albef_nlvr", official_momentum_init=True)
    before = official.visual_encoder_m.blocks[0].attn.qkv.weight.clone()
    result = load_checkpoint(official, path, strict=True)
    assert "official order" in result.tolerated["visual_encoder_m.pos_embed"]
    assert torch.equal(official.visual_encoder_m.blocks[0].attn.qkv.weight, before)
    assert not torch.equal(official.visual_encoder_m.blocks[0].attn.qkv.weight,
                           official.visual_encoder.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("name, state_fn", [
    ("albef_nlvr", lambda: to_finetuned_layout(official_pretrain_state(SIZES))),  # retrieval into NLVR2
    ("albef_ve", lambda: to_finetuned_layout(official_pretrain_state(SIZES))),  # retrieval into VE
])
def test_a_checkpoint_of_another_task_is_listed_and_refused_when_strict(name, state_fn):
    state = state_fn()
    result = load_checkpoint(tiny(name), state, strict=False)
    assert result.missing or result.unexpected
    with pytest.raises(CheckpointError, match="does not match the model") as error:
        load_checkpoint(tiny(name), state, strict=True)
    listed = result.missing[:1] + result.unexpected[:1]
    assert all(key.rsplit(".", 2)[0] in str(error.value) for key in listed)


def test_a_head_of_another_shape_is_refused_even_when_not_strict():
    # NLVR2's 2-way cls_head into VE's 3-way one
    with pytest.raises(CheckpointError, match=r"another shape(.|\n)*cls_head\.2\.weight"):
        load_checkpoint(tiny("albef_ve"), official_nlvr_state(SIZES), strict=False)


def test_ve_checkpoint_at_another_resolution_is_resampled_online_and_momentum():
    state = official_pretrain_state(SIZES)          # 32 px: 4x4 grid
    model = tiny("albef_ve", image_encoder={**SIZES.model_overrides()["image_encoder"],
                                            "image_size": 48})
    result = load_checkpoint(model, state, strict=True)
    assert sorted(result.resampled) == ["visual_encoder.pos_embed", "visual_encoder_m.pos_embed"]
