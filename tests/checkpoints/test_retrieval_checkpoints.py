"""albef_retrieval: official layouts load, and outputs / losses equal the official formulas."""
from __future__ import annotations

import pytest
import torch

import albef_plugin.models.albef.base as albef_base
from albef_plugin.models import build_model, load_checkpoint
from albef_plugin.models.checkpoints import CheckpointError
from albef_plugin.train_state import TrainState

from . import official_retrieval_reference as reference
from .official_layout import Sizes, official_pretrain_state, to_finetuned_layout
from .official_reference import sample_inputs

SIZES = Sizes()


def retrieval_model(image_size: int = None, **extra) -> torch.nn.Module:
    torch.manual_seed(7)
    overrides = SIZES.model_overrides(image_size)
    overrides.update(extra)
    return build_model("albef_retrieval", overrides)


def official_finetuned_state(seed: int = 0):
    """``mscoco.pth`` / ``flickr30k.pth`` layout, with some images already in the idx_queue."""
    state = to_finetuned_layout(official_pretrain_state(SIZES, seed=seed))
    state["idx_queue"][0, :6] = torch.tensor([0, 5, 2, 9, 0, 7])
    return state


def test_official_finetuned_layout_loads_key_for_key(tmp_path):
    state = official_finetuned_state()
    path = tmp_path / "mscoco.pth"
    torch.save({"model": state}, path)
    model = retrieval_model()
    result = load_checkpoint(model, path, strict=True)
    assert result.missing == [] and result.unexpected == [] and result.resampled == []
    assert sorted(result.tolerated) == ["text_encoder.embeddings.position_ids",
                                        "text_encoder_m.embeddings.position_ids"]
    own = model.state_dict()
    for key, value in state.items():
        if not key.endswith("position_ids"):
            assert torch.equal(own[key], value), key
    assert not any(".cls." in k or ".bert." in k for k in own)


def test_pretraining_checkpoint_strips_bert_drops_the_mlm_head_and_resamples_pos_embed():
    state = official_pretrain_state(SIZES)           # 4x4 grid (32 px), "256 px" pre-training
    model = retrieval_model(image_size=48)           # 6x6 grid, "384 px" fine-tuning
    result = load_checkpoint(model, state, strict=True)
    assert result.missing == [] and result.unexpected == []
    assert sorted(result.resampled) == ["visual_encoder.pos_embed", "visual_encoder_m.pos_embed"]
    assert result.tolerated["idx_queue"].startswith("image-id queue")
    assert any(k.startswith("text_encoder.cls.") for k in result.tolerated)
    assert any(k.startswith("text_encoder_m.cls.") for k in result.tolerated)
    torch.testing.assert_close(model.text_encoder.encoder.layer[3].crossattention.self.key.weight,
                               state["text_encoder.bert.encoder.layer.3.crossattention.self.key.weight"])
    torch.testing.assert_close(model.text_encoder_m.embeddings.word_embeddings.weight,
                               state["text_encoder_m.bert.embeddings.word_embeddings.weight"])
    assert torch.equal(model.idx_queue, torch.full_like(model.idx_queue, -100))
    assert model.visual_encoder_m.pos_embed.shape == (1, 37, SIZES.width)


def test_our_pretraining_model_checkpoint_initialises_retrieval():
    torch.manual_seed(0)
    pretrain = build_model("albef_pretrain", SIZES.model_overrides())
    model = retrieval_model()
    result = load_checkpoint(model, pretrain.state_dict(), strict=True)
    assert result.missing == [] and result.unexpected == []
    torch.testing.assert_close(model.text_encoder.encoder.layer[0].attention.self.query.weight,
                               pretrain.text_encoder.bert.encoder.layer[0].attention.self.query.weight)


def test_a_checkpoint_of_another_task_is_refused_with_strict():
    state = official_finetuned_state()
    del state["itm_head.weight"], state["itm_head.bias"]
    state["cls_head.0.weight"] = torch.zeros(SIZES.hidden, SIZES.hidden)
    with pytest.raises(CheckpointError, match=r"(?s)itm_head.*cls_head"):
        load_checkpoint(retrieval_model(), state, strict=True)


def test_outputs_equal_the_official_formulas():
    state = official_finetuned_state()
    model = retrieval_model()
    load_checkpoint(model, state, strict=True)
    image, ids, mask = sample_inputs(SIZES.image_size, SIZES.vocab)
    expected = reference.eval_outputs(state, image, ids, mask, SIZES)
    model.eval()
    with torch.no_grad():
        image_embeds, image_feat = model.encode_image(image)
        text_embeds, text_feat = model.encode_text(ids, mask)
        itm = model.itm_logits(text_embeds, mask, image_embeds)
    keep = mask.bool()
    torch.testing.assert_close(image_embeds, expected["image_embeds"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(image_feat, expected["image_feat"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(text_embeds[keep], expected["text_embeds"][keep], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(text_feat, expected["text_feat"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(itm, expected["itm"], atol=1e-4, rtol=1e-4)


def test_training_step_equals_the_official_formulas(monkeypatch):
    """ITC with multi-positive idx targets and MoD, ITM on the drawn negatives, the EMA step,
    and the queues after one training forward, against the reference (dropout off, temp
    outside the pre-training clamp range to show it is not clamped)."""
    state = official_finetuned_state(seed=3)
    state["temp"] = torch.tensor(0.6)
    model = retrieval_model(text_encoder={**SIZES.model_overrides()["text_encoder"],
                                          "hidden_dropout_prob": 0.0,
                                          "attention_probs_dropout_prob": 0.0})
    load_checkpoint(model, state, strict=True)
    image, ids, mask = sample_inputs(SIZES.image_size, SIZES.vocab, batch=4)
    idx = torch.tensor([0, 0, 7, 3])  # two captions of image 0; 0 and 7 also in the idx_queue
    image[1] = image[0]
    drawn = {}
    sample = albef_base.sample_hard_negative_sets

    def recording_sample(*args, **kwargs):
        drawn["negatives"] = sample(*args, **kwargs)
        return drawn["negatives"]

    monkeypatch.setattr(albef_base, "sample_hard_negative_sets", recording_sample)
    alpha = 0.3
    out = model.train()({"image": image, "input_ids": ids, "attention_mask": mask, "image_id": idx},
                        TrainState(alpha=alpha))
    # one set of negatives (the official number): [1, B] -> [B]
    neg_image, neg_text, valid_image, valid_text = (part[0] for part in drawn["negatives"])
    assert valid_image.all() and valid_text.all()
    assert not (idx[neg_image] == idx).any() and not (idx[neg_text] == idx).any()

    expected = reference.training_step(state, image, ids, mask, idx, alpha, model.momentum, SIZES,
                                       neg_image, neg_text)
    torch.testing.assert_close(out["losses"]["itc"], expected["itc"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["losses"]["itm"], expected["itm"], atol=1e-4, rtol=1e-4)
    assert float(model.temp.detach()) == pytest.approx(0.6)  # not clamped to 0.5
    own = model.state_dict()
    for key, value in expected["state"].items():
        if key.endswith("position_ids"):
            continue
        torch.testing.assert_close(own[key].float(), value.float(), atol=1e-5, rtol=1e-4, msg=key)
    assert int(model.queue_ptr) == (8 + 4) % SIZES.queue_size
