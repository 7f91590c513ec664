"""Official ALBEF checkpoints into ``albef_pretrain``: key mapping, parity, resampling, queues."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from albef_plugin.models import LoadResult, build_model, load_checkpoint
from albef_plugin.models.checkpoints import (FORMAT_OFFICIAL_FINETUNED, FORMAT_OFFICIAL_PRETRAIN,
                                             CheckpointError, detect_format)

from .official_layout import Sizes, official_pretrain_state, to_finetuned_layout
from .official_reference import model_outputs, official_outputs, sample_inputs

SIZES = Sizes()


def tiny_model(image_size: int = None, **extra) -> torch.nn.Module:
    torch.manual_seed(123)
    overrides = SIZES.model_overrides(image_size)
    overrides.update(extra)
    return build_model("albef_pretrain", overrides)


def test_pretrain_layout_loads_with_nothing_missing_or_unexpected(tmp_path):
    state = official_pretrain_state(SIZES)
    path = tmp_path / "ALBEF_4M.pth"
    torch.save({"model": state, "config": {"batch_size": 64}, "epoch": 29}, path)
    model = tiny_model()
    result = load_checkpoint(model, path, strict=True)
    assert isinstance(result, LoadResult)
    assert result.format == FORMAT_OFFICIAL_PRETRAIN
    assert result.missing == [] and result.unexpected == [] and result.resampled == []
    # the only tolerated keys: the position_ids buffers of both text encoders
    assert sorted(result.tolerated) == ["text_encoder.bert.embeddings.position_ids",
                                        "text_encoder_m.bert.embeddings.position_ids"]
    own = model.state_dict()
    for key, value in state.items():  # every official tensor landed on the same-named tensor
        if key.endswith("position_ids"):
            continue
        assert torch.equal(own[key], value), key
    # the momentum copies got their own values, not the online ones
    assert not torch.equal(own["visual_encoder_m.blocks.0.attn.qkv.weight"],
                           own["visual_encoder.blocks.0.attn.qkv.weight"])
    # the tied decoder is still tied after loading
    assert model.text_encoder.cls.predictions.decoder.weight is \
        model.text_encoder.bert.embeddings.word_embeddings.weight
    assert model.pretrained_cfg["text_form"] == "official"
    assert model.pretrained_cfg["image_size"] == SIZES.image_size


def test_each_official_tensor_is_distinct_so_the_mapping_check_means_something():
    state = official_pretrain_state(SIZES)
    floats = {k: v for k, v in state.items() if v.is_floating_point() and v.numel() > 1
              and "decoder" not in k}
    fingerprints = {}
    for key, value in floats.items():
        fingerprints.setdefault(round(float(value.flatten()[:4].sum()), 6), []).append(key)
    assert all(len(keys) == 1 for keys in fingerprints.values())


def test_outputs_equal_the_official_formulas():
    state = official_pretrain_state(SIZES)
    model = tiny_model()
    load_checkpoint(model, state, strict=True)
    image, ids, mask = sample_inputs(SIZES.image_size, SIZES.vocab)
    ours = model_outputs(model, image, ids, mask)
    reference = official_outputs(state, image, ids, mask, SIZES.vit_heads, SIZES.bert_heads,
                                 SIZES.layers, SIZES.fusion_layer)
    for name, expected in reference.items():
        if name in ("text_embeds", "fused", "mlm"):  # padded positions are not compared
            keep = mask.bool()
            torch.testing.assert_close(ours[name][keep], expected[keep], atol=1e-4, rtol=1e-4,
                                       msg=name)
        else:
            torch.testing.assert_close(ours[name], expected, atol=1e-4, rtol=1e-4, msg=name)


def test_layer_details_match_the_official_model():
    model = tiny_model()
    vit_norms = [m for m in model.visual_encoder.modules() if isinstance(m, torch.nn.LayerNorm)]
    bert_norms = [m for m in model.text_encoder.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert vit_norms and all(m.eps == 1e-6 for m in vit_norms)
    assert bert_norms and all(m.eps == 1e-12 for m in bert_norms)
    cross = model.text_encoder.bert.encoder.layer[SIZES.fusion_layer].crossattention.self
    assert cross.key.in_features == SIZES.width and cross.value.in_features == SIZES.width
    assert not any("pooler" in k for k in model.state_dict())


def test_finetuned_layout_maps_bert_prefix_and_explains_the_missing_mlm_head(tmp_path):
    state = to_finetuned_layout(official_pretrain_state(SIZES))
    assert detect_format(state) == FORMAT_OFFICIAL_FINETUNED
    path = tmp_path / "flickr30k.pth"
    torch.save(state, path)  # fine-tuned files may be a bare state dict
    model = tiny_model()
    head_before = model.text_encoder.cls.predictions.transform.dense.weight.clone()
    result = load_checkpoint(model, path, strict=True)
    assert result.missing == [] and result.unexpected == []
    assert "idx_queue" in result.tolerated
    assert "text_encoder.cls.predictions.transform.dense.weight" in result.tolerated
    assert "text_encoder_m.cls.predictions.bias" in result.tolerated
    torch.testing.assert_close(model.text_encoder.bert.encoder.layer[3].crossattention.self.key.weight,
                               state["text_encoder.encoder.layer.3.crossattention.self.key.weight"])
    torch.testing.assert_close(model.text_encoder_m.bert.embeddings.word_embeddings.weight,
                               state["text_encoder_m.embeddings.word_embeddings.weight"])
    assert torch.equal(model.text_encoder.cls.predictions.transform.dense.weight, head_before)


def test_pos_embed_is_resampled_on_online_and_momentum_encoders():
    state = official_pretrain_state(SIZES, grid=6)  # trained at 48 px, model at 32 px (4x4)
    model = tiny_model()
    result = load_checkpoint(model, state, strict=True)
    assert sorted(result.resampled) == ["visual_encoder.pos_embed", "visual_encoder_m.pos_embed"]
    for prefix in ("visual_encoder", "visual_encoder_m"):
        source = state[f"{prefix}.pos_embed"]
        # official interpolate_pos_embed, written out: class token kept, bicubic on the grid
        grid = source[:, 1:].reshape(1, 6, 6, SIZES.width).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
        expected = torch.cat([source[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 16, -1)], dim=1)
        loaded = getattr(model, prefix).pos_embed
        torch.testing.assert_close(loaded, expected, atol=1e-6, rtol=0)
        timm_result = resample_abs_pos_embed(source, [4, 4], num_prefix_tokens=1,
                                             interpolation="bicubic", antialias=False)
        torch.testing.assert_close(loaded, timm_result, atol=1e-6, rtol=0)


def test_larger_model_resolution_upsamples_the_grid():
    state = official_pretrain_state(SIZES)  # 4x4 grid
    model = tiny_model(image_size=48)       # 6x6 grid
    load_checkpoint(model, state, strict=True)
    assert model.visual_encoder.pos_embed.shape == (1, 37, SIZES.width)
    assert model.pretrained_cfg["image_size"] == 48
    assert model.pretrained_cfg["checkpoint_image_size"] == 32


def test_queues_of_another_size_keep_the_models_fresh_queue():
    state = official_pretrain_state(SIZES, queue_size=32)
    model = tiny_model()  # queue 16
    fresh = model.image_queue.clone()
    result = load_checkpoint(model, state, strict=True)
    assert result.missing == [] and result.unexpected == []
    assert {"image_queue", "text_queue", "queue_ptr"} <= set(result.tolerated)
    assert torch.equal(model.image_queue, fresh) and int(model.queue_ptr) == 0
    same = load_checkpoint(tiny_model(), official_pretrain_state(SIZES), strict=True)
    assert "image_queue" not in same.tolerated


def test_file_without_momentum_copies_reinitialises_them_from_the_online_weights():
    state = {k: v for k, v in official_pretrain_state(SIZES).items()
             if k.split(".")[0] not in ("visual_encoder_m", "text_encoder_m", "vision_proj_m",
                                        "text_proj_m")}
    model = tiny_model()
    result = load_checkpoint(model, state, strict=True)
    assert "visual_encoder_m.pos_embed" in result.tolerated
    assert "text_proj_m.weight" in result.tolerated
    for online, momentum in (("visual_encoder", "visual_encoder_m"), ("text_encoder", "text_encoder_m"),
                             ("text_proj", "text_proj_m")):
        for (name, p), (_, p_m) in zip(getattr(model, online).named_parameters(),
                                       getattr(model, momentum).named_parameters()):
            assert torch.equal(p, p_m), f"{momentum}.{name}"
    torch.testing.assert_close(model.text_proj_m.weight, state["text_proj.weight"])


def test_wrong_sizes_are_an_error_naming_the_tensor():
    state = official_pretrain_state(SIZES)
    model = build_model("albef_pretrain", {**SIZES.model_overrides(),
                                           "embed_dim": SIZES.embed_dim * 2})
    with pytest.raises(CheckpointError, match="vision_proj.weight"):
        load_checkpoint(model, state)


def test_strict_raises_on_unexplained_keys_and_non_strict_reports_them():
    state = official_pretrain_state(SIZES)
    del state["itm_head.bias"]
    state["extra_head.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match="itm_head.bias"):
        load_checkpoint(tiny_model(), state, strict=True)
    result = load_checkpoint(tiny_model(), state, strict=False)
    assert result.missing == ["itm_head.bias"] and result.unexpected == ["extra_head.weight"]


def test_model_config_checkpoint_key_loads_the_weights(tmp_path):
    state = official_pretrain_state(SIZES)
    path = tmp_path / "ALBEF.pth"
    torch.save({"model": state}, path)
    model = build_model("albef_pretrain", {**SIZES.model_overrides(), "checkpoint": str(path)})
    torch.testing.assert_close(model.itm_head.weight, state["itm_head.weight"])
    assert model.pretrained_cfg["format"] == FORMAT_OFFICIAL_PRETRAIN
