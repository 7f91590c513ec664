"""ALBEF pre-training model: ITC with momentum distillation, ITM with hard negatives, MLM.

Attribute names are the official ``models/model_pretrain.py`` names, so ``state_dict()`` keys
match the released pre-training checkpoints (``visual_encoder.*``, ``text_encoder.bert.*``,
``text_encoder.cls.*``, ``vision_proj``, ``text_proj``, ``itm_head``, ``temp``, the ``*_m``
momentum copies and the ``image_queue``/``text_queue``/``queue_ptr`` buffers), except for the
non-persistent ``position_ids`` buffer.

One training forward, in order (the paper, section 3, and the official ``model_pretrain.py``):
  1. clamp ``temp`` to [temp_min, temp_max];
  2. online image and text features;
  3. ``momentum_update()`` (train mode, first micro-batch of an optimizer update), then
     momentum features;
  4. ITC against [batch | queue] with soft targets from the momentum similarities;
  5. ITM on 3B pairs (positives, hard-negative images, hard-negative texts);
  6. MLM on masked captions, distilled from the momentum text encoder;
  7. ``enqueue`` of the momentum features (train mode, every micro-batch).
The shared steps live in :class:`~albef_plugin.models.albef.base.ALBEFBase`.
No step needs a host sync.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

from albef_plugin.losses.itc import itc_loss
from albef_plugin.losses.mlm import (IGNORE_INDEX, mask_tokens, masked_capacity, mlm_loss,
                                     select_masked_positions)
from albef_plugin.models.albef.base import ALBEFBase, Alpha
from albef_plugin.models.checkpoints.filters import (ADD_BERT_PREFIX, LAYOUT_TEXT_PLAIN,
                                                     LAYOUT_TEXT_WITH_MLM_HEAD, CheckpointFilter)
from albef_plugin.registry import registry
from albef_plugin.train_state import TrainState

__all__ = ["ALBEFPretrain", "LossWeights"]

_IDX_QUEUE_UNUSED = ("^idx_queue$", "retrieval image-id queue: the model has no retrieval ITC targets")


@dataclass
class LossWeights:
    itc: float = 1.0
    itm: float = 1.0   # 0 skips the ITM forward entirely
    mlm: float = 1.0   # 0 skips the MLM forward entirely


def _warm_up_updates(cfg: Any, name: str) -> int:
    """The config's count of warm-up updates ``name``, checked: 0 (official) or more."""
    updates = int(getattr(cfg, name))
    if updates < 0:
        raise ValueError(f"{name}={updates}: expected 0 (official) or a number of updates.")
    return updates


@registry.register_model("albef_pretrain")
class ALBEFPretrain(ALBEFBase):
    """ALBEF with its three pre-training objectives; see the module docstring."""

    @dataclass
    class Config(ALBEFBase.Config):
        temp_min: float = 0.001          # temp is clamped to [temp_min, temp_max] each step
        temp_max: float = 0.5
        mlm_probability: float = 0.15
        # Which features stand for the local batch in the ITC similarities. "momentum" is the
        # official choice: [momentum batch | queue], so no gradient flows into the other
        # modality's encoder. "online" uses the online features of the batch (the queue stays
        # momentum), so each encoder also learns from the other's gradient, as in CLIP. From a
        # random initialisation the official form has nothing to bootstrap from (the momentum
        # targets are near-constant); see the demo config and README for the measurements.
        itc_batch_features: str = "momentum"
        # ITM negatives are drawn uniformly (among the batch's other pairs) rather than by ITC
        # similarity for the first N optimizer updates. 0 (official): hard negatives from the
        # start. A from-scratch model (the CPU demo) can use a warm-up: hard negatives drawn
        # by a sharp ITC are too hard for a fusion encoder that has learned nothing yet.
        itm_random_negatives_updates: int = 0
        # Hard negatives drawn per text and per image for ITM (distinct, from the local batch).
        # 1 (official): 3B pairs. n gives (1 + 2n)B pairs: more of the near-misses that teach
        # the fusion layers fine distinctions per update, at the cost of a longer fusion pass.
        itm_negatives: int = 1
        # For the first N optimizer updates only ITC is trained (ITM and MLM, with their fusion
        # passes, are skipped). 0 (official): all objectives from the first update. From a
        # random initialisation the ITC features start collapsed and ITC's signal is tiny; the
        # gradients of ITM and MLM through the shared encoders then hold ITC at chance for
        # longer, by a seed-dependent amount (the CPU demo; README, "Demo").
        itc_only_updates: int = 0
        loss_weights: LossWeights = field(default_factory=LossWeights)

    text_encoder_with_mlm_head = True
    min_batch_size_per_rank = 2  # in-batch ITC and ITM negatives need another sample
    checkpoint_filters = {
        LAYOUT_TEXT_WITH_MLM_HEAD: CheckpointFilter(unused=(_IDX_QUEUE_UNUSED,)),
        # retrieval / grounding files (mscoco.pth, ...): same encoders without the MLM head
        LAYOUT_TEXT_PLAIN: CheckpointFilter(
            renames=ADD_BERT_PREFIX, unused=(_IDX_QUEUE_UNUSED,),
            absent=((r"^text_encoder(_m)?\.cls\.",
                     "MLM head: retrieval / grounding checkpoints have none; left as initialised"),)),
    }

    def read_config(self, cfg: Any) -> None:
        super().read_config(cfg)
        if cfg.itc_batch_features not in ("momentum", "online"):
            raise ValueError(f"itc_batch_features={cfg.itc_batch_features!r}: expected 'momentum' "
                             f"(official) or 'online'.")
        self.itc_online_batch = cfg.itc_batch_features == "online"
        self.temp_min, self.temp_max = float(cfg.temp_min), float(cfg.temp_max)
        self.mlm_probability = float(cfg.mlm_probability)
        self.itm_random_negatives_updates = _warm_up_updates(cfg, "itm_random_negatives_updates")
        self.itc_only_updates = _warm_up_updates(cfg, "itc_only_updates")
        self.itm_negatives = int(cfg.itm_negatives)
        if self.itm_negatives < 1:
            raise ValueError(f"itm_negatives={cfg.itm_negatives} must be >= 1 (official: 1).")
        weights = cfg.loss_weights
        self.loss_weights = LossWeights(float(weights.itc), float(weights.itm), float(weights.mlm))
        text = cfg.text_encoder
        self.vocab_size, self.mask_token_id = int(text.vocab_size), int(text.mask_token_id)
        self.pad_token_id, self.cls_token_id = int(text.pad_token_id), int(text.cls_token_id)

    # ------------------------------------------------------------------ public API
    def mlm_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   image_embeds: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits ``[B, L, V]`` of all 12 layers on (masked) ids and image tokens."""
        return self.text_encoder.logits(input_ids, attention_mask, image_embeds)

    # -------------------------------------------------------------------- forward
    def forward(self, batch: Dict[str, Any],
                train_state: Optional[TrainState] = None) -> Dict[str, Any]:
        """Pre-training losses for one batch.

        Args:
            batch: ``image [B, 3, H, W]``, ``input_ids [B, L]``, ``attention_mask [B, L]``,
                optional ``image_id [B]`` (same id = same image: not a negative for ITM).
            train_state: progress; its ``alpha`` (if set) overrides the configured alpha, and
                its ``first_micro_batch`` limits the EMA step to one per optimizer update.

        Returns:
            ``{"losses": {"itc", "itm", "mlm"} (weighted scalars), "alpha": float | tensor,
            "metrics": {"itm_accuracy", "temp"} (detached)}``. In eval mode the same losses
            are computed, but neither the momentum encoders nor the queues change.
        """
        self._check_batch(batch)
        image, input_ids, attention_mask = batch["image"], batch["input_ids"], batch["attention_mask"]
        self._check_image_text(image, input_ids, attention_mask)
        alpha = self.resolve_alpha(self.alpha, train_state)
        if self.training:
            with torch.no_grad():
                self.temp.clamp_(self.temp_min, self.temp_max)

        image_embeds, image_feat = self.encode_image(image)
        text_embeds, text_feat = self.encode_text(input_ids, attention_mask)
        if self.training and self.should_update_momentum(train_state):
            self.momentum_update()
        image_embeds_m, image_feat_m, text_feat_m = self.momentum_features(
            image, input_ids, attention_mask)

        sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m = self.similarities(
            image_feat, text_feat, image_feat_m, text_feat_m)
        weights = self.loss_weights
        losses: Dict[str, torch.Tensor] = {
            "itc": weights.itc * itc_loss(sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m, alpha)}
        metrics: Dict[str, torch.Tensor] = {"temp": self.temp.detach()}
        itc_only = self._in_first_updates(train_state, self.itc_only_updates)
        if itc_only:
            # ITM and MLM report an exact zero that still touches every trainable parameter,
            # so DDP (without find_unused_parameters) sees all of them used.
            untouched = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            losses.update({name: untouched for name, weight in (("itm", weights.itm),
                                                                   ("mlm", weights.mlm)) if weight})
        elif weights.itm:
            # ITM warm-up: negatives drawn with equal weights (uniform draws)
            if self._in_first_updates(train_state, self.itm_random_negatives_updates):
                sim_i2t, sim_t2i = torch.zeros_like(sim_i2t), torch.zeros_like(sim_t2i)
            loss_itm, metrics["itm_accuracy"] = self.itm_loss_and_accuracy(
                image_embeds, text_embeds, attention_mask, sim_i2t, sim_t2i, batch.get("image_id"),
                self.itm_negatives)
            losses["itm"] = weights.itm * loss_itm
        if weights.mlm and not itc_only:
            losses["mlm"] = weights.mlm * self._mlm_loss(
                input_ids, attention_mask, image_embeds, image_embeds_m, alpha)

        if self.training:  # every micro-batch's momentum features enter the queue
            self.enqueue(image_feat_m, text_feat_m)
        return {"losses": losses, "alpha": alpha, "metrics": metrics}

    # ------------------------------------------------------------------- helpers
    def _in_first_updates(self, train_state: Optional[TrainState], updates: int) -> bool:
        """Whether this training forward comes before optimizer update ``updates`` (the
        demo-only warm-ups ``itc_only_updates`` and ``itm_random_negatives_updates``); a loop
        without a TrainState gets the official behaviour from the start."""
        return self.training and train_state is not None and train_state.update < updates

    def _mlm_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  image_embeds: torch.Tensor, image_embeds_m: torch.Tensor,
                  alpha: Alpha) -> torch.Tensor:
        """MLM with distillation; the vocabulary projection runs only at masked positions."""
        masked_ids, labels = mask_tokens(
            input_ids, self.vocab_size, self.mask_token_id, self.pad_token_id,
            self.cls_token_id, self.mlm_probability)
        num_tokens = input_ids.numel()
        capacity = masked_capacity(num_tokens, self.mlm_probability)
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
