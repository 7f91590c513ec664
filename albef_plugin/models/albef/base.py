"""The public base of the ALBEF model family: what every task model reuses.

``ALBEFBase`` builds, from its typed config, the image encoder (``visual_encoder``), the text
encoder (``text_encoder``; with the MLM head ``text_encoder.bert.*`` / ``text_encoder.cls.*``
when ``text_encoder_with_mlm_head``, else plain ``text_encoder.*``), the heads of
:meth:`build_heads` (default: ITC projections, ``itm_head``, ``temp``), the momentum copies
``<name>_m`` of ``momentum_children`` and, with ``use_queues``, the ITC feature queues (plus
``idx_queue`` with ``use_idx_queue``). Attribute names are the official ones, so state-dict keys
match the released checkpoints.

Shared steps, each a method a task's ``forward`` calls in the official order:
``encode_image`` / ``encode_text`` / ``fuse`` / ``itm_logits`` (public API),
``should_update_momentum`` + ``momentum_update`` (EMA, once per optimizer update),
``momentum_features``, ``similarities`` (online and momentum, ``[B, B + Q]``),
``itc_targets`` (multi-positive: ``pos = idx == [idx_batch | idx_queue]``, row-normalised),
``itm_loss_and_accuracy`` (hard negatives never of a positive pair) and ``enqueue``.

Config is read once, in the constructor, into plain attributes: ``forward`` never touches
OmegaConf (slow on the hot path, and it breaks ``torch.compile`` graphs).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from albef_plugin.distributed import get_world_size
from albef_plugin.losses.itm import (itm_labels, itm_loss, positive_mask_from_ids,
                                     sample_hard_negative_sets)
from albef_plugin.models.albef.components import (ImageEncoderConfig, TextEncoderConfig,
                                                  build_text_encoder, build_text_encoder_mlm,
                                                  build_visual_encoder)
from albef_plugin.models.base import BaseModel
from albef_plugin.models.checkpoints.filters import CheckpointFilter, text_encoder_layout
from albef_plugin.models.momentum import make_momentum_copy, momentum_update, paired_parameters
from albef_plugin.models.queue import enqueue, register_feature_queues, similarity_with_queue
from albef_plugin.train_state import TrainState

__all__ = ["ALBEFBase", "Alpha", "TINY_ALBEF_OVERRIDES"]

Alpha = Union[float, torch.Tensor]

# A few-second CPU size (tests, smoke runs); the special token ids fit the 100-word vocabulary.
TINY_ALBEF_OVERRIDES: Dict[str, Any] = {
    "image_encoder": {"image_size": 32, "patch_size": 8, "width": 32, "depth": 2, "num_heads": 2},
    "text_encoder": {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 4,
                     "fusion_layer": 2, "num_attention_heads": 2, "intermediate_size": 64,
                     "max_position_embeddings": 32, "pad_token_id": 0, "cls_token_id": 1,
                     "mask_token_id": 2},
    "embed_dim": 16,
    "queue_size": 16,
}


class ALBEFBase(BaseModel):
    """Encoders, projections, momentum pairs and queues of ALBEF; see the module docstring.

    Subclasses set the class attributes below, override :meth:`build_heads` /
    :meth:`read_config` when they need other heads or settings, and write ``forward``.
    """

    @dataclass
    class Config:
        image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
        text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
        embed_dim: int = 256             # ITC projection size
        temp: float = 0.07               # initial ITC temperature (learnable)
        queue_size: int = 65536          # must be a multiple of the global batch
        momentum: float = 0.995          # EMA coefficient of the momentum encoders
        alpha: float = 0.4               # distillation weight after the ramp
        alpha_ramp_epochs: float = 1.0   # linear ramp of alpha from 0 (0 = constant alpha)
        gradient_checkpointing: bool = False
        # Weights to start from, loaded after image/text_encoder.pretrained: an official ALBEF
        # checkpoint, one of ours, or a converted folder (models/checkpoints: load_checkpoint).
        checkpoint: Optional[str] = None
        # Trusted files only: let `checkpoint` / the pretrained files need full unpickling.
        allow_unsafe_pickle: bool = False

    # --- what a subclass chooses
    text_encoder_with_mlm_head: ClassVar[bool] = False
    # online children that get an EMA copy "<name>_m" (empty: no momentum model)
    momentum_children: ClassVar[Tuple[str, ...]] = ("visual_encoder", "vision_proj",
                                                    "text_encoder", "text_proj")
    # modules torch.compile'd in place by compile_encoders() (their momentum copies too)
    compile_children: ClassVar[Tuple[str, ...]] = ("visual_encoder", "text_encoder")
    use_queues: ClassVar[bool] = True
    use_idx_queue: ClassVar[bool] = False
    # source layout (filters.text_encoder_layout) -> how this model reads it
    checkpoint_filters: ClassVar[Mapping[str, CheckpointFilter]] = {}
    # batch keys forward needs, with their shapes for the error message
    required_batch_keys: ClassVar[Tuple[Tuple[str, str], ...]] = (
        ("image", "[B,3,H,W]"), ("input_ids", "[B,L]"), ("attention_mask", "[B,L]"))

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        cfg = self.config
        self.read_config(cfg)
        self.visual_encoder = build_visual_encoder(cfg.image_encoder)
        self.text_encoder = self.build_text_encoder(cfg)
        self.build_heads(cfg)
        for name in self.momentum_children:
            setattr(self, name + "_m", make_momentum_copy(getattr(self, name)))
        if self.use_queues:
            register_feature_queues(self, self.embed_dim, self.queue_size,
                                    with_idx_queue=self.use_idx_queue)
        # (online, momentum) parameter lists, built on first use; not module state
        self._momentum_params: Optional[Tuple[List[torch.Tensor], List[torch.Tensor]]] = None
        if cfg.gradient_checkpointing:
            self.set_grad_checkpointing(True)
        self._load_configured_weights()

    # ------------------------------------------------------------ construction hooks
    def read_config(self, cfg: Any) -> None:
        """Copy the settings ``forward`` needs into plain attributes (extend with super())."""
        self.vision_width = int(cfg.image_encoder.width)
        self.hidden_size = int(cfg.text_encoder.hidden_size)
        self.embed_dim = int(cfg.embed_dim)
        self.queue_size = int(cfg.queue_size)
        self.momentum = float(cfg.momentum)
        self.alpha = float(cfg.alpha)
        self.alpha_ramp_epochs = float(cfg.alpha_ramp_epochs)
        # ITC: online features of the batch in the first B columns (see ALBEFPretrain.Config)
        self.itc_online_batch = False

    def build_text_encoder(self, cfg: Any) -> nn.Module:
        """The BERT text / fusion stack (override for another stack, e.g. NLVR2's pairs of
        fusion blocks)."""
        build_text = build_text_encoder_mlm if self.text_encoder_with_mlm_head else build_text_encoder
        return build_text(cfg.text_encoder, self.vision_width)

    def build_heads(self, cfg: Any) -> None:
        """Heads on top of the encoders (default: ITC projections, ITM head, temperature)."""
        self.vision_proj = nn.Linear(self.vision_width, self.embed_dim)
        self.text_proj = nn.Linear(self.hidden_size, self.embed_dim)
        self.itm_head = nn.Linear(self.hidden_size, 2)
        self.temp = nn.Parameter(torch.tensor(float(cfg.temp)))  # 0-dim, as the official

    def _load_configured_weights(self) -> None:
        """DeiT / BERT initial weights (momentum copies re-synced), then ``checkpoint``."""
        from albef_plugin.models.checkpoints import load_checkpoint
        from albef_plugin.models.pretrained import load_initial_weights

        cfg = self.config
        load_initial_weights(self, cfg.image_encoder.pretrained, cfg.text_encoder.pretrained,
                             allow_unsafe_pickle=cfg.allow_unsafe_pickle)
        for part in ("image_encoder", "text_encoder"):
            if cfg[part].pretrained:
                self.loaded_weights[f"{part}.pretrained"] = str(cfg[part].pretrained)
        if cfg.checkpoint:
            load_checkpoint(self, cfg.checkpoint, strict=True,
                            allow_unsafe_pickle=cfg.allow_unsafe_pickle)
            self.loaded_weights["checkpoint"] = str(cfg.checkpoint)

    @classmethod
    def tiny_overrides(cls) -> Dict[str, Any]:
        return copy.deepcopy(TINY_ALBEF_OVERRIDES)

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

    def alpha_for(self, state: Optional[TrainState]) -> float:
        """``alpha * min(1, epoch_progress / alpha_ramp_epochs)``; constant without a ramp."""
        if state is None or self.alpha_ramp_epochs <= 0:
            return self.alpha
        return self.alpha * min(1.0, state.epoch_progress / self.alpha_ramp_epochs)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute online encoder activations in backward (the momentum ones need none)."""
        self.visual_encoder.set_grad_checkpointing(enable)
        self.text_encoder.set_grad_checkpointing(enable)

    def compile_encoders(self, **compile_kwargs: Any) -> List[str]:
        """``torch.compile`` the encoders in place (``nn.Module.compile``), online and momentum.

        In place, so ``state_dict`` keys do not change (no ``_orig_mod.`` prefix) and checkpoints
        stay interchangeable with eager runs. The data-dependent parts of a step (hard-negative
        sampling, MLM position selection, queue writes) stay eager: the encoders are where the
        FLOPs are, and their graphs have static shapes. Returns the names compiled.
        """
        names = []
        for name in self.compile_children:
            for attr in (name, name + "_m"):
                module = getattr(self, attr, None)
                if isinstance(module, nn.Module):
                    module.compile(**compile_kwargs)
                    names.append(attr)
        return names

    def dummy_batch(self, batch_size: int = 4, seed: int = 0) -> Dict[str, torch.Tensor]:
        """Random images and ``[CLS] w1 ... [PAD]`` captions of varied lengths; ``image_id``
        pairs samples 2 by 2 (two captions per image, as retrieval data)."""
        text = self.config.text_encoder
        size = int(self.config.image_encoder.image_size)
        gen = torch.Generator().manual_seed(seed)
        length = 8
        special = max(text.pad_token_id, text.cls_token_id, text.mask_token_id) + 1
        input_ids = torch.randint(special, text.vocab_size, (batch_size, length), generator=gen)
        input_ids[:, 0] = text.cls_token_id
        lengths = torch.randint(3, length + 1, (batch_size,), generator=gen)
        lengths[0] = length
        attention_mask = (torch.arange(length)[None] < lengths[:, None]).long()
        return {"image": torch.randn(batch_size, 3, size, size, generator=gen),
                "input_ids": input_ids.masked_fill(attention_mask == 0, text.pad_token_id),
                "attention_mask": attention_mask,
                "image_id": torch.arange(batch_size) // 2}

    # ------------------------------------------------------------ checkpoints
    def checkpoint_filter(self, state: Mapping[str, torch.Tensor]
                          ) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
        """Apply this class's :class:`CheckpointFilter` for the file's text-encoder layout."""
        rules = self.checkpoint_filters.get(text_encoder_layout(state) or "")
        if rules is None:
            return dict(state), {}
        return rules.apply(state, self.state_dict().keys())

    # --------------------------------------------------------------- side effects
    @staticmethod
    def should_update_momentum(train_state: Optional[TrainState]) -> bool:
        """EMA once per optimizer update: on the first micro-batch of each update (the trainer
        says which through ``train_state``); a loop without train state updates every call."""
        return train_state is None or train_state.first_micro_batch

    @torch.no_grad()
    def momentum_update(self) -> None:
        """EMA step of the momentum copies toward the online modules (training only)."""
        if self._momentum_params is None:
            self._momentum_params = paired_parameters(
                [(getattr(self, name), getattr(self, name + "_m")) for name in self.momentum_children])
        momentum_update(*self._momentum_params, self.momentum)

    @torch.no_grad()
    def enqueue(self, image_feat_m: torch.Tensor, text_feat_m: torch.Tensor,
                idx: Optional[torch.Tensor] = None) -> None:
        """Push the (all-gathered) momentum features, and the ``idx`` of their images when the
        model has an ``idx_queue``, into the queues (training only)."""
        queues, values = [self.image_queue, self.text_queue], [image_feat_m, text_feat_m]
        if self.use_idx_queue:
            if idx is None:
                raise ValueError(f"{type(self).__name__} keeps an idx_queue: enqueue needs idx")
            queues.append(self.idx_queue)
            values.append(idx)
        enqueue(queues, self.queue_ptr, values)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "ALBEFBase":
        self._momentum_params = None  # .to()/.cuda() may swap parameter tensors
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self._momentum_params = None  # assign=True replaces parameter objects
        return super().load_state_dict(*args, **kwargs)

    # ------------------------------------------------------------- shared steps
    @staticmethod
    def _normalized(projected: torch.Tensor) -> torch.Tensor:
        # fp32 so that bf16 autocast does not coarsen the features that fill the queue
        return F.normalize(projected.float(), dim=-1)

    def _check_batch(self, batch: Mapping[str, Any]) -> None:
        missing = [key for key, _ in self.required_batch_keys if key not in batch]
        if missing:
            needs = ", ".join(f"{key} {shape}" for key, shape in self.required_batch_keys)
            raise KeyError(f"{type(self).__name__} batch is missing {missing}; it needs {needs}. "
                           f"Got keys {sorted(batch)}")

    def _check_image_text(self, image: torch.Tensor, input_ids: torch.Tensor,
                          mask: torch.Tensor) -> None:
        if image.dim() != 4 or input_ids.dim() != 2 or mask.shape != input_ids.shape:
            raise ValueError(f"{type(self).__name__} batch shapes: image {tuple(image.shape)} must "
                             f"be [B,3,H,W], input_ids {tuple(input_ids.shape)} and attention_mask "
                             f"{tuple(mask.shape)} the same [B,L]")
        if image.shape[0] != input_ids.shape[0]:
            raise ValueError(f"batch has {image.shape[0]} images but {input_ids.shape[0]} texts")

    def momentum_features(self, image: torch.Tensor, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor
                          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Momentum image tokens ``[B, 1+N, D]``, image and text features ``[B, E]`` (no grad)."""
        with torch.no_grad():
            image_embeds_m = self.visual_encoder_m(image)
            image_feat_m = self._normalized(self.vision_proj_m(image_embeds_m[:, 0]))
            text_embeds_m = self.text_encoder_m(input_ids, attention_mask, mode="text")
            text_feat_m = self._normalized(self.text_proj_m(text_embeds_m[:, 0]))
        return image_embeds_m, image_feat_m, text_feat_m

    def similarities(self, image_feat: torch.Tensor, text_feat: torch.Tensor,
                     image_feat_m: torch.Tensor, text_feat_m: torch.Tensor
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Online and momentum similarities ``[B, B + Q]`` against [momentum batch | queue].

        With ``itc_online_batch`` the first B columns of the online similarities hold the
        online features of the batch (the queue stays momentum). Computed in fp32 even under
        autocast: logits reach 1/temp and 65k-way softmaxes are sensitive to bf16 rounding.
        """
        batch = image_feat.shape[0]
        with torch.autocast(device_type=image_feat.device.type, enabled=False):
            if (not self.itc_online_batch and self.image_queue.shape[1] > 0
                    and self.image_queue.dtype == self.text_queue.dtype == torch.float32):
                return self._similarities_without_queue_copy(
                    image_feat.float(), text_feat.float(), image_feat_m.float(),
                    text_feat_m.float(), self.temp.float())
            # torch.cat copies, so the in-place enqueue later cannot corrupt autograd's saved inputs
            image_feat_all = torch.cat([image_feat_m.t(), self.image_queue.float()], dim=1)
            text_feat_all = torch.cat([text_feat_m.t(), self.text_queue.float()], dim=1)
            temp = self.temp.float()
            if self.itc_online_batch:
                sim_i2t = image_feat @ torch.cat([text_feat.t(), text_feat_all[:, batch:]], 1) / temp
                sim_t2i = text_feat @ torch.cat([image_feat.t(), image_feat_all[:, batch:]], 1) / temp
            else:
                sim_i2t = image_feat @ text_feat_all / temp
                sim_t2i = text_feat @ image_feat_all / temp
            with torch.no_grad():
                sim_i2t_m = image_feat_m @ text_feat_all / temp
                sim_t2i_m = text_feat_m @ image_feat_all / temp
        return sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m

    def _similarities_without_queue_copy(self, image_feat: torch.Tensor, text_feat: torch.Tensor,
                                         image_feat_m: torch.Tensor, text_feat_m: torch.Tensor,
                                         temp: torch.Tensor
                                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The official-form similarities (``itc_batch_features: momentum``, fp32 queues) without
        the ``[D, B + Q]`` concatenations; see :func:`~albef_plugin.models.queue.similarity_with_queue`."""
        global_batch = image_feat.shape[0] * get_world_size()
        sim_i2t = similarity_with_queue(image_feat, text_feat_m.t(), self.text_queue,
                                        self.queue_ptr, global_batch) / temp
        sim_t2i = similarity_with_queue(text_feat, image_feat_m.t(), self.image_queue,
                                        self.queue_ptr, global_batch) / temp
        with torch.no_grad():
            sim_i2t_m = torch.cat([image_feat_m @ text_feat_m.t(), image_feat_m @ self.text_queue], 1) / temp
            sim_t2i_m = torch.cat([text_feat_m @ image_feat_m.t(), text_feat_m @ self.image_queue], 1) / temp
        return sim_i2t, sim_t2i, sim_i2t_m, sim_t2i_m

    def itc_targets(self, idx: torch.Tensor) -> torch.Tensor:
        """Multi-positive ITC targets ``[B, B + Q]``: ``pos = idx == [idx_batch | idx_queue]``,
        each row divided by its number of positives (the official retrieval targets)."""
        if idx.dim() != 1:
            raise ValueError(f"idx must have shape [B], got {tuple(idx.shape)}")
        idx_all = idx
        if self.use_queues:
            if not self.use_idx_queue:
                raise ValueError(f"{type(self).__name__} has queues without idx_queue: "
                                 f"multi-positive targets need use_idx_queue")
            idx_all = torch.cat([idx, self.idx_queue[0]])
        positives = (idx[:, None] == idx_all[None, :]).float()
        return positives / positives.sum(dim=1, keepdim=True)

    def itm_loss_and_accuracy(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                              attention_mask: torch.Tensor, sim_i2t: torch.Tensor,
                              sim_t2i: torch.Tensor, image_ids: Optional[torch.Tensor],
                              num_negatives: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
        """ITM loss over ``(1 + 2n)B`` pairs in one fusion pass, and its accuracy (detached).

        Hard negatives are drawn from the local batch with weights ``softmax(sim)``; pairs of
        the same ``image_ids`` (the positive mask; the diagonal without ids) are never drawn.
        ``num_negatives`` (n) distinct negatives per text and per image; the paper's is 1.
        """
        batch = image_embeds.shape[0]
        positives = positive_mask_from_ids(image_ids, batch, image_embeds.device)
        neg_image, neg_text, valid_image, valid_text = sample_hard_negative_sets(
            sim_i2t, sim_t2i, num_negatives, positives)
        neg_image, neg_text = neg_image.reshape(-1), neg_text.reshape(-1)   # draw-major
        # pairs: (text b, image b) | (text b, hard negative images) | (hard negative texts, image b)
        text_all = torch.cat([text_embeds, text_embeds.repeat(num_negatives, 1, 1),
                              text_embeds[neg_text]])
        mask_all = torch.cat([attention_mask, attention_mask.repeat(num_negatives, 1),
                              attention_mask[neg_text]])
        image_all = torch.cat([image_embeds, image_embeds[neg_image],
                               image_embeds.repeat(num_negatives, 1, 1)])
        logits = self.itm_logits(text_all, mask_all, image_all)
        labels = itm_labels(batch, logits.device, num_negatives)
        valid = torch.cat([torch.ones_like(valid_image[0]), valid_image.reshape(-1),
                           valid_text.reshape(-1)])
        loss = itm_loss(logits, labels, valid=valid)
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == labels).float() * valid.float()
            accuracy = correct.sum() / valid.float().sum()
        return loss, accuracy

    # private names of the shared steps from before the family refactor (used by tests)
    _momentum_features = momentum_features
    _similarities = similarities
    _itm_loss = itm_loss_and_accuracy

    @staticmethod
    def resolve_alpha(default: float, train_state: Optional[TrainState]) -> Alpha:
        """The trainer's alpha for this forward when it set one, else ``default``."""
        if train_state is not None and train_state.alpha is not None:
            return train_state.alpha
        return default

