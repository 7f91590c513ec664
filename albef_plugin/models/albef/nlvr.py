"""ALBEF for NLVR2: ``albef_nlvr`` (fine-tuning) and ``albef_nlvr_ta`` (text-assignment pre-training).

Official ``models/model_nlvr.py`` / ``model_pretrain_nlvr.py`` (fact sheet 2.3). The BERT has
``fusion_layer`` text layers followed by *pairs* of fusion blocks, one pair per fusion layer of
the pre-training model (6 + 2 x 6 = 18 layers at paper size): block ``fusion_layer + 2j``
cross-attends to image 0, block ``fusion_layer + 2j + 1`` to image 1, and the two blocks of a
pair share their cross-attention key and value modules. Both images go through the ViT in one
batch. ``text_encoder.num_hidden_layers`` / ``fusion_layer`` in the config describe the
pre-training BERT the pairs are made from (12 / 6 at paper size).

- ``albef_nlvr``: ``cls_head`` (Linear, ReLU, Linear) to 2 classes ("True" 1, "False" 0);
  ``(1 - alpha) * CE + alpha * soft-CE`` against the momentum model, alpha ramped over the
  first epoch (official ``warm_up: True``).
- ``albef_nlvr_ta``: one image per caption; for each caption the batch supplies hard negative
  images, sampled from softmax(vision_proj similarity / 0.07) with the diagonal zeroed: with
  probability 2/3 the true image goes to slot 0 (label 0) or slot 1 (label 1) next to a
  negative, otherwise two negatives fill both slots (label 2, "neither"); ``ta_head`` Linear
  to 3, plain CE, no momentum model. ``vision_proj`` only picks negatives (under no_grad).

State-dict keys are the official ones: ``text_encoder.encoder.layer.0-17.*`` (the shared key /
value tensors listed under both layer indices of a pair), ``cls_head.{0,2}``, the ``_m``
copies; TA: ``vision_proj``, ``ta_head``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from albef_plugin.models.albef.components import (ImageEncoderConfig, TextEncoderConfig,
                                                  bert_config_from, build_visual_encoder)
from albef_plugin.models.albef.ve import TaskModelConfig, _ClassifierBase, classifier_head
from albef_plugin.models.base import BaseModel, packaged_model_yaml
from albef_plugin.models.bert import BertModel, attention_mask_for_sdpa
from albef_plugin.registry import registry
from albef_plugin.train_state import TrainState

__all__ = ["ALBEFNLVR", "ALBEFNLVRTextAssignment", "build_paired_text_encoder", "paired_fusion",
           "paired_depth", "TA_TEMPERATURE"]

TA_TEMPERATURE = 0.07  # fixed in the official TA code (not the learnable ITC temp)


def paired_depth(num_hidden_layers: int, fusion_layer: int) -> int:
    """Layers of the NLVR2 BERT made from a pre-training BERT of that depth."""
    return fusion_layer + 2 * (num_hidden_layers - fusion_layer)


def build_paired_text_encoder(cfg: Any, encoder_width: int) -> BertModel:
    """The NLVR2 BERT: text layers + pairs of fusion blocks sharing cross-attention key / value.

    As in the official code, the two blocks of a pair hold the *same* key and value modules, so
    ``state_dict()`` lists those tensors under both layer indices and ``parameters()`` once.
    """
    base = bert_config_from(cfg, encoder_width)
    bert = BertModel(replace(base, num_hidden_layers=paired_depth(base.num_hidden_layers,
                                                                   base.fusion_layer)))
    layers = bert.encoder.layer
    for first in range(base.fusion_layer, len(layers), 2):
        shared, other = layers[first].crossattention.self, layers[first + 1].crossattention.self
        other.key, other.value = shared.key, shared.value
    return bert


def paired_fusion(bert: BertModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  image0_embeds: torch.Tensor, image1_embeds: torch.Tensor) -> torch.Tensor:
    """All layers from the token ids; fusion block ``i`` cross-attends to image
    ``(i - fusion_layer) % 2`` -> hidden states ``[B, L, H]``."""
    fusion_layer = bert.config.fusion_layer
    hidden = bert.embeddings(input_ids)
    mask = attention_mask_for_sdpa(attention_mask)
    images = (image0_embeds, image1_embeds)
    use_checkpoint = bert.encoder.gradient_checkpointing and bert.training and torch.is_grad_enabled()
    for index, layer in enumerate(bert.encoder.layer):
        image = images[(index - fusion_layer) % 2] if index >= fusion_layer else None
        if use_checkpoint:
            hidden = checkpoint(layer, hidden, mask, image, None, False, use_reentrant=False)
        else:
            hidden = layer(hidden, mask, image)
    return hidden


def _paired_image_embeds(visual_encoder: nn.Module, image0: torch.Tensor, image1: torch.Tensor
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both images through the ViT in one batch, then split."""
    embeds = visual_encoder(torch.cat([image0, image1]))
    return embeds[: image0.shape[0]], embeds[image0.shape[0]:]


@dataclass
class NLVRConfig(TaskModelConfig):
    alpha_ramp_epochs: float = 1.0  # official NLVR: warm_up True (alpha ramps over epoch 0)
    # The official NLVR.py copies the online weights into the momentum model *before* loading
    # the TA checkpoint, which has no momentum copies: the momentum model then starts from the
    # fresh (BERT / random) initialisation and only catches up through the EMA. False (the fix):
    # a checkpoint without momentum copies initialises them from its online weights.
    official_momentum_init: bool = False


@registry.register_model("albef_nlvr")
class ALBEFNLVR(_ClassifierBase):
    """NLVR2 classifier; see the module docstring."""

    Config = NLVRConfig
    num_classes = 2
    _name = "albef_nlvr"

    @classmethod
    def config_path(cls) -> Optional[str]:
        return packaged_model_yaml("albef_nlvr")

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        cfg = self.config
        self.official_momentum_init = bool(cfg.official_momentum_init)
        self.visual_encoder = build_visual_encoder(cfg.image_encoder)
        self.text_encoder = build_paired_text_encoder(cfg.text_encoder, cfg.image_encoder.width)
        self.cls_head = classifier_head(cfg.text_encoder.hidden_size, self.num_classes)
        self._build_momentum()
        if cfg.gradient_checkpointing:
            self.set_grad_checkpointing(True)
        self._load_configured_weights()

    def classify(self, image0: torch.Tensor, image1: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        """Logits ``[B, 2]`` (index 1 = "True") of the online (or momentum) model."""
        suffix = "_m" if momentum else ""
        embeds0, embeds1 = _paired_image_embeds(getattr(self, "visual_encoder" + suffix),
                                                image0, image1)
        hidden = paired_fusion(getattr(self, "text_encoder" + suffix), input_ids, attention_mask,
                               embeds0, embeds1)
        return getattr(self, "cls_head" + suffix)(hidden[:, 0])

    def forward(self, batch: Dict[str, Any],
                train_state: Optional[TrainState] = None) -> Dict[str, Any]:
        """``{"logits": [B, 2], "losses": {"ce"} (with labels), "metrics": {"accuracy"}}``.

        Batch: ``image0``, ``image1`` ``[B, 3, H, W]`` (left, right), ``input_ids [B, L]``,
        ``attention_mask [B, L]``, optional ``label [B]`` (1 = "True").
        """
        self._require(batch, ("image0", "image1", "input_ids", "attention_mask"),
                      "image0 and image1 [B,3,H,W], input_ids [B,L], attention_mask [B,L]")
        args = (batch["image0"], batch["image1"], batch["input_ids"], batch["attention_mask"])
        logits = self.classify(*args)
        return self._outputs(logits, batch, train_state, lambda: self.classify(*args, momentum=True))


@dataclass
class NLVRTAConfig:
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    embed_dim: int = 256                # vision_proj output (from the pre-training checkpoint)
    single_negative_probability: float = 2 / 3  # else two negatives, label 2 ("neither")
    gradient_checkpointing: bool = False
    checkpoint: Optional[str] = None
    allow_unsafe_pickle: bool = False


@registry.register_model("albef_nlvr_ta")
class ALBEFNLVRTextAssignment(BaseModel):
    """Text-assignment pre-training for NLVR2; see the module docstring."""

    Config = NLVRTAConfig
    # used without gradient by design: picks the hard negatives under no_grad
    params_without_grad: Tuple[str, ...] = ("vision_proj.",)

    @classmethod
    def config_path(cls) -> Optional[str]:
        return packaged_model_yaml("albef_nlvr_ta")

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        cfg = self.config
        self.single_negative_probability = float(cfg.single_negative_probability)
        self.visual_encoder = build_visual_encoder(cfg.image_encoder)
        self.text_encoder = build_paired_text_encoder(cfg.text_encoder, cfg.image_encoder.width)
        self.vision_proj = nn.Linear(cfg.image_encoder.width, cfg.embed_dim)
        self.ta_head = nn.Linear(cfg.text_encoder.hidden_size, 3)
        if cfg.gradient_checkpointing:
            self.visual_encoder.set_grad_checkpointing(True)
            self.text_encoder.set_grad_checkpointing(True)
        from albef_plugin.models.checkpoints import load_checkpoint
        from albef_plugin.models.pretrained import load_initial_weights
        load_initial_weights(self, cfg.image_encoder.pretrained, cfg.text_encoder.pretrained,
                             allow_unsafe_pickle=bool(cfg.allow_unsafe_pickle))
        if cfg.checkpoint:
            load_checkpoint(self, cfg.checkpoint, strict=True,
                            allow_unsafe_pickle=bool(cfg.allow_unsafe_pickle))

    @torch.no_grad()
    def negative_weights(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``[B, B]`` sampling weights: softmax(image-image similarity / 0.07), diagonal zeroed."""
        feat = F.normalize(self.vision_proj(image_embeds[:, 0]).float(), dim=-1)
        weights = torch.softmax(feat @ feat.t() / TA_TEMPERATURE, dim=1)
        # a floor keeps every other image drawable when the softmax underflows (duplicates)
        weights = weights + 1e-12
        return weights.fill_diagonal_(0)

    def assign(self, image_embeds: torch.Tensor, input_ids: torch.Tensor,
               attention_mask: torch.Tensor, slot0: torch.Tensor, slot1: torch.Tensor
               ) -> torch.Tensor:
        """TA logits ``[B, 3]`` for caption b with images ``slot0[b]``, ``slot1[b]``."""
        hidden = paired_fusion(self.text_encoder, input_ids, attention_mask,
                               image_embeds[slot0], image_embeds[slot1])
        return self.ta_head(hidden[:, 0])

    def sample_assignment(self, weights: torch.Tensor
                          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image indices for both slots and the TA label of every caption (no host sync)."""
        batch = weights.shape[0]
        device = weights.device
        own = torch.arange(batch, device=device)
        # two negatives without replacement (the first alone is a draw ~ weights); with only
        # one other image in the batch, "neither" repeats it in both slots
        negatives = torch.multinomial(weights, 2, replacement=batch < 3)
        single = torch.rand(batch, device=device) < self.single_negative_probability
        true_first = torch.rand(batch, device=device) < 0.5
        slot0 = torch.where(single & true_first, own, negatives[:, 0])
        slot1 = torch.where(single, torch.where(true_first, negatives[:, 0], own), negatives[:, 1])
        labels = torch.where(single, torch.where(true_first, 0, 1), 2)
        return slot0, slot1, labels

    def forward(self, batch: Dict[str, Any],
                train_state: Optional[TrainState] = None) -> Dict[str, Any]:
        """``{"losses": {"ta"}, "logits": [B, 3], "labels": [B], "metrics": {"accuracy"}}``.

        Batch: ``image [B, 3, H, W]``, ``input_ids [B, L]``, ``attention_mask [B, L]`` (the
        pre-training format); needs at least two images.
        """
        missing = [k for k in ("image", "input_ids", "attention_mask") if k not in batch]
        if missing:
            raise KeyError(f"albef_nlvr_ta batch is missing {missing}; it needs image [B,3,H,W], "
                           f"input_ids [B,L], attention_mask [B,L]. Got keys {sorted(batch)}")
        image = batch["image"]
        if image.shape[0] < 2:
            raise ValueError("albef_nlvr_ta needs at least 2 images per batch to draw negatives; "
                             "raise the batch size (or drop_last the final batch).")
        image_embeds = self.visual_encoder(image)
        slot0, slot1, labels = self.sample_assignment(self.negative_weights(image_embeds))
        logits = self.assign(image_embeds, batch["input_ids"], batch["attention_mask"], slot0, slot1)
        with torch.no_grad():
            accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return {"losses": {"ta": F.cross_entropy(logits, labels)}, "logits": logits,
                "labels": labels, "metrics": {"accuracy": accuracy}}
