"""BERT text / fusion encoder on ``scaled_dot_product_attention``.

One BERT stack serves ALBEF's text encoder and its fusion (multimodal) encoder: layers
``[0, fusion_layer)`` are plain self-attention blocks, layers ``[fusion_layer, N)`` add a
cross-attention to the image tokens between self-attention and the feed-forward block
(post-LN, as in BERT). The same layers with ``is_causal=True`` and ``fusion_layer=0`` make the
answer decoder of VQA.

Module and attribute names follow Hugging Face BERT and the official ALBEF ``xbert.py``
(``embeddings.word_embeddings``, ``encoder.layer.N.attention.self.query``,
``encoder.layer.N.crossattention.output.LayerNorm``, ``cls.predictions.transform.dense``, ...):
they are checkpoint keys, so official and Hugging Face weights load without renaming.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "BertConfig",
    "BertEmbeddings",
    "BertLayer",
    "BertEncoder",
    "BertModel",
    "BertForMaskedLM",
    "BertMode",
    "attention_mask_for_sdpa",
]

BertMode = Literal["text", "fusion", "multimodal"]


@dataclass(frozen=True)
class BertConfig:
    """Structure of a BERT stack (plain dataclass; no OmegaConf here).

    ``fusion_layer``: index of the first layer with cross-attention; equal to
    ``num_hidden_layers`` for a text-only BERT, 0 for a decoder that cross-attends everywhere.
    ``encoder_width``: width of the image tokens that cross-attention reads.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    fusion_layer: int = 6
    encoder_width: int = 768
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BERT hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}; pick sizes where it is.")
        if not 0 <= self.fusion_layer <= self.num_hidden_layers:
            raise ValueError(
                f"BERT fusion_layer={self.fusion_layer} must lie in [0, num_hidden_layers="
                f"{self.num_hidden_layers}] (num_hidden_layers means no cross-attention).")


def attention_mask_for_sdpa(attention_mask: Optional[torch.Tensor], is_causal: bool = False,
                            query_length: Optional[int] = None) -> Optional[torch.Tensor]:
    """Turn a ``[B, L]`` padding mask (1 = token, 0 = pad) into an SDPA boolean mask.

    Returns ``[B, 1, 1, L]`` (True = may attend), or ``[B, 1, Lq, L]`` combined with a lower
    triangle when ``is_causal``; None when there is nothing to mask (SDPA then picks its
    fastest kernel). A mask that already has 4 dims is passed through unchanged.
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() == 4:
        return attention_mask
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be [B, L] (1 = token, 0 = padding), "
                         f"got shape {tuple(attention_mask.shape)}")
    mask = attention_mask.bool()[:, None, None, :]
    if is_causal:
        length = attention_mask.shape[1]
        q_len = length if query_length is None else query_length
        causal = torch.ones(q_len, length, dtype=torch.bool, device=attention_mask.device)
        causal = causal.tril(diagonal=length - q_len)
        mask = mask & causal
    return mask


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout.

    ALBEF always uses token type 0, so the token-type row 0 is added to every position.
    """

    def __init__(self, vocab_size: int, hidden_size: int, max_position_embeddings: int,
                 type_vocab_size: int, pad_token_id: int, layer_norm_eps: float,
                 hidden_dropout_prob: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(max_position_embeddings, hidden_size)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout_prob)
        # Non-persistent: the official checkpoint carries it, the loader tolerates it either way.
        self.register_buffer("position_ids", torch.arange(max_position_embeddings)[None],
                             persistent=False)

    def forward(self, input_ids: torch.Tensor, past_length: int = 0) -> torch.Tensor:
        """``input_ids [B, L]`` -> embeddings ``[B, L, H]``."""
        length = input_ids.shape[1]
        if past_length + length > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"text of {past_length + length} tokens is longer than max_position_embeddings="
                f"{self.position_embeddings.num_embeddings}; truncate it in the text processor.")
        positions = self.position_ids[:, past_length:past_length + length]
        embeddings = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
                      + self.token_type_embeddings.weight[0])
        return self.dropout(self.LayerNorm(embeddings))


class BertSelfAttention(nn.Module):
    """Multi-head attention; queries from ``hidden``, keys/values from ``context``.

    ``key``/``value`` read ``context_width`` features: the hidden size for self-attention,
    the image width for cross-attention.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float,
                 context_width: Optional[int] = None) -> None:
        super().__init__()
        context_width = context_width or hidden_size
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(context_width, hidden_size)
        self.value = nn.Linear(context_width, hidden_size)
        self.dropout_p = dropout
        # Grad-CAM: when True, attention runs through an explicit softmax(q k^T / sqrt(d)) and
        # the probabilities [B, heads, Lq, Lk] are kept in ``attention_map`` (part of the autograd
        # graph, so their gradient is torch.autograd.grad(score, attention_map)). Off by
        # default: training and every other layer stay on scaled_dot_product_attention, which
        # never materialises the map. See albef_plugin.inference.gradcam.
        self.record_attention = False
        self.attention_map: Optional[torch.Tensor] = None

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor,
                mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        """``hidden [B, Lq, H]``, ``context [B, Lk, C]``, ``mask`` bool ``[B, 1, Lq|1, Lk]`` ->
        ``[B, Lq, H]``. ``is_causal`` is only used when ``mask`` is None."""
        query = self._split_heads(self.query(hidden))
        key = self._split_heads(self.key(context))
        value = self._split_heads(self.value(context))
        if self.record_attention:
            out = self._explicit_attention(query, key, value, mask, is_causal and mask is None)
        else:
            out = F.scaled_dot_product_attention(
                query, key, value, attn_mask=mask,
                dropout_p=self.dropout_p if self.training else 0.0,
                is_causal=is_causal and mask is None)
        batch, _, length, _ = out.shape
        return out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)

    def _explicit_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            mask: Optional[torch.Tensor], is_causal: bool) -> torch.Tensor:
        """What SDPA computes, with the probabilities kept in ``attention_map`` (Grad-CAM)."""
        scores = query @ key.transpose(-2, -1) / math.sqrt(self.head_dim)
        if is_causal:
            q_len, k_len = scores.shape[-2:]
            mask = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
        if mask is not None:
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask, float("-inf"))
            else:
                scores = scores + mask
        probs = scores.softmax(dim=-1)
        self.attention_map = probs
        if self.training and self.dropout_p > 0:
            probs = F.dropout(probs, self.dropout_p)
        return probs @ value


class BertAttention(nn.Module):
    """``self`` (the attention proper, HF's name) + ``output`` (projection and post-LN)."""

    def __init__(self, config: BertConfig, context_width: Optional[int] = None) -> None:
        super().__init__()
        self.self = BertSelfAttention(config.hidden_size, config.num_attention_heads,
                                      config.attention_probs_dropout_prob, context_width)
        self.output = BertOutput(config.hidden_size, config.hidden_size, config.layer_norm_eps,
                                 config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor,
                mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        return self.output(self.self(hidden, context, mask, is_causal), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(hidden))  # exact (erf) GELU, as BERT


class BertOutput(nn.Module):
    """Projection, dropout, residual and post-LN: after an attention (HF's ``BertSelfOutput``,
    ``input_size`` = hidden) and after the feed-forward (``input_size`` = intermediate)."""

    def __init__(self, input_size: int, hidden_size: int, layer_norm_eps: float,
                 dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(input_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertLayer(nn.Module):
    """Self-attention, optional cross-attention to image tokens, feed-forward (all post-LN)."""

    def __init__(self, config: BertConfig, has_cross_attention: bool) -> None:
        super().__init__()
        self.has_cross_attention = has_cross_attention
        self.attention = BertAttention(config)
        if has_cross_attention:
            self.crossattention = BertAttention(config, context_width=config.encoder_width)
        self.intermediate = BertIntermediate(config.hidden_size, config.intermediate_size)
        self.output = BertOutput(config.intermediate_size, config.hidden_size,
                                 config.layer_norm_eps, config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, mask: Optional[torch.Tensor] = None,
                encoder_hidden_states: Optional[torch.Tensor] = None,
                encoder_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        """``hidden [B, L, H]`` -> ``[B, L, H]``; ``encoder_hidden_states [B, N, C]`` is required
        in a layer with cross-attention."""
        hidden = self.attention(hidden, hidden, mask, is_causal)
        if self.has_cross_attention:
            if encoder_hidden_states is None:
                raise ValueError("this BERT layer has cross-attention (index >= fusion_layer) "
                                 "and needs encoder_hidden_states (the image tokens)")
            hidden = self.crossattention(hidden, encoder_hidden_states, encoder_mask)
        return self.output(self.intermediate(hidden), hidden)


class BertEncoder(nn.Module):
    """The stack of layers; layers ``>= fusion_layer`` have cross-attention."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            BertLayer(config, has_cross_attention=index >= config.fusion_layer)
            for index in range(config.num_hidden_layers))
        self.gradient_checkpointing = False

    def forward(self, hidden: torch.Tensor, mask: Optional[torch.Tensor],
                encoder_hidden_states: Optional[torch.Tensor] = None,
                encoder_mask: Optional[torch.Tensor] = None, start: int = 0,
                end: Optional[int] = None, is_causal: bool = False) -> torch.Tensor:
        """Run layers ``[start, end)`` on ``hidden [B, L, H]``."""
        use_checkpoint = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layer[start:end]:
            if use_checkpoint:
                # non-reentrant: works with inputs that do not require grad and keeps dropout RNG
                hidden = checkpoint(layer, hidden, mask, encoder_hidden_states, encoder_mask,
                                    is_causal, use_reentrant=False)
            else:
                hidden = layer(hidden, mask, encoder_hidden_states, encoder_mask, is_causal)
        return hidden


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT initialisation: normal(0, std) for Linear and Embedding, zero biases and padding
    rows, LayerNorm ones/zeros. Use with ``module.apply``."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class BertModel(nn.Module):
    """BERT without pooler: ``embeddings`` + ``encoder``, split at ``fusion_layer``.

    Modes (as the official ``xbert``):
      * ``"text"``: token ids through layers ``[0, fusion_layer)`` (the text encoder);
      * ``"fusion"``: ``encoder_embeds`` (the text encoder's output) through layers
        ``[fusion_layer, N)``, cross-attending to ``encoder_hidden_states``;
      * ``"multimodal"``: token ids through all layers.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(
            config.vocab_size, config.hidden_size, config.max_position_embeddings,
            config.type_vocab_size, config.pad_token_id, config.layer_norm_eps,
            config.hidden_dropout_prob)
        self.encoder = BertEncoder(config)
        self.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.gradient_checkpointing = enable

    def forward(self, input_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None,
                encoder_embeds: Optional[torch.Tensor] = None,
                encoder_hidden_states: Optional[torch.Tensor] = None,
                encoder_attention_mask: Optional[torch.Tensor] = None,
                mode: BertMode = "multimodal", is_causal: bool = False) -> torch.Tensor:
        """Last hidden states ``[B, L, H]``.

        Args:
            input_ids: ``[B, L]`` token ids (modes text and multimodal).
            attention_mask: ``[B, L]`` 1 for tokens, 0 for padding; None = no padding.
            encoder_embeds: ``[B, L, H]`` text-encoder output (mode fusion).
            encoder_hidden_states: ``[B, N, C]`` image tokens for cross-attention.
            encoder_attention_mask: ``[B, N]``; None means all image tokens are valid (ALBEF).
            is_causal: left-to-right self-attention (the VQA answer decoder).
        """
        fusion_layer = self.config.fusion_layer
        if mode == "text":
            start, end = 0, fusion_layer
        elif mode == "fusion":
            start, end = fusion_layer, None
        elif mode == "multimodal":
            start, end = 0, None
        else:
            raise ValueError(f"BERT mode must be 'text', 'fusion' or 'multimodal', got {mode!r}")
        if mode == "fusion":
            if encoder_embeds is None:
                raise ValueError("BERT mode 'fusion' needs encoder_embeds (text-encoder output)")
            hidden = encoder_embeds
        else:
            if input_ids is None:
                raise ValueError(f"BERT mode {mode!r} needs input_ids")
            hidden = self.embeddings(input_ids)
        mask = attention_mask_for_sdpa(attention_mask, is_causal)
        encoder_mask = attention_mask_for_sdpa(encoder_attention_mask)
        return self.encoder(hidden, mask, encoder_hidden_states, encoder_mask, start, end,
                            is_causal=is_causal)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, hidden_size: int, layer_norm_eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(hidden)))


class BertLMPredictionHead(nn.Module):
    """``transform`` then ``decoder`` (weight tied to the word embeddings) plus ``bias``.

    As in Hugging Face, ``decoder.bias`` *is* the ``bias`` parameter, so both keys appear in
    the state dict and hold the same tensor.
    """

    def __init__(self, hidden_size: int, vocab_size: int, layer_norm_eps: float) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(hidden_size, layer_norm_eps)
        self.decoder = nn.Linear(hidden_size, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.decoder.bias = self.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., H]`` -> vocabulary logits ``[..., V]``."""
        return self.decoder(self.transform(hidden))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, hidden_size: int, vocab_size: int, layer_norm_eps: float) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(hidden_size, vocab_size, layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden)


class BertForMaskedLM(nn.Module):
    """``bert`` (:class:`BertModel`) + ``cls`` (the MLM head), decoder tied to the embeddings.

    ``forward`` returns hidden states (so callers can pick positions before the costly
    vocabulary projection); ``cls(hidden)`` gives logits; ``logits(...)`` does both.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertOnlyMLMHead(config.hidden_size, config.vocab_size, config.layer_norm_eps)
        self.cls.apply(lambda m: init_bert_weights(m, config.initializer_range))
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the decoder weight with the word embeddings (BERT's tied MLM head)."""
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.bert.set_grad_checkpointing(enable)

    def forward(self, input_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None,
                encoder_embeds: Optional[torch.Tensor] = None,
                encoder_hidden_states: Optional[torch.Tensor] = None,
                encoder_attention_mask: Optional[torch.Tensor] = None,
                mode: BertMode = "multimodal", is_causal: bool = False) -> torch.Tensor:
        """Hidden states ``[B, L, H]``; same arguments as :meth:`BertModel.forward`."""
        return self.bert(input_ids, attention_mask, encoder_embeds, encoder_hidden_states,
                         encoder_attention_mask, mode, is_causal)

    def logits(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
               encoder_hidden_states: Optional[torch.Tensor] = None,
               encoder_attention_mask: Optional[torch.Tensor] = None,
               is_causal: bool = False) -> torch.Tensor:
        """Vocabulary logits ``[B, L, V]`` of the full stack (mode multimodal)."""
        hidden = self.bert(input_ids, attention_mask, None, encoder_hidden_states,
                           encoder_attention_mask, "multimodal", is_causal)
        return self.cls(hidden)

