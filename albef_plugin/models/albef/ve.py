"""ALBEF for SNLI-VE (visual entailment): ``albef_ve``, the official ``models/model_ve.py``.

The 12-layer BERT runs over the hypothesis, its layers ``>= fusion_layer`` cross-attending to
the image tokens; ``cls_head`` (Linear, ReLU, Linear) maps the last [CLS] to 3 classes
(entailment 2, neutral 1, contradiction 0). Training loss: ``(1 - alpha) * CE + alpha *
soft-CE`` against the momentum model's softmax, alpha 0.4 from the first step (the official
VE config has no warm-up ramp). Fact sheet 2.4.

Attribute names are the official ones, so ``state_dict()`` is the official VE layout:
``visual_encoder.*``, ``text_encoder.{embeddings,encoder}.*``, ``cls_head.{0,2}.*`` and the
momentum copies ``visual_encoder_m.*``, ``text_encoder_m.*``, ``cls_head_m.*``.

Loading: a pre-training checkpoint (``ALBEF.pth`` or ours) has ``text_encoder.bert.`` stripped,
its MLM head, projections, ITM head, temperature and queues left unused, and the new
``cls_head`` (and ``cls_head_m``) initialised fresh; its momentum encoders load into ours (as
the official VE.py). The official code's own VE ``state_dict()`` (LAVIS
``albef_snli_ve_lavis.pt``) loads key for key; any other fine-tuned layout is refused by
``strict=True`` with the list of differing keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from albef_plugin.models.albef.base import ALBEFBase, Alpha
from albef_plugin.models.albef.components import ImageEncoderConfig, TextEncoderConfig
from albef_plugin.models.checkpoints.filters import (LAYOUT_TEXT_PLAIN, LAYOUT_TEXT_WITH_MLM_HEAD,
                                                     STRIP_BERT_PREFIX, CheckpointFilter)
from albef_plugin.registry import registry
from albef_plugin.train_state import TrainState

__all__ = ["ALBEFClassifier", "ALBEFVisualEntailment", "ClassifierConfig", "classifier_head",
           "distilled_cross_entropy", "PRETRAIN_PARTS_UNUSED", "NEW_CLASSIFIER_HEAD"]


def classifier_head(hidden: int, classes: int) -> nn.Sequential:
    """The official ``cls_head``: Linear(hidden, hidden), ReLU, Linear(hidden, classes)."""
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def distilled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                            logits_m: Optional[torch.Tensor], alpha: Alpha) -> torch.Tensor:
    """``(1 - alpha) CE(logits, labels) + alpha mean_b(-sum_c softmax(logits_m) log_softmax(logits))``;
    plain CE without a teacher."""
    loss = F.cross_entropy(logits, labels)
    if logits_m is None:
        return loss
    soft = -(F.log_softmax(logits, dim=1) * F.softmax(logits_m, dim=1)).sum(dim=1).mean()
    return (1 - alpha) * loss + alpha * soft


# Parts of a pre-training checkpoint the classification models do not have (after renaming).
PRETRAIN_PARTS_UNUSED: Tuple[Tuple[str, str], ...] = (
    (r"^text_encoder(_m)?\.cls\.", "MLM head of the pre-training checkpoint: unused by this task"),
    (r"^(vision_proj|text_proj)(_m)?\.", "ITC projection of the pre-training checkpoint: unused"),
    (r"^(itm_head\.|temp$)", "ITM head / ITC temperature of the pre-training checkpoint: unused"),
    (r"^(image_queue|text_queue|idx_queue|queue_ptr)$", "ITC queue: this task has none"),
)
NEW_CLASSIFIER_HEAD: Tuple[Tuple[str, str], ...] = (
    (r"^cls_head(_m)?\.", "the task's new classifier head: initialised fresh"),)


@dataclass
class ClassifierConfig:
    """What the ALBEF classification models (SNLI-VE, NLVR2) read."""

    # official fine-tuning resolution (pre-training checkpoints are resampled from 256 px)
    image_encoder: ImageEncoderConfig = field(default_factory=lambda: ImageEncoderConfig(image_size=384))
    # the pre-training BERT: layers [0, fusion_layer) text, [fusion_layer, N) fusion
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    distill: bool = True               # momentum model + soft-CE against its head
    momentum: float = 0.995
    alpha: float = 0.4
    alpha_ramp_epochs: float = 0.0     # linear ramp of alpha from 0 over this many epochs
    gradient_checkpointing: bool = False
    # Weights to start from: a pre-training checkpoint (official or ours) or a fine-tuned one.
    checkpoint: Optional[str] = None
    allow_unsafe_pickle: bool = False  # trusted files only


class ALBEFClassifier(ALBEFBase):
    """``cls_head`` on the fusion [CLS], distilled from a momentum copy (VE and NLVR2)."""

    Config = ClassifierConfig
    num_classes: int = 2
    use_queues = False
    momentum_children = ("visual_encoder", "text_encoder", "cls_head")

    def read_config(self, cfg: Any) -> None:
        self.vision_width = int(cfg.image_encoder.width)
        self.hidden_size = int(cfg.text_encoder.hidden_size)
        self.momentum = float(cfg.momentum)
        self.alpha = float(cfg.alpha)
        self.alpha_ramp_epochs = float(cfg.alpha_ramp_epochs)
        self.distill = bool(cfg.distill)
        if not self.distill:
            self.momentum_children = ()  # no momentum model at all

    def build_heads(self, cfg: Any) -> None:
        self.cls_head = classifier_head(self.hidden_size, self.num_classes)

    @classmethod
    def tiny_overrides(cls) -> Dict[str, Any]:
        overrides = super().tiny_overrides()
        del overrides["embed_dim"], overrides["queue_size"]
        return overrides

    def classify(self, *inputs: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        """Logits ``[B, C]`` of the online (or momentum) model."""
        raise NotImplementedError

    def classifier_outputs(self, batch: Dict[str, Any], train_state: Optional[TrainState],
                           inputs: Tuple[torch.Tensor, ...]) -> Dict[str, Any]:
        """Logits, and with ``label`` in the batch the loss and the batch accuracy.

        Training with ``distill``: the EMA step (once per optimizer update), then the momentum
        model's logits as the soft target, as the official code orders them.
        """
        logits = self.classify(*inputs)
        out: Dict[str, Any] = {"logits": logits, "losses": {}, "metrics": {}}
        labels = batch.get("label")
        if labels is None:
            return out
        alpha = self.resolve_alpha(self.alpha, train_state)
        logits_m = None
        if self.training and self.distill:
            if self.should_update_momentum(train_state):
                self.momentum_update()
            with torch.no_grad():
                logits_m = self.classify(*inputs, momentum=True)
        out["losses"]["ce"] = distilled_cross_entropy(logits, labels, logits_m, alpha)
        out["alpha"] = alpha
        with torch.no_grad():
            out["metrics"]["accuracy"] = (logits.argmax(dim=1) == labels).float().mean()
        return out

    def _with_labels(self, batch: Dict[str, torch.Tensor], seed: int) -> Dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed + 1)
        batch["label"] = torch.randint(0, self.num_classes, (batch["input_ids"].shape[0],),
                                       generator=gen)
        return batch


@registry.register_model("albef_ve")
class ALBEFVisualEntailment(ALBEFClassifier):
    """SNLI-VE classifier; see the module docstring."""

    num_classes = 3
    required_batch_keys = (("image", "[B,3,H,W]"), ("input_ids", "[B,L]"),
                           ("attention_mask", "[B,L]"))
    checkpoint_filters = {
        # ALBEF.pth / ALBEF_4M.pth / our albef_pretrain checkpoints (official VE.py)
        LAYOUT_TEXT_WITH_MLM_HEAD: CheckpointFilter(
            renames=STRIP_BERT_PREFIX, unused=PRETRAIN_PARTS_UNUSED, absent=NEW_CLASSIFIER_HEAD),
        # the official VE state_dict() (LAVIS albef_snli_ve_lavis.pt) and our albef_ve checkpoints
        LAYOUT_TEXT_PLAIN: CheckpointFilter(),
    }

    def classify(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 momentum: bool = False) -> torch.Tensor:
        """Logits ``[B, 3]`` of the online (or momentum) model."""
        suffix = "_m" if momentum else ""
        image_embeds = getattr(self, "visual_encoder" + suffix)(image)
        hidden = getattr(self, "text_encoder" + suffix)(
            input_ids, attention_mask, encoder_hidden_states=image_embeds, mode="multimodal")
        return getattr(self, "cls_head" + suffix)(hidden[:, 0])

    def forward(self, batch: Dict[str, Any],
                train_state: Optional[TrainState] = None) -> Dict[str, Any]:
        """``{"logits": [B, 3], "losses": {"ce"} (with labels), "alpha", "metrics": {"accuracy"}}``.

        Batch: ``image [B, 3, H, W]``, ``input_ids [B, L]``, ``attention_mask [B, L]``, optional
        ``label [B]`` (entailment 2, neutral 1, contradiction 0). In eval mode no momentum
        weight changes.
        """
        self._check_batch(batch)
        return self.classifier_outputs(batch, train_state, (
            batch["image"], batch["input_ids"], batch["attention_mask"]))

    def dummy_batch(self, batch_size: int = 4, seed: int = 0) -> Dict[str, torch.Tensor]:
        batch = super().dummy_batch(batch_size, seed)
        del batch["image_id"]
        return self._with_labels(batch, seed)
