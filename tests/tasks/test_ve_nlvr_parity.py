"""``albef_ve`` / ``albef_nlvr`` / ``albef_nlvr_ta`` reproduce the official formulas
(``model_ve.py``, ``model_nlvr.py``) within 1e-4 given the same weights, in the official ``state_dict()`` layout."""
import torch

from albef_plugin.models import build_model

from tests.checkpoints.official_layout import Sizes
from tests.checkpoints.official_reference import sample_inputs
from tests.checkpoints.official_task_layout import (nlvr_layers, official_nlvr_state,
                                                    official_ta_state, official_ve_state)
from tests.checkpoints.official_task_reference import (nlvr_image_embeds, nlvr_logits, ta_logits,
                                                       ta_negative_weights, ve_logits)

SIZES = Sizes()
TOL = dict(atol=1e-4, rtol=1e-4)


def overrides(model: str):
    base = SIZES.model_overrides()
    base.pop("queue_size")
    if model == "albef_nlvr_ta":
        return base
    base.pop("embed_dim")
    return base


def tiny(model: str, **extra):
    torch.manual_seed(0)
    return build_model(model, {**overrides(model), **extra})


def load_exactly(model, state):
    """The official state dict is this model's own layout: every key, nothing else."""
    own = model.state_dict()
    assert set(own) == set(state) - {k for k in state if k.endswith("position_ids")}
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)


def test_ve_logits_equal_the_official_formulas():
    state = official_ve_state(SIZES)
    model = tiny("albef_ve").eval()
    load_exactly(model, state)
    image, ids, mask = sample_inputs(SIZES.image_size, SIZES.vocab)
    with torch.no_grad():
        out = model({"image": image, "input_ids": ids, "attention_mask": mask})
        momentum = model.classify(image, ids, mask, momentum=True)
    args = (SIZES.vit_heads, SIZES.bert_heads, SIZES.layers, SIZES.fusion_layer)
    torch.testing.assert_close(out["logits"], ve_logits(state, image, ids, mask, *args), **TOL)
    torch.testing.assert_close(momentum, ve_logits(state, image, ids, mask, *args, prefix="_m"), **TOL)
    assert out["logits"].shape == (3, 3)


def test_nlvr_logits_equal_the_official_formulas_with_shared_pair_key_value():
    state = official_nlvr_state(SIZES)
    model = tiny("albef_nlvr").eval()
    load_exactly(model, state)
    layers = model.text_encoder.encoder.layer
    assert len(layers) == nlvr_layers(SIZES) == 6
    for first in range(SIZES.fusion_layer, len(layers), 2):
        a, b = layers[first].crossattention.self, layers[first + 1].crossattention.self
        assert a.key is b.key and a.value is b.value and a.query is not b.query
    image0, ids, mask = sample_inputs(SIZES.image_size, SIZES.vocab, seed=2)
    image1 = torch.randn_like(image0)
    with torch.no_grad():
        out = model({"image0": image0, "image1": image1, "input_ids": ids, "attention_mask": mask})
        swapped = model({"image0": image1, "image1": image0, "input_ids": ids,
                         "attention_mask": mask})
    expected = nlvr_logits(state, image0, image1, ids, mask, SIZES.vit_heads, SIZES.bert_heads,
                           nlvr_layers(SIZES), SIZES.fusion_layer)
    torch.testing.assert_close(out["logits"], expected, **TOL)
    assert not torch.allclose(out["logits"], swapped["logits"], atol=1e-3)  # order matters


def test_ta_logits_and_negative_weights_equal_the_official_formulas():
    state = official_ta_state(SIZES)
    model = tiny("albef_nlvr_ta").eval()
    own = model.state_dict()
    # the official TA model also holds text_proj and temp, which it never uses
    assert set(state) - set(own) == {"text_proj.weight", "text_proj.bias", "temp",
                                     "text_encoder.embeddings.position_ids"}
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    image, ids, mask = sample_inputs(SIZES.image_size, SIZES.vocab, batch=4, seed=3)
    with torch.no_grad():
        image_embeds = model.visual_encoder(image)
        weights = model.negative_weights(image_embeds)
        slot0, slot1 = torch.tensor([0, 2, 1, 3]), torch.tensor([1, 0, 3, 3])
        logits = model.assign(image_embeds, ids, mask, slot0, slot1)
    e0, _ = nlvr_image_embeds(state, image, image, SIZES.vit_heads)
    torch.testing.assert_close(weights, ta_negative_weights(state, e0), atol=1e-6, rtol=1e-4)
    expected = ta_logits(state, e0[slot0], e0[slot1], ids, mask, SIZES.bert_heads,
                         nlvr_layers(SIZES), SIZES.fusion_layer)
    torch.testing.assert_close(logits, expected, **TOL)
