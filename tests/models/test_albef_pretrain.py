"""ALBEFPretrain: official key layout, losses, gradients, side effects, config handling."""
from __future__ import annotations

import math

import pytest
import torch

from albef_plugin.losses.mlm import IGNORE_INDEX, mask_tokens, mlm_loss
from albef_plugin.models import ModelConfigError, build_model, model_config
from albef_plugin.models.albef.pretrain import ALBEFPretrain
from albef_plugin.registry import registry
from albef_plugin.train_state import TrainState


def test_registered_and_defaults_follow_the_paper():
    assert registry.get_model_class("albef_pretrain") is ALBEFPretrain
    cfg = model_config("albef_pretrain")
    assert (cfg.image_encoder.image_size, cfg.image_encoder.width, cfg.image_encoder.depth) == \
        (256, 768, 12)
    assert (cfg.text_encoder.num_hidden_layers, cfg.text_encoder.fusion_layer) == (12, 6)
    assert (cfg.embed_dim, cfg.queue_size, cfg.momentum, cfg.alpha) == (256, 65536, 0.995, 0.4)
    assert (cfg.temp, cfg.temp_min, cfg.temp_max, cfg.mlm_probability) == (0.07, 0.001, 0.5, 0.15)


def test_unknown_override_key_is_named():
    with pytest.raises(ModelConfigError, match="text_encoder.fusion_layr") as info:
        build_model("albef_pretrain", {"text_encoder": {"fusion_layr": 3}})
    assert "fusion_layer" in str(info.value)  # suggestion
    with pytest.raises(ModelConfigError, match="queue_sise"):
        model_config("albef_pretrain", ["queue_sise=8"])
    with pytest.raises(ModelConfigError, match="embed_dim"):
        model_config("albef_pretrain", {"embed_dim": "wide"})


def test_state_dict_has_official_keys(tiny_model):
    state = tiny_model.state_dict()
    hidden = tiny_model.config.text_encoder.hidden_size
    width = tiny_model.config.image_encoder.width
    fusion = tiny_model.config.text_encoder.fusion_layer
    expected_keys = [
        "visual_encoder.cls_token", "visual_encoder.pos_embed",
        "visual_encoder.patch_embed.proj.weight", "visual_encoder.blocks.0.attn.qkv.weight",
        "visual_encoder.norm.weight",
        "text_encoder.bert.embeddings.word_embeddings.weight",
        "text_encoder.bert.embeddings.LayerNorm.weight",
        "text_encoder.bert.encoder.layer.0.attention.self.query.weight",
        "text_encoder.bert.encoder.layer.0.attention.output.LayerNorm.bias",
        "text_encoder.bert.encoder.layer.0.intermediate.dense.weight",
        "text_encoder.bert.encoder.layer.0.output.dense.weight",
        f"text_encoder.bert.encoder.layer.{fusion}.crossattention.self.key.weight",
        f"text_encoder.bert.encoder.layer.{fusion}.crossattention.output.LayerNorm.weight",
        "text_encoder.cls.predictions.bias", "text_encoder.cls.predictions.transform.dense.weight",
        "text_encoder.cls.predictions.transform.LayerNorm.weight",
        "text_encoder.cls.predictions.decoder.weight", "text_encoder.cls.predictions.decoder.bias",
        "vision_proj.weight", "text_proj.bias", "itm_head.weight", "temp",
        "visual_encoder_m.blocks.1.mlp.fc2.weight", "vision_proj_m.weight",
        "text_encoder_m.bert.encoder.layer.3.crossattention.self.value.bias",
        "text_encoder_m.cls.predictions.decoder.weight", "text_proj_m.weight",
        "image_queue", "text_queue", "queue_ptr"]
    missing = [k for k in expected_keys if k not in state]
    assert not missing, missing
    assert not [k for k in state if "crossattention" in k and ".layer.1." in k]
    assert not [k for k in state if k.startswith("queue.") or "pooler" in k]
    assert state[f"text_encoder.bert.encoder.layer.{fusion}.crossattention.self.key.weight"].shape \
        == (hidden, width)
    assert state["temp"].shape == () and state["itm_head.weight"].shape == (2, hidden)
    assert state["image_queue"].shape == (16, 16) and state["queue_ptr"].shape == (1,)


def test_public_api_shapes(tiny_model, batch):
    model = tiny_model.eval()
    with torch.no_grad():
        image_embeds, image_feat = model.encode_image(batch["image"])
        text_embeds, text_feat = model.encode_text(batch["input_ids"], batch["attention_mask"])
        fused = model.fuse(text_embeds, batch["attention_mask"], image_embeds)
        itm = model.itm_logits(text_embeds, batch["attention_mask"], image_embeds)
        mlm = model.mlm_logits(batch["input_ids"], batch["attention_mask"], image_embeds)
    assert image_embeds.shape == (4, 17, 32) and text_embeds.shape == (4, 8, 32)
    torch.testing.assert_close(image_feat.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(text_feat.norm(dim=-1), torch.ones(4))
    vocab = model.config.text_encoder.vocab_size
    assert fused.shape == (4, 8, 32) and itm.shape == (4, 2) and mlm.shape == (4, 8, vocab)


def test_forward_backward_every_parameter_gets_a_gradient(tiny_model, batch):
    out = tiny_model.train()(batch, TrainState(alpha=0.3))
    assert set(out["losses"]) == {"itc", "itm", "mlm"} and out["alpha"] == 0.3
    total = sum(out["losses"].values())
    assert torch.isfinite(total)
    total.backward()
    no_grad = [n for n, p in tiny_model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    nan_grad = [n for n, p in tiny_model.named_parameters()
                if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not nan_grad, nan_grad
    assert not [n for n, p in tiny_model.named_parameters() if n.split(".")[0].endswith("_m")
                and p.requires_grad]
    assert 0.0 <= out["metrics"]["itm_accuracy"].item() <= 1.0


def test_training_step_updates_momentum_toward_online_and_fills_queue(tiny_model, batch):
    model = tiny_model.train()
    online = model.visual_encoder.blocks[0].attn.qkv.weight
    ema = model.visual_encoder_m.blocks[0].attn.qkv.weight
    torch.testing.assert_close(online, ema)  # starts as a copy
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    sum(model(batch)["losses"].values()).backward()
    optimizer.step()
    gap_before = (online - ema).norm().item()
    assert gap_before > 0  # online moved, momentum did not follow fully
    ema_before = ema.detach().clone()
    model(batch)
    m = model.config.momentum
    torch.testing.assert_close(ema, m * ema_before + (1 - m) * online.detach())
    assert (online - ema).norm().item() < gap_before
    assert model.queue_ptr.item() == 8  # two batches of 4
    _, image_feat_m, _ = model._momentum_features(batch["image"], batch["input_ids"],
                                                  batch["attention_mask"])
    torch.testing.assert_close(model.image_queue[:, 4:8], image_feat_m.t())


def test_eval_forward_changes_neither_momentum_nor_queue(tiny_model, batch):
    model = tiny_model.train()
    sum(model(batch)["losses"].values()).backward()
    with torch.no_grad():  # make online and momentum differ so an update would show
        for p in model.visual_encoder.parameters():
            p.add_(0.1)
    model.temp.data.fill_(5.0)  # out of range: train would clamp it
    momentum_state = {k: v.clone() for k, v in model.state_dict().items() if "_m." in k}
    queues = [model.image_queue.clone(), model.text_queue.clone(), model.queue_ptr.clone()]
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert all(torch.isfinite(v) for v in out["losses"].values())
    for key, value in model.state_dict().items():
        if key in momentum_state:
            assert torch.equal(value, momentum_state[key]), key
    for before, after in zip(queues, [model.image_queue, model.text_queue, model.queue_ptr]):
        assert torch.equal(before, after)
    assert model.temp.item() == 5.0


def test_temperature_is_clamped_in_training(tiny_model, batch):
    tiny_model.temp.data.fill_(5.0)
    tiny_model.train()(batch)
    assert tiny_model.temp.item() == pytest.approx(0.5)


def _mask_like_model(model, input_ids):
    text = model.config.text_encoder
    return mask_tokens(input_ids, text.vocab_size, text.mask_token_id, text.pad_token_id,
                       text.cls_token_id, model.mlm_probability)


def _full_logit_mlm_loss(model, masked, labels, batch, image_embeds, image_embeds_m):
    full = model.mlm_logits(masked, batch["attention_mask"], image_embeds)
    full_m = model.text_encoder_m.logits(masked, batch["attention_mask"], image_embeds_m)
    return mlm_loss(full, labels, full_m, alpha=0.4)


def test_mlm_masked_position_shortcut_equals_full_logits(tiny_model, batch):
    model = tiny_model.eval()  # no dropout: both paths see the same activations
    with torch.no_grad():
        image_embeds, _ = model.encode_image(batch["image"])
        image_embeds_m = model.visual_encoder_m(batch["image"])
        torch.manual_seed(3)
        shortcut = model._mlm_loss(batch["input_ids"], batch["attention_mask"], image_embeds,
                                   image_embeds_m, alpha=0.4)
        torch.manual_seed(3)  # the same masks again
        masked, labels = _mask_like_model(model, batch["input_ids"])
        expected = _full_logit_mlm_loss(model, masked, labels, batch, image_embeds, image_embeds_m)
    assert (labels != IGNORE_INDEX).any()
    torch.testing.assert_close(shortcut, expected)


def test_mlm_capacity_overflow_unmasks_extra_positions(tiny_model, batch, monkeypatch):
    """If more tokens are masked than the static capacity, the extra ones are unmasked (ids and
    labels restored) so the shortcut still equals the full computation on those inputs."""
    import albef_plugin.models.albef.pretrain as pretrain
    capacity = 3
    monkeypatch.setattr(pretrain, "masked_capacity", lambda n, p: capacity)
    model = tiny_model.eval()
    model.mlm_probability = 0.9  # a plain attribute: forward never reads model.config
    with torch.no_grad():
        image_embeds, _ = model.encode_image(batch["image"])
        image_embeds_m = model.visual_encoder_m(batch["image"])
        torch.manual_seed(5)
        shortcut = model._mlm_loss(batch["input_ids"], batch["attention_mask"], image_embeds,
                                   image_embeds_m, alpha=0.4)
        torch.manual_seed(5)
        masked, labels = _mask_like_model(model, batch["input_ids"])
        flat_masked = (labels.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)
        assert flat_masked.numel() > capacity
        overflow = flat_masked[capacity:]  # kept: the first `capacity` in position order
        masked.view(-1)[overflow] = batch["input_ids"].reshape(-1)[overflow]
        labels.view(-1)[overflow] = IGNORE_INDEX
        expected = _full_logit_mlm_loss(model, masked, labels, batch, image_embeds, image_embeds_m)
    torch.testing.assert_close(shortcut, expected)


def test_alpha_ramps_over_first_epoch(tiny_model):
    state = TrainState(epoch=0, iteration_in_epoch=25, iterations_per_epoch=100)
    assert tiny_model.alpha_for(state) == pytest.approx(0.1)
    assert tiny_model.alpha_for(TrainState(epoch=2)) == pytest.approx(0.4)
    assert tiny_model.alpha_for(None) == pytest.approx(0.4)


def test_batch_of_one_image_repeated_trains(tiny_model, batch_factory):
    batch = batch_factory(batch_size=4)
    batch["image"] = batch["image"][:1].expand(4, -1, -1, -1).contiguous()
    batch["image_id"] = torch.zeros(4, dtype=torch.long)  # no valid ITM negative at all
    out = tiny_model.train()(batch)
    assert torch.isfinite(out["losses"]["itm"])
    sum(out["losses"].values()).backward()


def test_missing_batch_key_is_a_clear_error(tiny_model, batch):
    del batch["attention_mask"]
    with pytest.raises(KeyError, match="attention_mask"):
        tiny_model(batch)


def test_queue_size_must_divide_by_batch(batch, tiny_overrides):
    model = build_model("albef_pretrain", {**tiny_overrides, "queue_size": 10})
    with pytest.raises(ValueError, match="queue_size=10"):
        model.train()(batch)


def test_loss_weights_scale_and_skip(tiny_overrides, batch):
    weighted = {}
    for weights in ({"itc": 1.0, "itm": 1.0, "mlm": 1.0}, {"itc": 2.0, "itm": 0.0, "mlm": 1.0}):
        torch.manual_seed(0)
        model = build_model("albef_pretrain", {**tiny_overrides, "loss_weights": weights})
        torch.manual_seed(1)
        weighted[weights["itc"]] = model.eval()(batch)["losses"]
    assert set(weighted[2.0]) == {"itc", "mlm"}
    assert math.isfinite(weighted[2.0]["itc"].item())
    torch.testing.assert_close(weighted[2.0]["itc"], 2 * weighted[1.0]["itc"])


def test_gradient_checkpointing_gives_the_same_losses_and_gradients(tiny_overrides, batch):
    """Recomputation replays dropout (RNG state is preserved), so results match exactly."""
    results = []
    for enable in (False, True):
        torch.manual_seed(0)
        model = build_model("albef_pretrain", {**tiny_overrides, "gradient_checkpointing": enable})
        torch.manual_seed(1)
        losses = model.train()(batch)["losses"]
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((losses, grads))
    (losses_a, grads_a), (losses_b, grads_b) = results
    for name in losses_a:
        torch.testing.assert_close(losses_a[name], losses_b[name])
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)


@pytest.mark.parametrize("batch_features, text_grad_from_i2t", [("momentum", False), ("online", True)])
def test_itc_batch_features_decide_whether_i2t_trains_the_text_encoder(
        tiny_overrides, batch, batch_features, text_grad_from_i2t):
    """Official ITC compares online features with [momentum batch | queue] only; the "online"
    option lets the image-to-text direction reach the text encoder too (CLIP-like)."""
    tiny_overrides["itc_batch_features"] = batch_features
    torch.manual_seed(0)
    model = build_model("albef_pretrain", tiny_overrides).train()
    image_feat = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1).requires_grad_()
    text_feat = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1).requires_grad_()
    feat_m = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    sim_i2t, sim_t2i, sim_i2t_m, _ = model._similarities(image_feat, text_feat, feat_m, feat_m)
    assert sim_i2t.shape == (4, 4 + 16)
    sim_i2t.sum().backward()
    assert (text_feat.grad is not None and text_feat.grad.abs().sum() > 0) == text_grad_from_i2t
    # the queue columns and the momentum similarities are the same in both modes
    assert torch.allclose(sim_i2t[:, 4:], image_feat.detach() @ model.text_queue / model.temp)
    assert not sim_i2t_m.requires_grad


def test_unknown_itc_batch_features_is_rejected(tiny_overrides):
    tiny_overrides["itc_batch_features"] = "both"
    with pytest.raises(ValueError, match="itc_batch_features='both'"):
        build_model("albef_pretrain", tiny_overrides)


def test_queue_size_zero_trains_on_in_batch_negatives_only(tiny_overrides, batch):
    tiny_overrides["queue_size"] = 0
    torch.manual_seed(0)
    model = build_model("albef_pretrain", tiny_overrides).train()
    assert model.image_queue.shape == (16, 0)
    output = model(batch)
    sum(output["losses"].values()).backward()
    assert all(torch.isfinite(v) for v in output["losses"].values())
    assert int(model.queue_ptr) == 0  # nothing to enqueue into


def test_itm_random_negatives_warm_up(tiny_overrides, batch, monkeypatch):
    """During the first itm_random_negatives_updates updates the ITM negatives are drawn with
    equal weights (zero similarities); afterwards, and without a TrainState (a user's own
    loop, the official behaviour), by ITC similarity."""
    import albef_plugin.models.albef.base as base

    drawn_with = []
    real = base.sample_hard_negative_sets

    def spy(sim_i2t, sim_t2i, *args, **kwargs):
        drawn_with.append(bool((sim_i2t == 0).all() and (sim_t2i == 0).all()))
        return real(sim_i2t, sim_t2i, *args, **kwargs)

    monkeypatch.setattr(base, "sample_hard_negative_sets", spy)
    tiny_overrides["itm_random_negatives_updates"] = 3
    model = build_model("albef_pretrain", tiny_overrides).train()
    for state in (TrainState(update=0), TrainState(update=2), TrainState(update=3), None):
        model(batch, train_state=state)
    assert drawn_with == [True, True, False, False]
    tiny_overrides["itm_random_negatives_updates"] = -1
    with pytest.raises(ValueError, match="itm_random_negatives_updates=-1"):
        build_model("albef_pretrain", tiny_overrides)


def test_itm_negatives_score_one_positive_and_n_negatives_per_sample(tiny_overrides, batch,
                                                                     monkeypatch):
    """itm_negatives=n scores (1 + 2n)B pairs (the paper: n=1, 3B) with B positive labels."""
    import albef_plugin.models.albef.base as base

    scored = []
    real = base.itm_loss

    def spy(logits, labels=None, valid=None):
        scored.append((logits.shape[0], int(labels.sum()), int(valid.sum())))
        return real(logits, labels, valid)

    monkeypatch.setattr(base, "itm_loss", spy)
    size = batch["image"].shape[0]
    for negatives in (1, 2):
        tiny_overrides["itm_negatives"] = negatives
        model = build_model("albef_pretrain", tiny_overrides).train()
        out = model(batch)
        assert torch.isfinite(out["losses"]["itm"])
        assert scored[-1][:2] == ((1 + 2 * negatives) * size, size)
    tiny_overrides["itm_negatives"] = 0
    with pytest.raises(ValueError, match="itm_negatives=0"):
        build_model("albef_pretrain", tiny_overrides)


def test_itc_only_updates_skip_itm_and_mlm_until_then(tiny_overrides, batch):
    """Before itc_only_updates, ITM and MLM report an exact zero that still reaches every
    trainable parameter (so DDP sees them used) without moving any; from that update on,
    and without a TrainState (a user's own loop), all objectives train as the official code."""
    tiny_overrides["itc_only_updates"] = 2
    tiny_overrides["mlm_probability"] = 0.9  # some token masked in the tiny batch
    torch.manual_seed(0)
    model = build_model("albef_pretrain", tiny_overrides).train()
    for state, started in ((TrainState(update=0), False), (TrainState(update=1), False),
                           (TrainState(update=2), True), (None, True)):
        model.zero_grad(set_to_none=True)
        losses = model(batch, train_state=state)["losses"]
        assert set(losses) == {"itc", "itm", "mlm"}
        (losses["itm"] + losses["mlm"]).backward()
        head_grad = model.itm_head.weight.grad
        assert head_grad is not None  # in the graph either way
        if started:
            assert losses["itm"].item() > 0.1 and losses["mlm"].item() > 0.1
            assert head_grad.abs().sum() > 0
        else:
            assert losses["itm"].item() == 0.0 and losses["mlm"].item() == 0.0
            assert all(p.grad is not None and p.grad.abs().sum() == 0
                       for p in model.parameters() if p.requires_grad)
    tiny_overrides["itc_only_updates"] = -1
    with pytest.raises(ValueError, match="itc_only_updates=-1"):
        build_model("albef_pretrain", tiny_overrides)
