"""albef_plugin.load_model_and_preprocess on tiny saved checkpoints (official, trainer, converted)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import albef_plugin
from albef_plugin.inference import ModelAndProcessors, save_converted
from albef_plugin.models import build_model
from albef_plugin.models.checkpoints import CheckpointError

VOCAB = 30522  # the packaged bert-base-uncased vocabulary the text processor uses
HEADS = {"image_encoder": {"num_heads": 2}, "text_encoder": {"num_attention_heads": 2}}


def tiny_overrides(image_size=48):
    return {"image_encoder": {"image_size": image_size, "patch_size": 16, "width": 32, "depth": 1,
                              "num_heads": 2},
            "text_encoder": {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2,
                             "fusion_layer": 1, "num_attention_heads": 2, "intermediate_size": 64,
                             "max_position_embeddings": 40},
            "embed_dim": 16, "queue_size": 8}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("albef_pretrain", tiny_overrides())


def picture():
    pixels = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def itm_probability(bundle, caption):
    model, image_processor, text_processor = bundle
    image = image_processor(picture()).unsqueeze(0)
    text = text_processor([caption])
    with torch.no_grad():
        image_embeds, _ = model.encode_image(image)
        text_embeds, _ = model.encode_text(text["input_ids"], text["attention_mask"])
        return model.itm_logits(text_embeds, text["attention_mask"], image_embeds).softmax(-1)[0, 1]


def test_official_style_file_gives_eval_model_and_matching_processors(tmp_path, tiny):
    path = tmp_path / "ALBEF_tiny.pth"
    state = tiny.state_dict()
    state["text_encoder.bert.embeddings.position_ids"] = torch.arange(40)[None]  # as official files
    torch.save({"model": state}, path)
    bundle = albef_plugin.load_model_and_preprocess("albef_pretrain", checkpoint=path,
                                                    overrides=HEADS)
    assert isinstance(bundle, ModelAndProcessors)
    model, image_processor, text_processor = bundle
    assert not model.training
    assert model.config.image_encoder.image_size == 48           # read off the checkpoint
    assert image_processor(picture()).shape == (3, 48, 48)
    ids = text_processor(["A dog."])["input_ids"][0].tolist()
    assert ids[0] == text_processor.cls_token_id and text_processor.sep_token_id not in ids
    expected = itm_probability((tiny.eval(), image_processor, text_processor), "a dog")
    torch.testing.assert_close(itm_probability(bundle, "a dog"), expected)


def test_trainer_checkpoint_uses_its_stored_config_and_text_form(tmp_path, tiny):
    model_config = OmegaConf.to_container(tiny.config)
    model_config["image_encoder"]["pretrained"] = "/nowhere/deit.pth"  # not reloaded
    payload = {"format_version": 1, "model": tiny.state_dict(), "optimizer": {},
               "config": {"model": "albef_pretrain",
                          "model_config": {"albef_pretrain": model_config},
                          "dataset_config": {"albef_pretrain_json": {"processors": {
                              "text": {"type": "bert_text", "params": {"add_sep": True}}}}}}}
    path = tmp_path / "current.ckpt"
    torch.save(payload, path)
    model, _, text_processor = albef_plugin.load_model_and_preprocess("albef_pretrain", path)
    assert model.pretrained_cfg["text_form"] == "with_sep"
    assert text_processor.add_sep
    assert text_processor(["a dog"])["input_ids"][0, -1] == text_processor.sep_token_id
    torch.testing.assert_close(model.itm_head.weight, tiny.itm_head.weight)


def test_converted_folder_and_name_check(tmp_path, tiny):
    folder = save_converted(tiny, "albef_pretrain", tmp_path / "converted",
                            {"text_form": "official"})
    model, image_processor, _ = albef_plugin.load_model_and_preprocess(
        "albef_pretrain", checkpoint=folder, device="cpu")
    assert image_processor.image_size == 48
    torch.testing.assert_close(model.text_proj.weight, tiny.text_proj.weight)
    with pytest.raises(CheckpointError, match="holds a 'albef_pretrain' model"):
        albef_plugin.load_model_and_preprocess("albef_retrieval", checkpoint=folder)


def test_vocabulary_mismatch_is_explained():
    overrides = tiny_overrides()
    overrides["text_encoder"]["vocab_size"] = 100
    with pytest.raises(CheckpointError, match="vocabulary"):
        albef_plugin.load_model_and_preprocess("albef_pretrain", overrides=overrides)
