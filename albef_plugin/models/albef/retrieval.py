"""ALBEF image-text retrieval fine-tuning (COCO, Flickr30K): the official ``model_retrieval.py``.

Differences from pre-training:
  * the text side is a plain BERT (``text_encoder.embeddings.*`` / ``text_encoder.encoder.*``),
    no MLM head and no MLM loss: the loss is ITC + ITM;
  * every sample carries ``image_id`` (the official ``idx``: a contiguous id of its image), and
    the ITC targets are multi-positive: every column of the same image, in the batch and in
    the ``idx_queue``, is a positive, each row normalised to sum to 1; distilled with the
    momentum similarities as in pre-training;
  * ITM hard negatives are never a caption of the same image (the positive mask of ``image_id``);
  * ``temp`` is learnable and not clamped (the official retrieval model does not clamp it);
  * 384 px images.

Loading (``load_checkpoint`` / ``checkpoint``): a pre-training checkpoint (official ``ALBEF.pth``
or ours) has ``text_encoder.bert.*`` stripped to ``text_encoder.*``, its MLM head ignored, and
``pos_embed`` of the online and momentum ViTs resampled (256 -> 384 px); ``idx_queue`` starts
empty (-100). The official fine-tuned ``mscoco.pth`` / ``flickr30k.pth`` load key for key.

Evaluation is the registered ``retrieval`` metric: ITC similarities of ``encode_image`` /
``encode_text``, then ITM re-ranking (``itm_logits``) of the top ``k_test``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from albef_plugin.losses.itc import itc_loss
from albef_plugin.models.albef.base import ALBEFBase
from albef_plugin.models.albef.components import ImageEncoderConfig
from albef_plugin.models.checkpoints.filters import (LAYOUT_TEXT_PLAIN, LAYOUT_TEXT_WITH_MLM_HEAD,
                                                     STRIP_BERT_PREFIX, CheckpointFilter)
from albef_plugin.registry import registry
from albef_plugin.train_state import TrainState

__all__ = ["ALBEFRetrieval"]


@registry.register_model("albef_retrieval")
class ALBEFRetrieval(ALBEFBase):
    """ALBEF fine-tuned for image-text retrieval; see the module docstring."""

    @dataclass
    class Config(ALBEFBase.Config):
        # official fine-tuning resolution (pre-training checkpoints are resampled from 256 px)
        image_encoder: ImageEncoderConfig = field(
            default_factory=lambda: ImageEncoderConfig(image_size=384))

    use_idx_queue = True
    min_batch_size_per_rank = 2  # in-batch ITC and ITM negatives need another sample
    required_batch_keys = (("image", "[B,3,H,W]"), ("input_ids", "[B,L]"),
                           ("attention_mask", "[B,L]"), ("image_id", "[B] (the image's idx)"))
    checkpoint_filters = {
        # ALBEF.pth / ALBEF_4M.pth / our albef_pretrain checkpoints (official Retrieval.py)
        LAYOUT_TEXT_WITH_MLM_HEAD: CheckpointFilter(
            renames=STRIP_BERT_PREFIX,
            unused=((r"^text_encoder(_m)?\.cls\.",
                     "MLM head of the pre-training checkpoint: retrieval has none"),),
            absent=((r"^idx_queue$",
                     "image-id queue: pre-training checkpoints have none; starts empty (-100)"),)),
        # mscoco.pth / flickr30k.pth / refcoco.pth and our own albef_retrieval checkpoints
        LAYOUT_TEXT_PLAIN: CheckpointFilter(),
    }

    def forward(self, batch: Dict[str, Any],
                train_state: Optional[TrainState] = None) -> Dict[str, Any]:
        """ITC + ITM losses for one batch.

        Args:
            batch: ``image [B, 3, H, W]``, ``input_ids [B, L]``, ``attention_mask [B, L]``,
                ``image_id [B]`` (captions of one image share it: ITC positives, never an ITM
                negative).
            train_state: its ``alpha`` (if set) overrides the configured alpha; its
                ``first_micro_batch`` limits the EMA step to one per optimizer update.

        Returns:
            ``{"losses": {"itc", "itm"}, "alpha", "metrics": {"itm_accuracy", "temp"}}``. In
            eval mode neither the momentum encoders nor the queues change.
        """
        self._check_batch(batch)
        image, input_ids, attention_mask = batch["image"], batch["input_ids"], batch["attention_mask"]
        idx = batch["image_id"]
        self._check_image_text(image, input_ids, attention_mask)
        alpha = self.resolve_alpha(self.alpha, train_state)

        image_embeds, image_feat = self.encode_image(image)
        text_embeds, text_feat = self.encode_text(input_ids, attention_mask)
        targets = self.itc_targets(idx)  # against the idx_queue before this batch is enqueued
        if self.training and self.should_update_momentum(train_state):
            self.momentum_update()
        _, image_feat_m, text_feat_m = self.momentum_features(image, input_ids, attention_mask)
        sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m = self.similarities(
            image_feat, text_feat, image_feat_m, text_feat_m)
        losses = {"itc": itc_loss(sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m, alpha, targets=targets)}
        losses["itm"], itm_accuracy = self.itm_loss_and_accuracy(
            image_embeds, text_embeds, attention_mask, sim_i2t, sim_t2i, idx)
        if self.training:  # every micro-batch's momentum features and ids enter the queues
            self.enqueue(image_feat_m, text_feat_m, idx)
        metrics = {"itm_accuracy": itm_accuracy, "temp": self.temp.detach()}
        return {"losses": losses, "alpha": alpha, "metrics": metrics}
