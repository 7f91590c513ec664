"""ALBEF for SNLI-VE (visual entailment): ``albef_ve``.

Official ``models/model_ve.py`` (fact sheet 2.4): the 12-layer BERT runs over the hypothesis,
its layers ``>= fusion_layer`` cross-attending to the image tokens; ``cls_head`` (Linear,
ReLU, Linear) maps the last [CLS] to 3 classes (entailment 2, neutral 1, contradiction 0).
Training loss: ``(1 - alpha) * CE + alpha * soft-CE`` against the momentum model's softmax,
with alpha 0.4 from the first step (the official VE config has no warm-up ramp).

Attribute names are the official ones, so ``state_dict()`` keys are the official VE layout:
``visual_encoder.*``, ``text_encoder.{embeddings,encoder}.*``, ``cls_head.{0,2}.*`` and the
momentum copies ``visual_encoder_m.*``, ``text_encoder_m.*``, ``cls_head_m.*``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from albef_plugin.models.albef.components import (ImageEncoderConfig, TextEncoderConfig,
                                                  build_text_encoder, build_visual_encoder)
from albef_plugin.models.base import BaseModel, packaged_model_yaml
from albef_plugin.models.momentum import make_momentum_copy, momentum_update, paired_parameters
from albef_plugin.registry import registry
from albef_plugin.train_state import TrainState

__all__ = ["ALBEFVisualEntailment", "classifier_head", "distilled_cross_entropy",
           "TaskModelConfig"]

Alpha = Union[float, torch.Tensor]


def classifier_head(hidden: int, classes: int) -> nn.Sequential:
    """The official ``cls_head``: Linear(hidden, hidden), ReLU, Linear(hidden, classes)."""
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def distilled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                            logits_m: Optional[torch.Tensor], alpha: Alpha) -> torch.Tensor:
    """``(1 - alpha) * CE(logits, labels) + alpha * mean_b(-sum_c softmax(logits_m) log_softmax(logits))``;
    plain CE without a teacher."""
    loss = F.cross_entropy(logits, labels)
    if logits_m is None:
        return loss
    soft = -(F.log_softmax(logits, dim=1) * F.softmax(logits_m, dim=1)).sum(dim=1).mean()
    return (1 - alpha) * loss + alpha * soft


@dataclass
class TaskModelConfig:
    """What the ALBEF classification models (VE, NLVR2) share."""

    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
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


class _ClassifierBase(BaseModel):
    """Momentum pairs, alpha and checkpoint loading shared by the VE and NLVR2 models."""

    num_classes: int = 2

    def _build_momentum(self) -> None:
        self.distill = bool(self.config.distill)
        self.momentum = float(self.config.momentum)
        self._alpha = float(self.config.alpha)
        self._alpha_ramp = float(self.config.alpha_ramp_epochs)
        if self.distill:
            self.visual_encoder_m = make_momentum_copy(self.visual_encoder)
            self.text_encoder_m = make_momentum_copy(self.text_encoder)
            self.cls_head_m = make_momentum_copy(self.cls_head)
        self._momentum_params: Optional[Tuple[list, list]] = None

    def _load_configured_weights(self) -> None:
        from albef_plugin.models.checkpoints import load_checkpoint
        from albef_plugin.models.pretrained import load_initial_weights

        cfg = self.config
        load_initial_weights(self, cfg.image_encoder.pretrained, cfg.text_encoder.pretrained,
                             allow_unsafe_pickle=bool(cfg.allow_unsafe_pickle))
        if cfg.checkpoint:
            load_checkpoint(self, cfg.checkpoint, strict=True,
                            allow_unsafe_pickle=bool(cfg.allow_unsafe_pickle))

    def alpha_for(self, state: Optional[TrainState]) -> float:
        if state is None or self._alpha_ramp <= 0:
            return self._alpha
        return self._alpha * min(1.0, state.epoch_progress / self._alpha_ramp)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual_encoder.set_grad_checkpointing(enable)
        self.text_encoder.set_grad_checkpointing(enable)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """EMA step of the momentum model toward the online one (training only)."""
        if not self.distill:
            return
        if self._momentum_params is None:
            self._momentum_params = paired_parameters([
                (self.visual_encoder, self.visual_encoder_m), (self.text_encoder, self.text_encoder_m),
                (self.cls_head, self.cls_head_m)])
        momentum_update(*self._momentum_params, self.momentum)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "_ClassifierBase":
        self._momentum_params = None  # .to()/.cuda() may swap parameter tensors
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self._momentum_params = None
        return super().load_state_dict(*args, **kwargs)

    def _outputs(self, logits: torch.Tensor, batch: Dict[str, Any],
                 train_state: Optional[TrainState], teacher: Any) -> Dict[str, Any]:
        """Loss (when labels are given) and accuracy; ``teacher()`` gives the momentum logits."""
        out: Dict[str, Any] = {"logits": logits, "losses": {}, "metrics": {}}
        labels = batch.get("label")
        if labels is None:
            return out
        alpha: Alpha = self._alpha
        if train_state is not None and train_state.alpha is not None:
            alpha = train_state.alpha
        logits_m = None
        if self.training and self.distill:
            self.momentum_update()
            with torch.no_grad():
                logits_m = teacher()
        out["losses"]["ce"] = distilled_cross_entropy(logits, labels, logits_m, alpha)
        out["alpha"] = alpha
        with torch.no_grad():
            out["metrics"]["accuracy"] = (logits.argmax(dim=1) == labels).float().mean()
        return out

    def _require(self, batch: Dict[str, Any], keys: Tuple[str, ...], shapes: str) -> None:
        missing = [key for key in keys if key not in batch]
        if missing:
            raise KeyError(f"{self._name} batch is missing {missing}; it needs {shapes} (and "
                           f"label [B] to compute the loss). Got keys {sorted(batch)}")

    _name = "albef classifier"


@registry.register_model("albef_ve")
class ALBEFVisualEntailment(_ClassifierBase):
    """SNLI-VE classifier; see the module docstring."""

    Config = TaskModelConfig
    num_classes = 3
    _name = "albef_ve"

    @classmethod
    def config_path(cls) -> Optional[str]:
        return packaged_model_yaml("albef_ve")

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        cfg = self.config
        self.visual_encoder = build_visual_encoder(cfg.image_encoder)
        self.text_encoder = build_text_encoder(cfg.text_encoder, cfg.image_encoder.width)
        self.cls_head = classifier_head(cfg.text_encoder.hidden_size, self.num_classes)
        self._build_momentum()
        if cfg.gradient_checkpointing:
            self.set_grad_checkpointing(True)
        self._load_configured_weights()

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
        """``{"logits": [B, 3], "losses": {"ce"} (with labels), "metrics": {"accuracy"}}``.

        Batch: ``image [B, 3, H, W]``, ``input_ids [B, L]``, ``attention_mask [B, L]``, optional
        ``label [B]`` (entailment 2, neutral 1, contradiction 0).
        """
        self._require(batch, ("image", "input_ids", "attention_mask"),
                      "image [B,3,H,W], input_ids [B,L], attention_mask [B,L]")
        image, ids, mask = batch["image"], batch["input_ids"], batch["attention_mask"]
        logits = self.classify(image, ids, mask)
        return self._outputs(logits, batch, train_state,
                             lambda: self.classify(image, ids, mask, momentum=True))
