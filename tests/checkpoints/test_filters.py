"""Per-model checkpoint filters: rename tables, layer-index remapping, expected differences."""
from __future__ import annotations

import pytest
import torch

from albef_plugin.models import build_model, load_checkpoint
from albef_plugin.models.checkpoints import (CheckpointError, CheckpointFilter, copy_layers,
                                             duplicate_fusion_layers, fusion_layers_to_decoder,
                                             rename_keys, text_encoder_layout)

from .official_layout import Sizes, official_pretrain_state, to_finetuned_layout

SIZES = Sizes()


def _layers(prefix, indices, fields=("attention.self.query.weight", "crossattention.self.key.weight")):
    """A state dict with one distinct tensor per (layer, field)."""
    return {f"{prefix}layer.{i}.{f}": torch.tensor([float(10 * i + j)])
            for i in indices for j, f in enumerate(fields)}


def test_nlvr_duplicates_fusion_layer_f_plus_i_into_f_plus_2i_and_f_plus_2i_plus_1():
    f, n = 6, 6  # paper size: 12 layers in, 18 out
    state = _layers("text_encoder.encoder.", range(12))
    state["text_encoder.embeddings.word_embeddings.weight"] = torch.zeros(1)
    out = duplicate_fusion_layers(state, "text_encoder.encoder.", f, n)
    layers = sorted({int(k.split(".")[3]) for k in out if ".layer." in k})
    assert layers == list(range(18))
    for i in range(n):
        for target in (f + 2 * i, f + 2 * i + 1):
            for field in ("attention.self.query.weight", "crossattention.self.key.weight"):
                assert torch.equal(out[f"text_encoder.encoder.layer.{target}.{field}"],
                                   state[f"text_encoder.encoder.layer.{f + i}.{field}"])
    for i in range(f):  # text layers keep their index
        assert torch.equal(out[f"text_encoder.encoder.layer.{i}.attention.self.query.weight"],
                           state[f"text_encoder.encoder.layer.{i}.attention.self.query.weight"])
    assert "text_encoder.embeddings.word_embeddings.weight" in out
    # the demo size follows the same rule: f = 2, n = 2 -> layers 2,3 <- 2 and 4,5 <- 3
    small = duplicate_fusion_layers(_layers("x.", range(4), ("w",)), "x.", 2, 2)
    assert [float(small[f"x.layer.{i}.w"]) for i in range(6)] == [0, 10, 20, 20, 30, 30]


def test_vqa_maps_fusion_layers_to_decoder_layers_and_keeps_the_encoder():
    f, n = 6, 6
    state = _layers("text_encoder.bert.encoder.", range(12))
    out = fusion_layers_to_decoder(state, "text_encoder.bert.encoder.",
                                   "text_decoder.bert.encoder.", f, n)
    for key, value in state.items():  # the encoder keeps all 12 layers
        assert torch.equal(out[key], value)
    decoder = sorted({int(k.split(".")[4]) for k in out if k.startswith("text_decoder.")})
    assert decoder == list(range(n))
    for i in range(n):
        assert torch.equal(out[f"text_decoder.bert.encoder.layer.{i}.crossattention.self.key.weight"],
                           state[f"text_encoder.bert.encoder.layer.{f + i}.crossattention.self.key.weight"])


def test_copy_layers_without_keep_source_drops_unmapped_sources_only():
    state = _layers("e.", range(3), ("w",))
    out = copy_layers(state, "e.", "d.", {1: [0]}, keep_source=False)
    assert sorted(out) == ["d.layer.0.w", "e.layer.0.w", "e.layer.2.w"]


def test_rename_rows_apply_in_order_to_online_and_momentum_encoders():
    state = {"text_encoder.bert.encoder.layer.0.x": torch.zeros(1),
             "text_encoder_m.bert.embeddings.y": torch.zeros(1), "vision_proj.weight": torch.zeros(1)}
    out = rename_keys(state, [(r"^(text_encoder(?:_m)?)\.bert\.", r"\1.")])
    assert sorted(out) == ["text_encoder.encoder.layer.0.x", "text_encoder_m.embeddings.y",
                           "vision_proj.weight"]
    assert text_encoder_layout(state) == "text_encoder_with_mlm_head"
    assert text_encoder_layout(out) == "text_encoder_plain"
    assert text_encoder_layout({"vision_proj.weight": torch.zeros(1)}) is None


def test_filter_reports_expected_differences_with_their_reasons():
    rules = CheckpointFilter(renames=((r"^old\.", "new."),), unused=((r"^extra$", "not used"),),
                             absent=((r"^fresh\.", "new head"),),
                             remap=lambda s: {**s, "copied": s["new.a"]})
    state = {"old.a": torch.ones(1), "extra": torch.ones(1), "surprise": torch.ones(1)}
    mapped, expected = rules.apply(state, ["new.a", "copied", "fresh.w", "other"])
    assert sorted(mapped) == ["copied", "extra", "new.a", "surprise"]
    assert expected == {"extra": "not used", "fresh.w": "new head"}  # not "surprise" / "other"


def test_a_checkpoint_of_another_task_is_refused_with_strict_and_listed_without():
    """A VE-like file (no ITC projections / ITM head / queues, a cls_head) into albef_pretrain."""
    state = {k: v for k, v in to_finetuned_layout(official_pretrain_state(SIZES)).items()
             if not k.startswith(("vision_proj", "text_proj", "itm_head", "image_queue",
                                  "text_queue", "queue_ptr", "idx_queue", "temp"))}
    state["cls_head.0.weight"] = torch.zeros(SIZES.hidden, SIZES.hidden)
    model = build_model("albef_pretrain", SIZES.model_overrides())
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, state, strict=True)
    message = str(info.value)
    assert "cls_head" in message and "vision_proj" in message and "itm_head" in message
    result = load_checkpoint(model, state, strict=False)
    assert result.unexpected == ["cls_head.0.weight"]
    assert {"vision_proj.weight", "itm_head.bias", "temp", "image_queue"} <= set(result.missing)
