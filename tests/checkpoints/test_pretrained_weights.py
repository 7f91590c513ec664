"""Initial weights from local files, checked against the real references: Hugging Face
``transformers`` BERT (text encoder hidden states, MLM head) and timm's ViT / pos-embed resampling."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from albef_plugin.models import build_model
from albef_plugin.models.checkpoints import CheckpointError
from albef_plugin.models.pretrained import load_bert_pretrained, load_vit_pretrained

transformers = pytest.importorskip("transformers")  # a declared dependency; always present

HIDDEN, LAYERS, FUSION, VOCAB, HEADS = 32, 4, 2, 100, 2


def hf_config():
    return transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                   num_attention_heads=HEADS, intermediate_size=64,
                                   max_position_embeddings=32)


def albef_overrides(image_size=32, patch=8, width=32, **text):
    return {"image_encoder": {"image_size": image_size, "patch_size": patch, "width": width,
                              "depth": 2, "num_heads": 2},
            "text_encoder": {"vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
                             "fusion_layer": FUSION, "num_attention_heads": HEADS,
                             "intermediate_size": 64, "max_position_embeddings": 32,
                             "pad_token_id": 0, "cls_token_id": 1, "mask_token_id": 2, **text},
            "embed_dim": 16, "queue_size": 8}


def text_inputs():
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, VOCAB, (3, 9), generator=gen)
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def hf_text_hidden(bert_model, ids, mask, layers):
    """``transformers.BertModel`` hidden states after ``layers`` layers (eval mode)."""
    bert_model.eval()
    with torch.no_grad():
        out = bert_model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                         output_hidden_states=True)
    return out.hidden_states[layers]


@pytest.fixture(scope="module")
def hf_mlm(tmp_path_factory):
    torch.manual_seed(0)
    reference = transformers.BertForMaskedLM(hf_config()).eval()
    folder = tmp_path_factory.mktemp("bert_mlm")
    reference.save_pretrained(folder)
    return reference, folder


def test_hf_bert_gives_the_same_text_hidden_states_and_mlm_head(hf_mlm):
    reference, folder = hf_mlm
    model = build_model("albef_pretrain", {**albef_overrides(), "text_encoder": {
        **albef_overrides()["text_encoder"], "pretrained": str(folder)}}).eval()
    ids, mask = text_inputs()
    with torch.no_grad():
        text_embeds, _ = model.encode_text(ids, mask)
        expected = hf_text_hidden(reference.bert, ids, mask, FUSION)
        keep = mask.bool()
        torch.testing.assert_close(text_embeds[keep], expected[keep], atol=1e-5, rtol=1e-5)
        hidden = torch.randn(5, HIDDEN)
        torch.testing.assert_close(model.text_encoder.cls(hidden), reference.cls(hidden),
                                   atol=1e-5, rtol=1e-5)
    # fusion layers got BERT layers FUSION..LAYERS-1 (self-attention and FFN)
    ours = model.text_encoder.bert.encoder.layer[3]
    theirs = reference.bert.encoder.layer[3]
    torch.testing.assert_close(ours.attention.self.query.weight, theirs.attention.self.query.weight)
    torch.testing.assert_close(ours.output.dense.weight, theirs.output.dense.weight)
    # momentum copies start equal to the online weights
    for (name, p), (_, p_m) in zip(model.text_encoder.named_parameters(),
                                   model.text_encoder_m.named_parameters()):
        assert torch.equal(p, p_m), name
    for p, p_m in zip(model.visual_encoder.parameters(), model.visual_encoder_m.parameters()):
        assert torch.equal(p, p_m)


def test_hf_bert_load_result_explains_fresh_cross_attention(hf_mlm):
    _, folder = hf_mlm
    model = build_model("albef_pretrain", albef_overrides())
    result = load_bert_pretrained(model.text_encoder, folder, strict=True)
    assert result.missing == [] and result.unexpected == []
    cross = [k for k in result.tolerated if ".crossattention." in k]
    assert cross and all(".layer.2." in k or ".layer.3." in k for k in cross)
    assert "cls.predictions.decoder.weight" in result.tolerated  # tied, not stored by HF


def test_old_names_bert_prefix_pooler_and_nsp_head_as_pytorch_model_bin(tmp_path):
    torch.manual_seed(1)
    reference = transformers.BertModel(hf_config()).eval()
    state = {}
    for key, value in reference.state_dict().items():
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state["bert." + key] = value.clone()
    state["cls.seq_relationship.weight"] = torch.zeros(2, HIDDEN)
    state["bert.embeddings.position_ids"] = torch.arange(32)[None]
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(hf_config().to_dict()))
    model = build_model("albef_pretrain", albef_overrides())
    result = load_bert_pretrained(model.text_encoder, tmp_path, strict=True)
    assert "cls.seq_relationship.weight" in result.tolerated
    assert "bert.pooler.dense.weight" in result.tolerated
    assert "cls.predictions.transform.dense.weight" in result.tolerated  # no MLM head: fresh
    model.eval()
    ids, mask = text_inputs()
    with torch.no_grad():
        text_embeds, _ = model.encode_text(ids, mask)
    expected = hf_text_hidden(reference, ids, mask, FUSION)
    keep = mask.bool()
    torch.testing.assert_close(text_embeds[keep], expected[keep], atol=1e-5, rtol=1e-5)


def test_hf_bert_of_another_size_is_refused_naming_the_key(hf_mlm):
    _, folder = hf_mlm
    model = build_model("albef_pretrain", albef_overrides(intermediate_size=128))
    with pytest.raises(CheckpointError, match="text_encoder.intermediate_size"):
        load_bert_pretrained(model.text_encoder, folder)


def timm_vit_224():
    torch.manual_seed(2)
    return VisionTransformer(img_size=224, patch_size=16, embed_dim=32, depth=2, num_heads=2).eval()


def test_timm_vit_at_224_loaded_at_256_matches_timm_resampling(tmp_path):
    source = timm_vit_224()
    state = source.state_dict()
    torch.save({"model": state}, tmp_path / "deit.pth")
    model = build_model("albef_pretrain", {**albef_overrides(256, 16, 32), "image_encoder": {
        **albef_overrides(256, 16, 32)["image_encoder"], "pretrained": str(tmp_path / "deit.pth")}})
    expected = resample_abs_pos_embed(state["pos_embed"], [16, 16], num_prefix_tokens=1,
                                      interpolation="bicubic", antialias=False)
    torch.testing.assert_close(model.visual_encoder.pos_embed, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.visual_encoder_m.pos_embed, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.visual_encoder.blocks[1].mlp.fc2.weight,
                               state["blocks.1.mlp.fc2.weight"])
    # the same ViT in timm at 256 px with the resampled table gives the same tokens
    at_256 = VisionTransformer(img_size=256, patch_size=16, embed_dim=32, depth=2, num_heads=2,
                               num_classes=0, global_pool="").eval()
    at_256.load_state_dict({**{k: v for k, v in state.items() if not k.startswith("head.")},
                            "pos_embed": expected})
    image = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.eval().visual_encoder(image), at_256.forward_features(image),
                                   atol=1e-5, rtol=1e-5)


def test_distilled_deit_safetensors_drops_dist_token_and_head(tmp_path):
    state = {k: v.clone() for k, v in timm_vit_224().state_dict().items()}
    pos = state["pos_embed"]
    state["pos_embed"] = torch.cat([pos[:, :1], torch.full((1, 1, 32), 7.0), pos[:, 1:]], dim=1)
    state["dist_token"] = torch.full((1, 1, 32), 7.0)
    state["head_dist.weight"] = torch.zeros(1000, 32)
    state["head_dist.bias"] = torch.zeros(1000)
    save_file(state, str(tmp_path / "deit_distilled.safetensors"))
    model = build_model("albef_pretrain", albef_overrides(224, 16, 32))
    result = load_vit_pretrained(model.visual_encoder, tmp_path / "deit_distilled.safetensors")
    assert {"dist_token", "head.weight", "head_dist.bias"} <= set(result.tolerated)
    assert result.resampled == []  # 224 px: same 14x14 grid, only the dist row removed
    torch.testing.assert_close(model.visual_encoder.pos_embed, pos)
