"""albef_vqa: official checkpoint layouts, the decoder against its formulas, the training loss
and rank_answer against hand computations."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from albef_plugin.models import build_model, load_checkpoint
from albef_plugin.train_state import TrainState
from checkpoints.official_layout import Sizes, official_pretrain_state
from checkpoints.official_reference import sample_inputs

from .vqa_reference import (VQA_SIZES, official_decoder_logits, official_question_states,
                            official_vqa_state)

PAD, CLS, SEP = 0, 1, 3


def vqa_model(sizes: Sizes = VQA_SIZES, **extra) -> torch.nn.Module:
    torch.manual_seed(7)
    overrides = sizes.model_overrides()
    overrides.pop("queue_size")
    overrides.update(extra)
    return build_model("albef_vqa", overrides)


def candidates():
    """Six answers ``[CLS] w.. [SEP]`` of one to three words, padded to one length."""
    words = [[11], [12], [13, 14], [15, 16, 17], [18], [19, 11]]
    length = 2 + max(len(w) for w in words)
    ids = torch.full((len(words), length), PAD)
    for row, w in enumerate(words):
        ids[row, :len(w) + 2] = torch.tensor([CLS, *w, SEP])
    return ids, (ids != PAD).long()


# ------------------------------------------------------------------ checkpoint layouts
def test_official_vqa_layout_loads_with_nothing_missing_or_unexpected():
    state = official_vqa_state()
    model = vqa_model()
    result = load_checkpoint(model, {"model": state}, strict=True)
    assert result.missing == [] and result.unexpected == [] and result.tolerated == {}
    own = model.state_dict()
    assert set(own) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(own[key], value, rtol=0, atol=0, msg=key)


def test_pretraining_checkpoint_initialises_the_decoder_from_the_fusion_layers():
    s = VQA_SIZES
    state = official_pretrain_state(s)
    model = vqa_model()
    result = load_checkpoint(model, {"model": state}, strict=True)
    assert result.missing == [] and result.unexpected == []
    assert all("position_ids" in k or k.startswith(("vision_proj", "text_proj", "itm_head", "temp",
                                                    "image_queue", "text_queue", "queue_ptr"))
               for k in result.tolerated), sorted(result.tolerated)
    own = model.state_dict()
    n = s.layers - s.fusion_layer
    for suffix in ("", "_m"):
        src, enc, dec = f"text_encoder{suffix}.bert.", f"text_encoder{suffix}.", f"text_decoder{suffix}."
        for key, value in state.items():
            if not key.startswith(src) or key.endswith("position_ids"):
                continue
            rest = key[len(src):]
            torch.testing.assert_close(own[enc + rest], value, rtol=0, atol=0)  # bert. stripped
            if rest.startswith("embeddings."):
                torch.testing.assert_close(own[dec + "bert." + rest], value, rtol=0, atol=0)
        for i in range(n):
            layer = f"encoder.layer.{s.fusion_layer + i}."
            for key in [k for k in state if k.startswith(src + layer)]:
                target = f"{dec}bert.encoder.layer.{i}." + key[len(src + layer):]
                torch.testing.assert_close(own[target], state[key], rtol=0, atol=0, msg=target)
        for key in [k for k in state if k.startswith(f"text_encoder{suffix}.cls.")]:
            target = dec + key[len(f"text_encoder{suffix}."):]
            torch.testing.assert_close(own[target], state[key], rtol=0, atol=0, msg=target)
    # the tied LM decoder follows the (copied) word embeddings
    assert model.text_decoder.cls.predictions.decoder.weight is \
        model.text_decoder.bert.embeddings.word_embeddings.weight


def test_pretraining_checkpoint_with_another_image_width_leaves_decoder_cross_kv_initialised():
    s = Sizes()  # ViT width 48, BERT width 32: the fusion layers' k/v read 48-wide image tokens
    model = vqa_model(s)
    result = load_checkpoint(model, {"model": official_pretrain_state(s)}, strict=True)
    assert result.missing == [] and result.unexpected == []
    cross = sorted(k for k, why in result.tolerated.items() if "question states" in why)
    # online/_m x key/value weights of each decoder layer (the biases have the same shape)
    assert len(cross) == 2 * 2 * (s.layers - s.fusion_layer)
    assert all(k.endswith(("crossattention.self.key.weight", "crossattention.self.value.weight"))
               for k in cross)


def test_a_retrieval_checkpoint_is_refused_naming_the_missing_decoder():
    from albef_plugin.models.checkpoints import CheckpointError
    from checkpoints.official_layout import to_finetuned_layout

    model = vqa_model()
    with pytest.raises(CheckpointError, match="text_decoder"):
        load_checkpoint(model, {"model": to_finetuned_layout(official_pretrain_state(VQA_SIZES))},
                        strict=True)


# --------------------------------------------------------------- formula-level reference
def test_question_encoder_and_decoder_equal_the_official_formulas():
    s = VQA_SIZES
    state = official_vqa_state(s)
    model = vqa_model()
    load_checkpoint(model, {"model": state}, strict=True)
    model.eval()
    image, question_ids, question_mask = sample_inputs(s.image_size, s.vocab, batch=3, length=7)
    answer_ids, answer_mask = candidates()
    rows = torch.tensor([0, 0, 1, 2, 2, 2])  # question of each answer
    with torch.no_grad():
        for suffix, momentum in (("", False), ("_m", True)):
            states = model.encode_question(image, question_ids, question_mask, momentum=momentum)
            expected_states = official_question_states(state, image, question_ids, question_mask,
                                                       suffix=suffix)
            torch.testing.assert_close(states, expected_states, rtol=0, atol=1e-4)
            logits = model.answer_logits(answer_ids, answer_mask, states[rows], question_mask[rows],
                                         momentum=momentum)
            expected = official_decoder_logits(state, answer_ids, answer_mask, expected_states[rows],
                                               question_mask[rows], suffix=suffix)
            valid = answer_mask.bool()  # logits at padded positions are never used
            torch.testing.assert_close(logits[valid], expected[valid], rtol=0, atol=1e-4)


# ------------------------------------------------------------------------ training loss
def _hand_answer_loss(logits, teacher, ids, alpha):
    """Summed next-token CE and soft CE of one unpadded answer, token by token."""
    ce = soft = 0.0
    for t in range(1, ids.numel()):
        log_p = F.log_softmax(logits[t - 1], dim=-1)
        ce = ce - log_p[ids[t]]
        soft = soft - (F.softmax(teacher[t - 1], dim=-1) * log_p).sum()
    return (1 - alpha) * ce + alpha * soft


def test_training_loss_equals_the_hand_computation():
    model = vqa_model()
    with torch.no_grad():  # a teacher different from the student
        for p in model.text_decoder_m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()  # no dropout; the loss formula is the same as in training
    batch = model.dummy_batch(batch_size=4, seed=3)
    alpha = 0.3
    with torch.no_grad():
        loss = model(batch, TrainState(alpha=alpha))["losses"]["vqa"]
        expected = 0.0
        for a in range(batch["answer_ids"].shape[0]):
            q = int(batch["answer_question"][a])
            ids = batch["answer_ids"][a][batch["answer_mask"][a].bool()]
            args = (batch["image"][q:q + 1], batch["question_ids"][q:q + 1],
                    batch["question_mask"][q:q + 1])
            states = model.encode_question(*args)
            states_m = model.encode_question(*args, momentum=True)
            logits = model.answer_logits(ids[None], None, states, args[2])[0]
            teacher = model.answer_logits(ids[None], None, states_m, args[2], momentum=True)[0]
            expected += batch["answer_weights"][a] * _hand_answer_loss(logits, teacher, ids, alpha)
        expected /= batch["image"].shape[0]
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_training_step_moves_the_momentum_decoder_once_per_update():
    model = vqa_model(momentum=0.5).train()
    batch = model.dummy_batch(batch_size=2)
    with torch.no_grad():
        model.text_decoder.bert.embeddings.LayerNorm.bias.add_(1.0)
    before = model.text_decoder_m.bert.embeddings.LayerNorm.bias.clone()
    model(batch, TrainState(first_micro_batch=False))
    assert torch.equal(model.text_decoder_m.bert.embeddings.LayerNorm.bias, before)
    model(batch, TrainState(first_micro_batch=True))
    assert not torch.equal(model.text_decoder_m.bert.embeddings.LayerNorm.bias, before)


def test_a_batch_without_answers_is_a_clear_error():
    model = vqa_model()
    batch = model.dummy_batch(batch_size=2)
    del batch["answer_weights"]
    with pytest.raises(KeyError, match="answer_weights"):
        model(batch)


# ---------------------------------------------------------------------------- ranking
def _hand_ranking(model, image, question_ids, question_mask, answer_ids, answer_mask, k, twice):
    """rank_answer one question and one candidate at a time, without padding."""
    out_ids, out_probs = [], []
    for b in range(image.shape[0]):
        q_len = int(question_mask[b].sum())
        states = model.encode_question(image[b:b + 1], question_ids[b:b + 1, :q_len],
                                       question_mask[b:b + 1, :q_len])
        q_mask = question_mask[b:b + 1, :q_len]
        first = F.softmax(model.answer_logits(answer_ids[:1, :1], None, states, q_mask)[0, 0], -1)
        p_first = torch.stack([first[answer_ids[j, 1]] for j in range(answer_ids.shape[0])])
        kept = p_first.topk(k).indices
        scores = []
        for j in kept.tolist():
            ids = answer_ids[j][answer_mask[j].bool()]
            log_p = F.log_softmax(model.answer_logits(ids[None], None, states, q_mask)[0], -1)
            seq = sum(log_p[t - 1, ids[t]] for t in range(1, ids.numel()))
            scores.append(seq + (p_first[j].log() if twice else 0.0))
        probs = F.softmax(torch.stack(scores), dim=0)
        order = probs.argsort(descending=True)
        out_ids.append(kept[order])
        out_probs.append(probs[order])
    return torch.stack(out_ids), torch.stack(out_probs)


@pytest.mark.parametrize("twice", [True, False], ids=["official", "sequence_likelihood"])
def test_rank_answer_equals_the_hand_computation(twice):
    model = vqa_model(score_first_token_twice=twice).eval()
    image, question_ids, question_mask = sample_inputs(VQA_SIZES.image_size, VQA_SIZES.vocab,
                                                       batch=3, length=7)
    answer_ids, answer_mask = candidates()
    with torch.no_grad():
        ids, probs = model.rank_answer(image, question_ids, question_mask, answer_ids, answer_mask, 4)
        hand_ids, hand_probs = _hand_ranking(model, image, question_ids, question_mask, answer_ids,
                                             answer_mask, 4, twice)
    assert ids.shape == probs.shape == (3, 4)
    assert torch.equal(ids, hand_ids)
    torch.testing.assert_close(probs, hand_probs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))


def test_the_two_scores_differ_and_k_is_capped_by_the_number_of_answers():
    image, question_ids, question_mask = sample_inputs(VQA_SIZES.image_size, VQA_SIZES.vocab, batch=2)
    answer_ids, answer_mask = candidates()
    results = []
    for twice in (True, False):
        model = vqa_model(score_first_token_twice=twice).eval()
        with torch.no_grad():
            results.append(model.rank_answer(image, question_ids, question_mask, answer_ids,
                                             answer_mask, k=128))
    (ids_a, probs_a), (ids_b, probs_b) = results
    assert ids_a.shape == (2, answer_ids.shape[0])  # min(k, number of answers)
    assert sorted(ids_a[0].tolist()) == list(range(answer_ids.shape[0]))
    assert not torch.allclose(probs_a, probs_b)


def test_the_model_learns_question_dependent_answers_on_a_small_batch():
    """Fit six questions with six different answers (random images): rank_answer then returns
    each question's own answer, so the answer really depends on the question states."""
    torch.manual_seed(0)
    model = vqa_model(alpha=0.0, distill=False)
    image, question_ids, question_mask = sample_inputs(VQA_SIZES.image_size, VQA_SIZES.vocab,
                                                       batch=6, length=5, seed=4)
    answer_ids, answer_mask = candidates()
    batch = {"image": image, "question_ids": question_ids, "question_mask": question_mask,
             "answer_ids": answer_ids, "answer_mask": answer_mask,
             "answer_question": torch.arange(6), "answer_weights": torch.ones(6)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.eval()  # no dropout: a deterministic fit (measured: loss 12.2 -> 0.2 in 80 steps)
    for _ in range(100):
        optimizer.zero_grad()
        loss = model(batch)["losses"]["vqa"]
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        ids, _ = model.rank_answer(image, question_ids, question_mask, answer_ids, answer_mask, 6)
    assert loss.item() < 0.5
    assert ids[:, 0].tolist() == list(range(6))
