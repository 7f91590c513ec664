"""Our SDPA BERT against Hugging Face's, with the weights copied through the state dict."""
from __future__ import annotations

import pytest
import torch
import transformers

from albef_plugin.models.bert import BertConfig, BertForMaskedLM, BertModel

SIZES = dict(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
             intermediate_size=64, max_position_embeddings=40)


def _hf_config(**extra) -> transformers.BertConfig:
    return transformers.BertConfig(hidden_act="gelu", layer_norm_eps=1e-12, **SIZES, **extra)


def _ids_and_mask(batch=3, length=9):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, SIZES["vocab_size"], (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def _load_from_hf(ours: torch.nn.Module, hf: torch.nn.Module) -> None:
    result = ours.load_state_dict(hf.state_dict(), strict=False)
    assert not result.missing_keys, f"keys HF BERT does not have: {result.missing_keys}"
    # HF may carry buffers (position_ids / token_type_ids) that we create ourselves
    assert all(k.endswith(("position_ids", "token_type_ids")) for k in result.unexpected_keys), \
        result.unexpected_keys


def test_text_layers_match_transformers_bert():
    torch.manual_seed(0)
    hf = transformers.BertModel(_hf_config(), add_pooling_layer=False).eval()
    ours = BertModel(BertConfig(**SIZES, fusion_layer=SIZES["num_hidden_layers"])).eval()
    _load_from_hf(ours, hf)
    ids, mask = _ids_and_mask()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, mask, mode="multimodal")
    valid = mask.bool()
    torch.testing.assert_close(got[valid], expected[valid], atol=1e-5, rtol=1e-5)


def test_causal_cross_attention_layers_match_transformers_decoder():
    """fusion_layer=0 + is_causal is the VQA decoder shape; HF's decoder has the same layers."""
    torch.manual_seed(0)
    hf = transformers.BertModel(_hf_config(is_decoder=True, add_cross_attention=True),
                                add_pooling_layer=False).eval()
    ours = BertModel(BertConfig(**SIZES, fusion_layer=0, encoder_width=SIZES["hidden_size"])).eval()
    _load_from_hf(ours, hf)
    ids, mask = _ids_and_mask()
    image = torch.randn(3, 5, SIZES["hidden_size"])
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, encoder_hidden_states=image,
                      use_cache=False).last_hidden_state
        got = ours(ids, mask, encoder_hidden_states=image, mode="multimodal", is_causal=True)
    valid = mask.bool()
    torch.testing.assert_close(got[valid], expected[valid], atol=1e-5, rtol=1e-5)


def test_mlm_head_matches_transformers_and_is_tied():
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(_hf_config()).eval()
    ours = BertForMaskedLM(BertConfig(**SIZES, fusion_layer=SIZES["num_hidden_layers"])).eval()
    _load_from_hf(ours, hf)
    assert ours.cls.predictions.decoder.weight is ours.bert.embeddings.word_embeddings.weight
    assert ours.cls.predictions.decoder.bias is ours.cls.predictions.bias
    ids, mask = _ids_and_mask()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits
        got = ours.logits(ids, mask)
    valid = mask.bool()
    torch.testing.assert_close(got[valid], expected[valid], atol=1e-5, rtol=1e-5)


def test_text_then_fusion_equals_multimodal():
    torch.manual_seed(0)
    model = BertModel(BertConfig(**SIZES, fusion_layer=1, encoder_width=24)).eval()
    ids, mask = _ids_and_mask()
    image = torch.randn(3, 5, 24)
    with torch.no_grad():
        text = model(ids, mask, mode="text")
        fused = model(attention_mask=mask, encoder_embeds=text, encoder_hidden_states=image,
                      mode="fusion")
        full = model(ids, mask, encoder_hidden_states=image, mode="multimodal")
    torch.testing.assert_close(fused, full)
    key = model.encoder.layer[1].crossattention.self.key.weight
    assert key.shape == (SIZES["hidden_size"], 24)
    assert not hasattr(model.encoder.layer[0], "crossattention")


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = BertModel(BertConfig(**SIZES, fusion_layer=1, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0))
    ids, mask = _ids_and_mask()
    image = torch.randn(3, 5, 768)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(ids, mask, encoder_hidden_states=image).sum().backward()
        grads.append(model.encoder.layer[0].attention.self.query.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_bad_arguments_raise_clear_errors():
    model = BertModel(BertConfig(**SIZES, fusion_layer=1))
    ids, mask = _ids_and_mask()
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        model(ids, mask, mode="multimodal")
    with pytest.raises(ValueError, match="mode"):
        model(ids, mask, mode="multi_modal_typo")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.zeros(1, 41, dtype=torch.long), mode="text")
    with pytest.raises(ValueError, match="divisible"):
        BertConfig(hidden_size=30, num_attention_heads=4)
