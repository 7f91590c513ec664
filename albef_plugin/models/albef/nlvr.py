"""ALBEF for NLVR2: ``albef_nlvr`` (fine-tuning) and ``albef_nlvr_ta`` (text-assignment pre-training).

Official ``models/model_nlvr.py`` / ``model_pretrain_nlvr.py``. The BERT has
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

Loading (per source, as the official scripts):
  * a pre-training checkpoint (``ALBEF.pth`` or ours): ``bert.`` stripped, fusion layer ``f+i``
    copied into both blocks ``f+2i`` and ``f+2i+1`` of its pair (``Pretrain_nlvr.py``), the
    pre-training heads left unused; ``albef_nlvr_ta`` keeps ``vision_proj`` (it picks the
    negatives) and starts ``ta_head`` fresh;
  * the TA checkpoint ``pretrain_model_nlvr.pth`` into ``albef_nlvr``: ``ta_head``,
    ``vision_proj``, ``text_proj``, ``temp`` unused, ``cls_head`` fresh. The file has no momentum
    copies. The official ``NLVR.py`` copies the online weights into the momentum model *before*
    loading it, so the momentum model starts from the fresh initialisation (BERT / random ViT)
    and only catches up through the EMA (0.995 per step: hundreds of steps of a meaningless
    distillation target). Here the momentum copies are initialised from the loaded online
    weights after the load; ``official_momentum_init: true`` restores the official order;
  * the official NLVR2 ``state_dict()`` (LAVIS ``albef_nlvr_lavis.pt``), with the shared key /
    value tensors under both layer indices of each pair, and our checkpoints: key for key.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from albef_plugin.models.albef.base import ALBEFBase
from albef_plugin.models.albef.components import (ImageEncoderConfig, TextEncoderConfig,
                                                  bert_config_from)
from albef_plugin.models.albef.ve import (NEW_CLASSIFIER_HEAD, PRETRAIN_PARTS_UNUSED,
                                          ALBEFClassifier, ClassifierConfig)
from albef_plugin.models.bert import BertModel, attention_mask_for_sdpa
from albef_plugin.models.checkpoints.filters import (LAYOUT_TEXT_PLAIN, LAYOUT_TEXT_WITH_MLM_HEAD,
                                                     STRIP_BERT_PREFIX, CheckpointFilter,
                                                     duplicate_fusion_layers)
from albef_plugin.registry import registry
from albef_plugin.train_state import TrainState

__all__ = ["ALBEFNLVR", "ALBEFNLVRTextAssignment", "build_paired_text_encoder", "paired_fusion",
           "paired_depth", "TA_TEMPERATURE"]

TA_TEMPERATURE = 0.07  # fixed in the official TA code (not a learnable temperature)
TA_FILE_UNUSED: Tuple[Tuple[str, str], ...] = (
    (r"^ta_head\.", "text-assignment head of the TA checkpoint: NLVR2 fine-tuning has none"),
    (r"^(vision_proj|text_proj)\.", "TA checkpoint projection: unused by NLVR2 fine-tuning"),
    (r"^temp$", "TA checkpoint temperature: unused by NLVR2 fine-tuning"),
)


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


def _file_layers(state: Mapping[str, torch.Tensor], prefix: str = "text_encoder.encoder.") -> int:
    pattern = re.compile(re.escape(prefix) + r"layer\.(\d+)\.")
    found = [int(m.group(1)) for k in state if (m := pattern.match(k))]
    return max(found) + 1 if found else 0


class _PairedFusionMixin:
    """The paired BERT, and the filter rows that turn a pre-training file's fusion layers into
    pairs (only when the file has the pre-training depth, not already the paired one)."""

    pretrain_layers: int
    fusion_layer: int

    def build_text_encoder(self, cfg: Any) -> nn.Module:
        self.pretrain_layers = int(cfg.text_encoder.num_hidden_layers)
        self.fusion_layer = int(cfg.text_encoder.fusion_layer)
        return build_paired_text_encoder(cfg.text_encoder, self.vision_width)

    def _duplicate_pairs(self, state: Dict[str, torch.Tensor],
                         prefixes: Tuple[str, ...]) -> Dict[str, torch.Tensor]:
        for prefix in prefixes:
            if _file_layers(state, prefix) == self.pretrain_layers:
                state = duplicate_fusion_layers(state, prefix, self.fusion_layer,
                                                self.pretrain_layers - self.fusion_layer)
        return state


@dataclass
class NLVRConfig(ClassifierConfig):
    alpha_ramp_epochs: float = 1.0  # official NLVR: warm_up True (alpha ramps over epoch 0)
    # True reproduces the official NLVR.py order: a checkpoint without momentum copies (the TA
    # checkpoint) leaves the momentum model at its construction-time weights. False (the fix):
    # the momentum copies start from the loaded online weights. See the module docstring.
    official_momentum_init: bool = False


@registry.register_model("albef_nlvr")
class ALBEFNLVR(_PairedFusionMixin, ALBEFClassifier):
    """NLVR2 classifier; see the module docstring."""

    Config = NLVRConfig
    num_classes = 2
    required_batch_keys = (("image0", "[B,3,H,W]"), ("image1", "[B,3,H,W]"),
                           ("input_ids", "[B,L]"), ("attention_mask", "[B,L]"))

    def read_config(self, cfg: Any) -> None:
        super().read_config(cfg)
        self.keep_momentum_init_when_absent = bool(cfg.official_momentum_init)

    @property
    def checkpoint_filters(self) -> Dict[str, CheckpointFilter]:  # type: ignore[override]
        pairs = lambda state: self._duplicate_pairs(  # noqa: E731
            state, ("text_encoder.encoder.", "text_encoder_m.encoder."))
        return {
            # ALBEF.pth / ours: fusion layers duplicated into pairs (official Pretrain_nlvr.py)
            LAYOUT_TEXT_WITH_MLM_HEAD: CheckpointFilter(
                renames=STRIP_BERT_PREFIX, remap=pairs, unused=PRETRAIN_PARTS_UNUSED,
                absent=NEW_CLASSIFIER_HEAD),
            # the official NLVR2 state_dict() (LAVIS albef_nlvr_lavis.pt) and ours
            LAYOUT_TEXT_PLAIN: CheckpointFilter(),
        }

    def checkpoint_filter(self, state: Mapping[str, torch.Tensor]
                          ) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
        if "ta_head.weight" in state:  # pretrain_model_nlvr.pth (or an albef_nlvr_ta checkpoint)
            return CheckpointFilter(unused=TA_FILE_UNUSED, absent=NEW_CLASSIFIER_HEAD).apply(
                state, self.state_dict().keys())
        return super().checkpoint_filter(state)

    def classify(self, image0: torch.Tensor, image1: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        """Logits ``[B, 2]`` (index 1 = "True") of the online (or momentum) model; both images
        go through the ViT in one batch."""
        suffix = "_m" if momentum else ""
        embeds = getattr(self, "visual_encoder" + suffix)(torch.cat([image0, image1]))
        hidden = paired_fusion(getattr(self, "text_encoder" + suffix), input_ids, attention_mask,
                               embeds[: image0.shape[0]], embeds[image0.shape[0]:])
        return getattr(self, "cls_head" + suffix)(hidden[:, 0])

    def forward(self, batch: Dict[str, Any],
                train_state: Optional[TrainState] = None) -> Dict[str, Any]:
        """``{"logits": [B, 2], "losses": {"ce"} (with labels), "alpha", "metrics": {"accuracy"}}``.

        Batch: ``image0``, ``image1`` ``[B, 3, H, W]`` (left, right), ``input_ids [B, L]``,
        ``attention_mask [B, L]``, optional ``label [B]`` (1 = "True").
        """
        self._check_batch(batch)
        return self.classifier_outputs(batch, train_state, (
            batch["image0"], batch["image1"], batch["input_ids"], batch["attention_mask"]))

    def dummy_batch(self, batch_size: int = 4, seed: int = 0) -> Dict[str, torch.Tensor]:
        batch = super().dummy_batch(batch_size, seed)
        del batch["image_id"]
        image = batch.pop("image")
        batch["image0"], batch["image1"] = image, torch.roll(image, 1, dims=0)
        return self._with_labels(batch, seed)


@dataclass
class NLVRTAConfig:
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)  # 256 px
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    embed_dim: int = 256                # vision_proj output (from the pre-training checkpoint)
    single_negative_probability: float = 2 / 3  # else two negatives, label 2 ("neither")
    gradient_checkpointing: bool = False
    checkpoint: Optional[str] = None
    allow_unsafe_pickle: bool = False


@registry.register_model("albef_nlvr_ta")
class ALBEFNLVRTextAssignment(_PairedFusionMixin, ALBEFBase):
    """Text-assignment pre-training for NLVR2; see the module docstring."""

    Config = NLVRTAConfig
    use_queues = False
    momentum_children = ()
    # no momentum distillation: what the base's alpha_for (called by the trainer) reads
    alpha = alpha_ramp_epochs = 0.0
    min_batch_size_per_rank = 2  # the negatives are the batch's other images
    # used without gradient by design: picks the hard negatives under no_grad
    params_without_grad = (r"^vision_proj\.",)

    def read_config(self, cfg: Any) -> None:
        self.vision_width = int(cfg.image_encoder.width)
        self.hidden_size = int(cfg.text_encoder.hidden_size)
        self.embed_dim = int(cfg.embed_dim)
        self.single_negative_probability = float(cfg.single_negative_probability)

    def build_heads(self, cfg: Any) -> None:
        self.vision_proj = nn.Linear(self.vision_width, self.embed_dim)
        self.ta_head = nn.Linear(self.hidden_size, 3)

    @classmethod
    def tiny_overrides(cls) -> Dict[str, Any]:
        overrides = super().tiny_overrides()
        del overrides["queue_size"]
        return overrides

    @property
    def checkpoint_filters(self) -> Dict[str, CheckpointFilter]:  # type: ignore[override]
        return {
            # ALBEF.pth / ours (official Pretrain_nlvr.py): pairs from the fusion layers; the
            # momentum model, MLM head, text projection, ITM head and queues are not used
            LAYOUT_TEXT_WITH_MLM_HEAD: CheckpointFilter(
                renames=STRIP_BERT_PREFIX,
                remap=lambda state: self._duplicate_pairs(state, ("text_encoder.encoder.",)),
                unused=((r"^[a-z_]+_m\.", "momentum model: text assignment has none"),
                        *[row for row in PRETRAIN_PARTS_UNUSED if "vision_proj" not in row[0]],
                        (r"^text_proj\.", "ITC text projection: unused by text assignment")),
                absent=((r"^ta_head\.", "the new text-assignment head: initialised fresh"),)),
            # pretrain_model_nlvr.pth and ours
            LAYOUT_TEXT_PLAIN: CheckpointFilter(
                unused=((r"^(text_proj\.|temp$)",
                         "held by the official TA model but never used by it"),)),
        }

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
        self._check_batch(batch)
        image = batch["image"]
        if image.shape[0] < 2:
            raise ValueError("albef_nlvr_ta needs at least 2 images per batch to draw negatives; "
                             "raise the batch size (the training loader drops the last batch).")
        image_embeds = self.visual_encoder(image)
        slot0, slot1, labels = self.sample_assignment(self.negative_weights(image_embeds))
        logits = self.assign(image_embeds, batch["input_ids"], batch["attention_mask"], slot0, slot1)
        with torch.no_grad():
            accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return {"losses": {"ta": F.cross_entropy(logits, labels)}, "logits": logits,
                "labels": labels, "metrics": {"accuracy": accuracy}}
