"""The official ``vqa.pth`` layout at a tiny size, and the decoder forward from its formulas.

``official_vqa_state(sizes)`` holds what the released VQA checkpoint holds, key for key (fact
sheet section 6): ``visual_encoder.*``, ``text_encoder.*`` (all layers, no ``bert.``),
``text_decoder.bert.{embeddings, encoder.layer.0..n-1}.*`` (every layer with cross-attention),
``text_decoder.cls.predictions.*`` and the ``_m`` copies; no projections, ITM head or queues.
Every tensor has its own random values.

``official_decoder_logits`` computes the answer decoder straight from those tensors (section
2.2): causal self-attention with the official additive masks ``(1 - mask) * -10000``,
cross-attention to the question states masked by the question mask, post-LN, the LM head.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict

import torch

from checkpoints.official_layout import Sizes, _bert_shapes, _random, _vit_shapes
from checkpoints.official_reference import (BERT_EPS, _bert_attention, _gelu, _linear, _norm,
                                            bert_layers, embeddings, mlm_head, vit)

State = Dict[str, torch.Tensor]
# ViT width = BERT width, as at paper size (768): the decoder copies the fusion layers
VQA_SIZES = Sizes(width=32)


def official_vqa_state(s: Sizes = VQA_SIZES, seed: int = 0) -> State:
    """The state dict of an official fine-tuned VQA checkpoint (``vqa.pth``)."""
    gen = torch.Generator().manual_seed(seed)
    decoder_sizes = replace(s, layers=s.layers - s.fusion_layer, fusion_layer=0, width=s.hidden)
    state: State = {}
    for suffix in ("", "_m"):
        for key, shape in _vit_shapes(s, s.image_size // s.patch).items():
            state[f"visual_encoder{suffix}.{key}"] = _random(shape, key, gen)
        for key, shape in _bert_shapes(s).items():
            if key.startswith("bert."):
                state[f"text_encoder{suffix}.{key[len('bert.'):]}"] = _random(shape, key, gen)
        for key, shape in _bert_shapes(decoder_sizes).items():
            state[f"text_decoder{suffix}.{key}"] = _random(shape, key, gen)
        decoder = f"text_decoder{suffix}."
        state[decoder + "cls.predictions.decoder.weight"] = \
            state[decoder + "bert.embeddings.word_embeddings.weight"]
        state[decoder + "cls.predictions.decoder.bias"] = state[decoder + "cls.predictions.bias"]
    return state


def official_question_states(sd: State, image, question_ids, question_mask, s: Sizes = VQA_SIZES,
                             suffix: str = ""):
    image_embeds = vit(sd, image, s.vit_heads, prefix=f"visual_encoder{suffix}.")
    text = embeddings(sd, question_ids, prefix=f"text_encoder{suffix}.")
    return bert_layers(sd, text, question_mask, 0, s.layers, s.bert_heads, image_embeds,
                       prefix=f"text_encoder{suffix}.", fusion_layer=s.fusion_layer)


def official_decoder_logits(sd: State, answer_ids, answer_mask, question_states, question_mask,
                            s: Sizes = VQA_SIZES, suffix: str = "") -> torch.Tensor:
    """``[N, La, V]`` logits of the official ``BertLMHeadModel`` decoder."""
    prefix = f"text_decoder{suffix}.bert."
    length = answer_ids.shape[1]
    causal = torch.ones(length, length).tril()
    self_mask = (1.0 - causal[None, None] * answer_mask[:, None, None, :].float()) * -10000.0
    cross_mask = (1.0 - question_mask[:, None, None, :].float()) * -10000.0
    hidden = embeddings(sd, answer_ids, prefix=prefix)
    for i in range(s.layers - s.fusion_layer):
        layer = f"{prefix}encoder.layer.{i}."
        hidden = _bert_attention(hidden, hidden, sd, layer + "attention.", s.bert_heads, self_mask)
        hidden = _bert_attention(hidden, question_states, sd, layer + "crossattention.",
                                 s.bert_heads, cross_mask)
        inner = _gelu(_linear(hidden, sd, layer + "intermediate.dense"))
        hidden = _norm(_linear(inner, sd, layer + "output.dense") + hidden, sd,
                       layer + "output.LayerNorm", BERT_EPS)
    return mlm_head(sd, hidden, prefix=f"text_decoder{suffix}.cls.predictions.")
