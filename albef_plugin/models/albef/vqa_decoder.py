"""The VQA answer decoder and the tensor formulas of its loss and answer ranking.

The decoder is a BERT language model (``text_decoder.bert.*`` + ``text_decoder.cls.*``, the
official ``BertLMHeadModel`` names) whose every layer has causal self-attention and
cross-attention (``fusion_layer = 0``) to the question encoder's final states. Answers are
``[CLS] answer [SEP]``: ``[CLS]`` acts as the begin-of-sequence token.

The functions here are pure functions of tensors (no module state, no host syncs), so the
model, the tests' hand computations and other code share one definition:

* :func:`answer_token_losses`: per-answer summed next-token cross-entropy, optionally mixed
  with the soft cross-entropy against a teacher's distribution (momentum distillation);
* :func:`rank_candidates`: the official ``rank_answer`` given the decoder as a callable.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from albef_plugin.models.albef.components import bert_config_from
from albef_plugin.models.bert import BertForMaskedLM

__all__ = ["build_answer_decoder", "decoder_logits", "answer_token_losses", "rank_candidates",
           "IGNORE_INDEX"]

IGNORE_INDEX = -100
Alpha = Union[float, torch.Tensor]
# (answer_ids [N, L], answer_mask [N, L], question_states [N, Lq, H], question_mask [N, Lq])
#   -> vocabulary logits [N, L, V]
DecoderFn = Callable[[torch.Tensor, Optional[torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


def build_answer_decoder(text_cfg, num_layers: int) -> BertForMaskedLM:
    """``num_layers`` BERT layers, all with cross-attention to ``hidden_size``-wide question
    states, plus the LM head tied to the word embeddings (the official decoder config:
    the text config with ``fusion_layer = 0`` and ``num_hidden_layers = n``)."""
    base = bert_config_from(text_cfg, encoder_width=int(text_cfg.hidden_size))
    return BertForMaskedLM(dataclasses.replace(base, num_hidden_layers=num_layers, fusion_layer=0))


def decoder_logits(decoder: BertForMaskedLM, answer_ids: torch.Tensor,
                   answer_mask: Optional[torch.Tensor], question_states: torch.Tensor,
                   question_mask: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits ``[N, L, V]`` of the causal decoder over ``answer_ids [N, L]``,
    cross-attending to ``question_states [N, Lq, H]`` masked by ``question_mask [N, Lq]``."""
    hidden = decoder(answer_ids, answer_mask, encoder_hidden_states=question_states,
                     encoder_attention_mask=question_mask, mode="multimodal", is_causal=True)
    return decoder.cls(hidden)


def answer_token_losses(logits: torch.Tensor, answer_ids: torch.Tensor, answer_mask: torch.Tensor,
                        teacher_logits: Optional[torch.Tensor] = None,
                        alpha: Alpha = 0.0) -> torch.Tensor:
    """Per-answer loss ``[N]`` of the official decoder (``xbert.BertLMHeadModel``).

    Position ``t`` predicts token ``t + 1``; padding (``answer_mask == 0``) is ignored. The
    loss is the *sum* over the answer's tokens of the cross-entropy. With ``teacher_logits``
    (the momentum decoder's ``[N, L, V]``), it is ``(1 - alpha) * CE + alpha * soft``, where
    ``soft`` sums ``-sum_v softmax(teacher)_v * log_softmax(logits)_v`` over the same tokens.
    """
    shifted = logits[:, :-1].float()
    labels = answer_ids[:, 1:].masked_fill(answer_mask[:, 1:] == 0, IGNORE_INDEX)
    ce = F.cross_entropy(shifted.transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                         reduction="none").sum(dim=1)
    if teacher_logits is None:
        return ce
    soft_targets = F.softmax(teacher_logits[:, :-1].float(), dim=-1)
    soft = -(F.log_softmax(shifted, dim=-1) * soft_targets).sum(dim=-1)
    soft = (soft * (labels != IGNORE_INDEX)).sum(dim=1)
    return (1 - alpha) * ce + alpha * soft


def rank_candidates(decode: DecoderFn, question_states: torch.Tensor, question_mask: torch.Tensor,
                    answer_ids: torch.Tensor, answer_mask: torch.Tensor, k: int,
                    first_token_twice: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """The official ``rank_answer``: ``(topk_ids [B, k'], topk_probs [B, k'])``, k' = min(k, N).

    1. Decode ``[CLS]`` once per question: the first-token distribution ``p1 [B, V]``.
    2. Keep the k' candidates (rows of ``answer_ids [N, L]``, ``[CLS] a [SEP] [PAD]...``)
       whose first token (position 1) is most probable.
    3. Teacher-force each kept candidate: ``log p(answer) = -sum of its token losses``.
       The official score adds ``log p1(first token)`` once more, so the first token counts
       twice (``first_token_twice=True``); ``False`` gives the plain sequence log-likelihood.
    4. Softmax over the k' scores; candidates sorted by it (column 0 is the answer).

    ``topk_ids`` index rows of ``answer_ids``. Everything stays on the device (no host sync).
    """
    batch, num_answers = question_states.shape[0], answer_ids.shape[0]
    k = min(int(k), num_answers)
    start_ids = answer_ids[:1, :1].expand(batch, 1)  # [CLS] as BOS
    first_logits = decode(start_ids, None, question_states, question_mask)[:, 0]
    first_probs = F.softmax(first_logits.float(), dim=-1).index_select(1, answer_ids[:, 1])
    topk_probs, topk_ids = first_probs.topk(k, dim=1)                         # [B, k]

    flat = topk_ids.reshape(-1)
    ids, mask = answer_ids.index_select(0, flat), answer_mask.index_select(0, flat)  # [B*k, L]
    states = question_states.repeat_interleave(k, dim=0)
    states_mask = question_mask.repeat_interleave(k, dim=0)
    log_likelihood = -answer_token_losses(decode(ids, mask, states, states_mask), ids, mask)
    scores = log_likelihood.view(batch, k)
    if first_token_twice:
        scores = scores + topk_probs.log()
    probs, order = F.softmax(scores, dim=-1).topk(k, dim=1)
    return topk_ids.gather(1, order), probs
