"""ALBEF pre-training model: ITC with momentum distillation, ITM with hard negatives, MLM.

Attribute names are the official ``models/model_pretrain.py`` names, so ``state_dict()`` keys
match the released pre-training checkpoints (``visual_encoder.*``, ``text_encoder.bert.*``,
``text_encoder.cls.*``, ``vision_proj``, ``text_proj``, ``itm_head``, ``temp``, the ``*_m``
momentum copies and the ``image_queue``/``text_queue``/``queue_ptr`` buffers), except for the
non-persistent ``position_ids`` buffer.

One training forward, in order (fact sheet sections 1.3-1.7):
  1. clamp ``temp`` to [temp_min, temp_max];
  2. online image and text features;
  3. ``momentum_update()`` (train mode only), then momentum features;
  4. ITC against [batch | queue] with soft targets from the momentum similarities;
  5. ITM on 3B pairs (positives, hard-negative images, hard-negative texts);
  6. MLM on masked captions, distilled from the momentum text encoder;
  7. ``enqueue`` of the momentum features (train mode only).
No step needs a host sync.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from albef_plugin.losses.itc import itc_loss
from albef_plugin.losses.itm import (itm_labels, itm_loss, positive_mask_from_ids,
                                     sample_hard_negatives)
from albef_plugin.losses.mlm import (IGNORE_INDEX, mask_tokens, masked_capacity, mlm_loss,
                                     select_masked_positions)
from albef_plugin.models.albef.components import (ImageEncoderConfig, TextEncoderConfig,
                                                  build_text_encoder_mlm, build_visual_encoder)
from albef_plugin.models.base import BaseModel, packaged_model_yaml
from albef_plugin.models.momentum import make_momentum_copy, momentum_update, paired_parameters
from albef_plugin.models.queue import enqueue, register_feature_queues
from albef_plugin.registry import registry
from albef_plugin.train_state import TrainState

__all__ = ["ALBEFPretrain", "LossWeights"]

Alpha = Union[float, torch.Tensor]


@dataclass
class LossWeights:
    itc: float = 1.0
    itm: float = 1.0   # 0 skips the ITM forward entirely
    mlm: float = 1.0   # 0 skips the MLM forward entirely


@registry.register_model("albef_pretrain")
class ALBEFPretrain(BaseModel):
    """ALBEF with its three pre-training objectives; see the module docstring."""

    @dataclass
    class Config:
        image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
        text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
        embed_dim: int = 256             # ITC projection size
        temp: float = 0.07               # initial ITC temperature (learnable)
        temp_min: float = 0.001          # temp is clamped to [temp_min, temp_max] each step
        temp_max: float = 0.5
        queue_size: int = 65536          # must be a multiple of the global batch
        momentum: float = 0.995          # EMA coefficient of the momentum encoders
        alpha: float = 0.4               # distillation weight after the ramp
        alpha_ramp_epochs: float = 1.0   # linear ramp of alpha from 0 (0 = constant alpha)
        mlm_probability: float = 0.15
        # Which features stand for the local batch in the ITC similarities. "momentum" is the
        # official choice: [momentum batch | queue], so no gradient flows into the other
        # modality's encoder. "online" uses the online features of the batch (the queue stays
        # momentum), so each encoder also learns from the other's gradient, as in CLIP. From a
        # random initialisation the official form has nothing to bootstrap from (the momentum
        # targets are near-constant); see the demo config and README for the measurements.
        itc_batch_features: str = "momentum"
        loss_weights: LossWeights = field(default_factory=LossWeights)
        gradient_checkpointing: bool = False
        # Weights to start from, loaded after image/text_encoder.pretrained: an official ALBEF
        # checkpoint, one of ours, or a converted folder (models/checkpoints.py:load_checkpoint).
        checkpoint: Optional[str] = None
        # Trusted files only: let `checkpoint` / the pretrained files need full unpickling.
        allow_unsafe_pickle: bool = False

    @classmethod
    def config_path(cls) -> Optional[str]:
        return packaged_model_yaml("albef_pretrain")

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        cfg = self.config
        self.visual_encoder = build_visual_encoder(cfg.image_encoder)
        self.text_encoder = build_text_encoder_mlm(cfg.text_encoder, cfg.image_encoder.width)
        width, hidden = cfg.image_encoder.width, cfg.text_encoder.hidden_size
        self.vision_proj = nn.Linear(width, cfg.embed_dim)
        self.text_proj = nn.Linear(hidden, cfg.embed_dim)
        self.itm_head = nn.Linear(hidden, 2)
        self.temp = nn.Parameter(torch.tensor(float(cfg.temp)))  # 0-dim, as the official

        self.visual_encoder_m = make_momentum_copy(self.visual_encoder)
        self.vision_proj_m = make_momentum_copy(self.vision_proj)
        self.text_encoder_m = make_momentum_copy(self.text_encoder)
        self.text_proj_m = make_momentum_copy(self.text_proj)
        register_feature_queues(self, cfg.embed_dim, cfg.queue_size)

        if cfg.itc_batch_features not in ("momentum", "online"):
            raise ValueError(f"itc_batch_features={cfg.itc_batch_features!r}: expected 'momentum' "
                             f"(official) or 'online'.")
        self._itc_online_batch = cfg.itc_batch_features == "online"
        # (online, momentum) parameter lists, built on first use; not module state
        self._momentum_params: Optional[Tuple[List[torch.Tensor], List[torch.Tensor]]] = None
        if cfg.gradient_checkpointing:
            self.set_grad_checkpointing(True)
        self._load_configured_weights()

    def _load_configured_weights(self) -> None:
        """DeiT / BERT initial weights (momentum copies re-synced), then ``checkpoint``."""
        from albef_plugin.models.checkpoints import load_checkpoint
        from albef_plugin.models.pretrained import load_initial_weights

        cfg = self.config
        load_initial_weights(self, cfg.image_encoder.pretrained, cfg.text_encoder.pretrained,
                             allow_unsafe_pickle=cfg.allow_unsafe_pickle)
        if cfg.checkpoint:
            load_checkpoint(self, cfg.checkpoint, strict=True,
                            allow_unsafe_pickle=cfg.allow_unsafe_pickle)

    # ------------------------------------------------------------------ public API
    def encode_image(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``image [B, 3, H, W]`` -> (tokens ``[B, 1+N, D]``, L2-normalised feature ``[B, E]``)."""
        image_embeds = self.visual_encoder(image)
        return image_embeds, self._normalized(self.vision_proj(image_embeds[:, 0]))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Text encoder (first ``fusion_layer`` layers): (``[B, L, H]``, feature ``[B, E]``)."""
        text_embeds = self.text_encoder(input_ids, attention_mask, mode="text")
        return text_embeds, self._normalized(self.text_proj(text_embeds[:, 0]))

    def fuse(self, text_embeds: torch.Tensor, attention_mask: torch.Tensor,
             image_embeds: torch.Tensor) -> torch.Tensor:
        """Fusion encoder: text-encoder output ``[B, L, H]`` cross-attending to image tokens
        ``[B, 1+N, D]`` -> hidden states ``[B, L, H]``."""
        return self.text_encoder(attention_mask=attention_mask, encoder_embeds=text_embeds,
                                 encoder_hidden_states=image_embeds, mode="fusion")

    def itm_logits(self, text_embeds: torch.Tensor, attention_mask: torch.Tensor,
                   image_embeds: torch.Tensor) -> torch.Tensor:
        """Match / no-match logits ``[B, 2]`` (index 1 = match) from the fusion [CLS]."""
        return self.itm_head(self.fuse(text_embeds, attention_mask, image_embeds)[:, 0])

    def mlm_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   image_embeds: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits ``[B, L, V]`` of all 12 layers on (masked) ids and image tokens."""
        return self.text_encoder.logits(input_ids, attention_mask, image_embeds)

    def alpha_for(self, state: Optional[TrainState]) -> float:
        """``alpha * min(1, epoch_progress / alpha_ramp_epochs)``; constant without a ramp."""
        alpha, ramp = float(self.config.alpha), float(self.config.alpha_ramp_epochs)
        if state is None or ramp <= 0:
            return alpha
        return alpha * min(1.0, state.epoch_progress / ramp)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute online encoder activations in backward (the momentum ones need none)."""
        self.visual_encoder.set_grad_checkpointing(enable)
        self.text_encoder.set_grad_checkpointing(enable)

    # --------------------------------------------------------------- side effects
    @torch.no_grad()
    def momentum_update(self) -> None:
        """EMA step of the momentum encoders toward the online ones (training only)."""
        if self._momentum_params is None:
            self._momentum_params = paired_parameters([
                (self.visual_encoder, self.visual_encoder_m),
                (self.vision_proj, self.vision_proj_m),
                (self.text_encoder, self.text_encoder_m),
                (self.text_proj, self.text_proj_m)])
        momentum_update(*self._momentum_params, float(self.config.momentum))

    @torch.no_grad()
    def enqueue(self, image_feat_m: torch.Tensor, text_feat_m: torch.Tensor) -> None:
        """Push the (all-gathered) momentum features into the ITC queues (training only)."""
        enqueue([self.image_queue, self.text_queue], self.queue_ptr, [image_feat_m, text_feat_m])

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "ALBEFPretrain":
        self._momentum_params = None  # .to()/.cuda() may swap parameter tensors
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self._momentum_params = None  # assign=True replaces parameter objects
        return super().load_state_dict(*args, **kwargs)

    # -------------------------------------------------------------------- forward
    def forward(self, batch: Dict[str, Any],
                train_state: Optional[TrainState] = None) -> Dict[str, Any]:
        """Pre-training losses for one batch.

        Args:
            batch: ``image [B, 3, H, W]``, ``input_ids [B, L]``, ``attention_mask [B, L]``,
                optional ``image_id [B]`` (same id = same image: not a negative for ITM).
            train_state: progress; its ``alpha`` (if set) overrides the configured alpha.

        Returns:
            ``{"losses": {"itc", "itm", "mlm"} (weighted scalars), "alpha": float | tensor,
            "metrics": {"itm_accuracy", "temp"} (detached)}``. In eval mode the same losses
            are computed, but neither the momentum encoders nor the queues change.
        """
        image, input_ids, attention_mask = self._check_batch(batch)
        cfg = self.config
        alpha: Alpha = cfg.alpha
        if train_state is not None and train_state.alpha is not None:
            alpha = train_state.alpha
        if self.training:
            with torch.no_grad():
                self.temp.clamp_(cfg.temp_min, cfg.temp_max)

        image_embeds, image_feat = self.encode_image(image)
        text_embeds, text_feat = self.encode_text(input_ids, attention_mask)
        if self.training:
            self.momentum_update()
        with torch.no_grad():
            image_embeds_m, image_feat_m, text_feat_m = self._momentum_features(
                image, input_ids, attention_mask)

        sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m = self._similarities(
            image_feat, text_feat, image_feat_m, text_feat_m)
        weights = cfg.loss_weights
        losses: Dict[str, torch.Tensor] = {
            "itc": weights.itc * itc_loss(sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m, alpha)}
        metrics: Dict[str, torch.Tensor] = {"temp": self.temp.detach()}
        if weights.itm:
            loss_itm, metrics["itm_accuracy"] = self._itm_loss(
                image_embeds, text_embeds, attention_mask, sim_i2t, sim_t2i, batch.get("image_id"))
            losses["itm"] = weights.itm * loss_itm
        if weights.mlm:
            losses["mlm"] = weights.mlm * self._mlm_loss(
                input_ids, attention_mask, image_embeds, image_embeds_m, alpha)

        if self.training:
            self.enqueue(image_feat_m, text_feat_m)
        return {"losses": losses, "alpha": alpha, "metrics": metrics}

    # ------------------------------------------------------------------- helpers
    @staticmethod
    def _normalized(projected: torch.Tensor) -> torch.Tensor:
        # fp32 so that bf16 autocast does not coarsen the features that fill the queue
        return F.normalize(projected.float(), dim=-1)

    def _check_batch(self, batch: Dict[str, Any]
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        missing = [key for key in ("image", "input_ids", "attention_mask") if key not in batch]
        if missing:
            raise KeyError(f"albef_pretrain batch is missing {missing}; it needs image [B,3,H,W], "
                           f"input_ids [B,L], attention_mask [B,L] (optional image_id [B]). "
                           f"Got keys {sorted(batch)}")
        image, input_ids, mask = batch["image"], batch["input_ids"], batch["attention_mask"]
        if image.dim() != 4 or input_ids.dim() != 2 or mask.shape != input_ids.shape:
            raise ValueError(f"albef_pretrain batch shapes: image {tuple(image.shape)} must be "
                             f"[B,3,H,W], input_ids {tuple(input_ids.shape)} and attention_mask "
                             f"{tuple(mask.shape)} the same [B,L]")
        if image.shape[0] != input_ids.shape[0]:
            raise ValueError(f"batch has {image.shape[0]} images but {input_ids.shape[0]} texts")
        return image, input_ids, mask

    def _momentum_features(self, image: torch.Tensor, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor
                           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Momentum image tokens ``[B, 1+N, D]`` and features ``[B, E]`` (call under no_grad)."""
        image_embeds_m = self.visual_encoder_m(image)
        image_feat_m = self._normalized(self.vision_proj_m(image_embeds_m[:, 0]))
        text_embeds_m = self.text_encoder_m(input_ids, attention_mask, mode="text")
        text_feat_m = self._normalized(self.text_proj_m(text_embeds_m[:, 0]))
        return image_embeds_m, image_feat_m, text_feat_m

    def _similarities(self, image_feat: torch.Tensor, text_feat: torch.Tensor,
                      image_feat_m: torch.Tensor, text_feat_m: torch.Tensor
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Online and momentum similarities ``[B, B + Q]`` against [momentum batch | queue].

        Computed in fp32 even under autocast: logits reach 1/temp and 65k-way softmaxes are
        sensitive to bf16 rounding; the matmuls are tiny next to the encoders.
        """
        batch = image_feat.shape[0]
        with torch.autocast(device_type=image_feat.device.type, enabled=False):
            # torch.cat copies, so the in-place enqueue later cannot corrupt autograd's saved inputs
            image_feat_all = torch.cat([image_feat_m.t(), self.image_queue.float()], dim=1)
            text_feat_all = torch.cat([text_feat_m.t(), self.text_queue.float()], dim=1)
            temp = self.temp.float()
            if self._itc_online_batch:
                sim_i2t = image_feat @ torch.cat([text_feat.t(), text_feat_all[:, batch:]], 1) / temp
                sim_t2i = text_feat @ torch.cat([image_feat.t(), image_feat_all[:, batch:]], 1) / temp
            else:
                sim_i2t = image_feat @ text_feat_all / temp
                sim_t2i = text_feat @ image_feat_all / temp
            with torch.no_grad():
                sim_i2t_m = image_feat_m @ text_feat_all / temp
                sim_t2i_m = text_feat_m @ image_feat_all / temp
        return sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m

    def _itm_loss(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                  attention_mask: torch.Tensor, sim_i2t: torch.Tensor, sim_t2i: torch.Tensor,
                  image_ids: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """ITM loss over 3B pairs in one fusion pass, and its accuracy (detached)."""
        batch = image_embeds.shape[0]
        positives = positive_mask_from_ids(image_ids, batch, image_embeds.device)
        neg_image, neg_text, valid_image, valid_text = sample_hard_negatives(
            sim_i2t, sim_t2i, positives)
        # pairs: (text b, image b) | (text b, hard negative image) | (hard negative text, image b)
        text_all = torch.cat([text_embeds, text_embeds, text_embeds[neg_text]])
        mask_all = torch.cat([attention_mask, attention_mask, attention_mask[neg_text]])
        image_all = torch.cat([image_embeds, image_embeds[neg_image], image_embeds])
        logits = self.itm_logits(text_all, mask_all, image_all)
        valid = torch.cat([torch.ones_like(valid_image), valid_image, valid_text])
        loss = itm_loss(logits, valid=valid)
        with torch.no_grad():
            labels = itm_labels(batch, logits.device)
            correct = (logits.argmax(dim=1) == labels).float() * valid.float()
            accuracy = correct.sum() / valid.float().sum()
        return loss, accuracy

    def _mlm_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  image_embeds: torch.Tensor, image_embeds_m: torch.Tensor,
                  alpha: Alpha) -> torch.Tensor:
        """MLM with distillation; the vocabulary projection runs only at masked positions."""
        cfg, text_cfg = self.config, self.config.text_encoder
        masked_ids, labels = mask_tokens(
            input_ids, text_cfg.vocab_size, text_cfg.mask_token_id, text_cfg.pad_token_id,
            text_cfg.cls_token_id, cfg.mlm_probability)
        num_tokens = input_ids.numel()
        capacity = masked_capacity(num_tokens, cfg.mlm_probability)
        positions = select_masked_positions(labels, capacity)
        if capacity < num_tokens:
            # Masked positions beyond the capacity (a > 6 sigma event) are left unmasked, so the
            # gathered positions hold every label and the loss equals the full-logit one.
            selected = torch.zeros(num_tokens, dtype=torch.bool, device=labels.device)
            selected[positions] = True
            overflow = (~selected & (labels.reshape(-1) != IGNORE_INDEX)).view_as(labels)
            masked_ids = torch.where(overflow, input_ids, masked_ids)
            labels = labels.masked_fill(overflow, IGNORE_INDEX)

        hidden = self.text_encoder(masked_ids, attention_mask,
                                   encoder_hidden_states=image_embeds, mode="multimodal")
        logits = self.text_encoder.cls(hidden.flatten(0, 1)[positions])
        target = labels.reshape(-1)[positions]
        if isinstance(alpha, (int, float)) and alpha == 0:
            return mlm_loss(logits, target)  # no teacher needed
        with torch.no_grad():
            hidden_m = self.text_encoder_m(masked_ids, attention_mask,
                                           encoder_hidden_states=image_embeds_m, mode="multimodal")
            logits_m = self.text_encoder_m.cls(hidden_m.flatten(0, 1)[positions])
        return mlm_loss(logits, target, logits_m, alpha)
