"""Image-text retrieval evaluation of an ALBEF model (registered metric ``retrieval``).

Two stages, as in the official ``Retrieval.py:evaluation``:

1. ITC: encode every caption and every image once; the similarity of an image and a
   caption is the dot product of their normalised projections (no temperature).
   Recalls from this matrix are reported with the prefix ``itc_``.
2. ITM re-ranking (``itm_rerank``): each image's top-``k_test`` captions, and each
   caption's top-``k_test`` images, are re-scored by the fusion encoder's ITM head
   (see :mod:`albef_plugin.metrics.itm_rerank`). Recalls are reported as ``itm_``.

Like the official code, every rank encodes the whole evaluation set (it is small:
5K images at most) and only the re-ranking rows are split across ranks.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from albef_plugin.distributed import unwrap_model
from albef_plugin.metrics.base import BaseMetric, EvalContext, as_context, autocast_for
from albef_plugin.metrics.itm_rerank import center_on_candidate_means, rerank_top_k
from albef_plugin.metrics.retrieval import itm_eval
from albef_plugin.registry import registry

__all__ = ["EncodedRetrievalSet", "RetrievalEvaluator", "RetrievalScores", "autocast_for"]

logger = logging.getLogger(__name__)

_REQUIRED_DATASET_ATTRIBUTES = ("texts", "img2txt", "txt2img", "text_processor")
# ITM scores that can rank the top k_test candidates (RetrievalEvaluator.Config.itm_score)
ITM_SCORES = ("logit", "log_odds")


@dataclass
class EncodedRetrievalSet:
    """Unimodal encodings of a whole retrieval evaluation set (on the evaluation device).

    Attributes:
        image_embeds: ``(Ni, 1+N, D)`` image-encoder tokens.
        image_feats: ``(Ni, E)`` normalised image projections, float32.
        text_embeds: ``(Nt, L, D)`` text-encoder tokens, padded to the longest batch.
        text_masks: ``(Nt, L)`` attention masks (0 on padding).
        text_feats: ``(Nt, E)`` normalised text projections, float32.
    """

    image_embeds: torch.Tensor
    image_feats: torch.Tensor
    text_embeds: torch.Tensor
    text_masks: torch.Tensor
    text_feats: torch.Tensor

    def itc_similarity(self) -> torch.Tensor:
        """``(Ni, Nt)`` image-to-text cosine similarities, float32 even under autocast.

        Kept in float32 because bf16 rounding creates ties between close candidates.
        """
        with torch.autocast(device_type=self.image_feats.device.type, enabled=False):
            return self.image_feats.float() @ self.text_feats.float().t()


@dataclass
class RetrievalScores:
    """Score matrices of one evaluation: ``itc`` is ``(Ni, Nt)``; the ITM ones may be None."""

    itc_i2t: torch.Tensor
    itm_i2t: Optional[torch.Tensor] = None
    itm_t2i: Optional[torch.Tensor] = None


@registry.register_metric("retrieval")
class RetrievalEvaluator(BaseMetric):
    """Recall@1/5/10 of text and image retrieval, from ITC and from ITM re-ranking.

    Parameters (``evaluation.metrics: [{type: retrieval, params: {...}}]``) are the fields
    of :class:`RetrievalEvaluator.Config`. Image batches and loader workers come from the
    :class:`~albef_plugin.metrics.base.EvalContext` (``evaluation.batch_size`` /
    ``num_workers``).
    """

    @dataclass
    class Config:
        k_test: int = 128                 # candidates re-ranked by ITM (official: 256 COCO, 128 Flickr)
        itm_rerank: bool = True           # also compute the ITM re-ranked recalls (itm_*)
        itm_plus_itc: bool = False        # LAVIS scoring: ITM logit + ITC sim (not the official ALBEF)
        # What ranks the top k_test: "logit", the match logit (the official code), or "log_odds",
        # match minus no-match logit (ranks as the ITM probability of a match does)
        itm_score: str = "logit"
        # Subtract from each candidate's score its mean score as a query in the other direction
        # (over its own top k_test): removes a per-caption / per-image bias of the ITM head.
        # Not the official protocol (false); see itm_rerank.center_on_candidate_means.
        itm_center_candidates: bool = False
        text_batch_size: int = 256        # captions per text-encoder batch (official 256)
        itm_pairs_per_call: int = 512     # (query, candidate) pairs per fusion-encoder call (official: k_test)

    def __init__(self, config: Union[None, Mapping[str, Any], Any] = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.timings: Dict[str, float] = {}  # seconds per stage of the last evaluate()

    def check_config(self, config: "RetrievalEvaluator.Config") -> None:
        for name in ("k_test", "text_batch_size", "itm_pairs_per_call"):
            if int(getattr(config, name)) < 1:
                raise ValueError(f"{name}={getattr(config, name)} must be >= 1.")
        if config.itm_score not in ITM_SCORES:
            raise ValueError(f"itm_score={config.itm_score!r} is not one of {', '.join(ITM_SCORES)}.")

    # ------------------------------------------------------------------ public
    def evaluate(self, model: torch.nn.Module, dataset: Any,
                 context: Union[EvalContext, str, torch.device] = "cpu") -> Dict[str, float]:
        """Retrieval recalls of ``model`` on ``dataset``.

        Args:
            model: an ALBEF model (``encode_image``, ``encode_text``, ``itm_logits``);
                DDP / compile wrappers are removed. Put in eval mode for the call and
                restored afterwards.
            dataset: a retrieval evaluation dataset (``__getitem__(i) -> {"image", "index"}``,
                ``texts``, ``img2txt``, ``txt2img``, ``text_processor``).
            context: an :class:`EvalContext` (device, precision, loader sizes) or a device.

        Returns:
            ``itc_<key>`` and, with ``itm_rerank``, ``itm_<key>`` for every key of
            :func:`~albef_plugin.metrics.retrieval.itm_eval`, as plain floats.
        """
        context = as_context(context)
        scores = self.compute_scores(model, dataset, context)
        start = time.perf_counter()
        metrics = {f"itc_{key}": value for key, value in
                   itm_eval(scores.itc_i2t, scores.itc_i2t.t(), dataset.img2txt, dataset.txt2img).items()}
        if scores.itm_i2t is not None:
            metrics.update({f"itm_{key}": value for key, value in
                            itm_eval(scores.itm_i2t, scores.itm_t2i, dataset.img2txt,
                                     dataset.txt2img).items()})
        self.timings["recall_s"] = time.perf_counter() - start
        self.timings["total_s"] = sum(v for k, v in self.timings.items() if k != "total_s")
        logger.info("retrieval evaluation of %d images / %d captions took %.1fs (%s)",
                    len(dataset.img2txt), len(dataset.texts), self.timings["total_s"],
                    ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items() if k != "total_s"))
        return metrics

    def compute_scores(self, model: torch.nn.Module, dataset: Any,
                       context: Union[EvalContext, str, torch.device] = "cpu",
                       precision: Optional[str] = None) -> RetrievalScores:
        """The ITC and (with ``itm_rerank``) ITM score matrices; see :meth:`evaluate`.

        ``precision``, when given, overrides the context's.
        """
        _check_dataset(dataset)
        context = as_context(context)
        device, precision = context.device, precision or context.precision
        model = unwrap_model(model)
        if self.config.itm_rerank and not hasattr(model, "itm_logits"):
            raise TypeError(f"{type(model).__name__} has no itm_logits(); evaluate with ITC only: "
                            f"evaluation.metrics=[{{type: retrieval, params: {{itm_rerank: false}}}}].")
        self.timings = {}
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), autocast_for(device, precision):
                start = time.perf_counter()
                encoded = self.encode(model, dataset, context)
                itc_i2t = encoded.itc_similarity()
                self.timings["encode_s"] = _elapsed_since(start, device)
                scores = RetrievalScores(itc_i2t=itc_i2t)
                if self.config.itm_rerank:
                    start = time.perf_counter()
                    scores.itm_i2t, scores.itm_t2i = self._itm_scores(model, encoded, itc_i2t)
                    self.timings["itm_rerank_s"] = _elapsed_since(start, device)
        finally:
            model.train(was_training)
        return scores

    def encode(self, model: torch.nn.Module, dataset: Any,
               context: Union[EvalContext, str, torch.device]) -> EncodedRetrievalSet:
        """Encode all captions and all images of ``dataset`` (call under inference mode)."""
        context = as_context(context)
        text_embeds, text_masks, text_feats = self._encode_texts(model, dataset, context.device)
        image_embeds, image_feats = self._encode_images(model, dataset, context)
        return EncodedRetrievalSet(image_embeds, image_feats, text_embeds, text_masks, text_feats)

    # ---------------------------------------------------------------- encoding
    def _encode_texts(self, model: torch.nn.Module, dataset: Any, device: torch.device):
        texts: Sequence[str] = dataset.texts
        embeds: List[torch.Tensor] = []
        masks: List[torch.Tensor] = []
        feats: List[torch.Tensor] = []
        for first in range(0, len(texts), self.config.text_batch_size):
            tokens = dataset.text_processor(list(texts[first:first + self.config.text_batch_size]))
            input_ids = torch.as_tensor(tokens["input_ids"]).to(device)
            attention_mask = torch.as_tensor(tokens["attention_mask"]).to(device)
            batch_embeds, batch_feat = model.encode_text(input_ids, attention_mask)
            embeds.append(batch_embeds)
            masks.append(attention_mask)
            feats.append(F.normalize(batch_feat.float(), dim=-1))
        # batches may be padded to different lengths: pad all to the longest (mask 0
        # there, so the fusion encoder ignores the extra positions)
        max_len = max(e.shape[1] for e in embeds)
        text_embeds = torch.cat([F.pad(e, (0, 0, 0, max_len - e.shape[1])) for e in embeds])
        text_masks = torch.cat([F.pad(m, (0, max_len - m.shape[1])) for m in masks])
        return text_embeds, text_masks, torch.cat(feats)

    def _encode_images(self, model: torch.nn.Module, dataset: Any, context: EvalContext):
        # every rank encodes the whole set (re-ranking rows are split later); the default
        # collate is enough for {"image", "index"} items
        from albef_plugin.trainers.preemption import init_signal_free_worker  # (trainers imports metrics)

        device = context.device
        loader = DataLoader(dataset, batch_size=context.batch_size, shuffle=False,
                            num_workers=context.num_workers, pin_memory=device.type == "cuda",
                            worker_init_fn=init_signal_free_worker if context.num_workers else None)
        num_images = len(dataset)
        image_embeds: Optional[torch.Tensor] = None
        image_feats: Optional[torch.Tensor] = None
        seen = torch.zeros(num_images, dtype=torch.bool)
        for batch in loader:
            index = torch.as_tensor(batch["index"]).long()
            embeds, feat = model.encode_image(batch["image"].to(device, non_blocking=True))
            if image_embeds is None:  # sizes known only after the first forward
                image_embeds = embeds.new_empty((num_images, *embeds.shape[1:]))
                image_feats = torch.empty((num_images, feat.shape[-1]), device=device)
            image_embeds[index.to(device)] = embeds
            image_feats[index.to(device)] = F.normalize(feat.float(), dim=-1)
            seen[index] = True
        if image_embeds is None or not bool(seen.all()):
            raise ValueError(f"{type(dataset).__name__}: the image loader did not return every "
                             f"index in [0, {num_images}) as batch['index']; each item must be "
                             f"{{'image': tensor, 'index': i}} with i its position in the dataset.")
        return image_embeds, image_feats

    # -------------------------------------------------------------- re-ranking
    def _itm_scores(self, model: torch.nn.Module, encoded: EncodedRetrievalSet, itc_i2t: torch.Tensor):
        """``(Ni, Nt)`` and ``(Nt, Ni)`` ITM score matrices from the top-k ITC candidates."""
        cfg = self.config

        def image_to_text(image_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
            logits = model.itm_logits(encoded.text_embeds[text_idx], encoded.text_masks[text_idx],
                                      encoded.image_embeds[image_idx])
            if cfg.itm_score == "log_odds":
                return logits[:, 1] - logits[:, 0]
            return logits[:, 1]

        def text_to_image(text_idx: torch.Tensor, image_idx: torch.Tensor) -> torch.Tensor:
            return image_to_text(image_idx, text_idx)

        pairs = cfg.itm_pairs_per_call
        itm_i2t = rerank_top_k(itc_i2t, cfg.k_test, image_to_text, pairs, add_itc=cfg.itm_plus_itc)
        itm_t2i = rerank_top_k(itc_i2t.t(), cfg.k_test, text_to_image, pairs, add_itc=cfg.itm_plus_itc)
        if cfg.itm_center_candidates:
            itm_i2t, itm_t2i = center_on_candidate_means(itm_i2t, itm_t2i)
        return itm_i2t, itm_t2i


def _check_dataset(dataset: Any) -> None:
    missing = [a for a in _REQUIRED_DATASET_ATTRIBUTES if not hasattr(dataset, a)]
    if missing:
        raise TypeError(f"{type(dataset).__name__} is not a retrieval evaluation dataset: it lacks "
                        f"{', '.join(missing)} (see the contract in docs/architecture.md).")
    if len(dataset.img2txt) != len(dataset):
        raise ValueError(f"{type(dataset).__name__}: img2txt has {len(dataset.img2txt)} entries "
                         f"but the dataset has {len(dataset)} images.")
    if len(dataset.txt2img) != len(dataset.texts):
        raise ValueError(f"{type(dataset).__name__}: txt2img has {len(dataset.txt2img)} entries "
                         f"but there are {len(dataset.texts)} texts.")
    if len(dataset) == 0 or len(dataset.texts) == 0:
        raise ValueError(f"{type(dataset).__name__} is empty ({len(dataset)} images, "
                         f"{len(dataset.texts)} texts); nothing to evaluate.")


def _elapsed_since(start: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels are asynchronous: wait before reading the clock
    return time.perf_counter() - start
