"""Config blocks and builders shared by the ALBEF models (pre-training and the task models).

The dataclasses are the typed ``image_encoder`` / ``text_encoder`` sub-configs; the builders
turn them into modules with plain keyword arguments, so the modules never see OmegaConf.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from albef_plugin.models.bert import BertConfig, BertForMaskedLM, BertModel
from albef_plugin.models.vit import VisionEncoder

__all__ = ["ImageEncoderConfig", "TextEncoderConfig", "build_visual_encoder",
           "bert_config_from", "build_text_encoder_mlm", "build_text_encoder"]


@dataclass
class ImageEncoderConfig:
    image_size: int = 256            # 256 for pre-training, 384 for fine-tuning
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0      # ALBEF uses none
    pretrained: Optional[str] = None  # DeiT weights; loaded by models/checkpoints.py (later task)


@dataclass
class TextEncoderConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    fusion_layer: int = 6            # layers [0, 6) text encoder, [6, 12) fusion encoder
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    cls_token_id: int = 101
    mask_token_id: int = 103
    pretrained: Optional[str] = None  # bert-base-uncased weights; loaded by a later task


def build_visual_encoder(cfg: Any) -> VisionEncoder:
    """ViT from an ``ImageEncoderConfig``-shaped config."""
    return VisionEncoder(image_size=cfg.image_size, patch_size=cfg.patch_size, width=cfg.width,
                         depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
                         drop_path_rate=cfg.drop_path_rate)


def bert_config_from(cfg: Any, encoder_width: int) -> BertConfig:
    """``BertConfig`` from a ``TextEncoderConfig``-shaped config; cross-attention reads
    ``encoder_width``-wide image tokens."""
    return BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size, hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_eps,
        pad_token_id=cfg.pad_token_id, fusion_layer=cfg.fusion_layer,
        encoder_width=encoder_width)


def build_text_encoder_mlm(cfg: Any, encoder_width: int) -> BertForMaskedLM:
    """BERT with the MLM head (pre-training: ``text_encoder.bert.*`` + ``text_encoder.cls.*``)."""
    return BertForMaskedLM(bert_config_from(cfg, encoder_width))


def build_text_encoder(cfg: Any, encoder_width: int) -> BertModel:
    """BERT without head (retrieval: ``text_encoder.embeddings.*``, ``text_encoder.encoder.*``)."""
    return BertModel(bert_config_from(cfg, encoder_width))
