"""ALBEF for visual question answering: the official ``model_vqa.py``.

* Question encoder ``text_encoder.*``: the whole text + fusion BERT (``fusion_layer`` text
  layers, then fusion layers cross-attending to the image) over the question.
* Answer decoder ``text_decoder.bert.*`` + ``text_decoder.cls.*``: n = ``num_hidden_layers -
  fusion_layer`` layers (6 at paper size) with causal self-attention and cross-attention to the
  question encoder's final states, masked by the question mask; an LM head tied to its word
  embeddings (``vqa_decoder.py``).
* Momentum copies ``visual_encoder_m``, ``text_encoder_m``, ``text_decoder_m``; no ITC / ITM
  heads, no queues (the official VQA model has none; the inherited ``embed_dim``, ``temp`` and
  ``queue_size`` settings are unused).

Training batch: ``image [B,3,H,W]``, ``question_ids`` / ``question_mask [B,Lq]``, the answers
of all questions ``answer_ids`` / ``answer_mask [A,La]`` (``[CLS] answer [SEP]``),
``answer_question [A]`` (the question each answer belongs to) and ``answer_weights [A]``
(count / annotations for VQA, 0.5 for VG). Each answer's loss is the summed next-token CE,
``(1 - alpha) * CE + alpha * soft CE`` against the momentum decoder when ``distill``; the batch
loss is ``sum(weight * loss) / B``.

Inference: :meth:`ALBEFVQA.rank_answer` (the official ``rank_answer``, see
``vqa_decoder.rank_candidates``) and :class:`VQAAnswerer` / :func:`answer` for raw images and
question strings.

Loading: a pre-training checkpoint (official ``ALBEF.pth`` or ours) initialises the decoder
from fusion layers ``f..f+n-1`` (-> decoder ``0..n-1``), the BERT embeddings and the MLM head
(-> LM head), for the online and momentum copies; the encoder drops the ``bert.`` prefix. The
official ``vqa.pth`` (and our ``albef_vqa`` checkpoints) load key for key.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from albef_plugin.models.albef.base import ALBEFBase, TINY_ALBEF_OVERRIDES
from albef_plugin.models.albef.components import ImageEncoderConfig
from albef_plugin.models.albef.vqa_decoder import (answer_token_losses, build_answer_decoder,
                                                   decoder_logits, rank_candidates)
from albef_plugin.models.checkpoints.filters import (LAYOUT_TEXT_PLAIN, LAYOUT_TEXT_WITH_MLM_HEAD,
                                                     STRIP_BERT_PREFIX, CheckpointFilter,
                                                     fusion_layers_to_decoder,
                                                     text_encoder_layout)
from albef_plugin.registry import registry
from albef_plugin.train_state import TrainState

__all__ = ["ALBEFVQA", "VQAAnswerer", "answer"]

State = Dict[str, torch.Tensor]

# Pre-training heads and buffers the VQA model has no use for.
_PRETRAIN_UNUSED = (
    (r"^(vision_proj|text_proj)(_m)?\.", "ITC projections: the VQA model has no ITC"),
    (r"^itm_head\.", "ITM head: the VQA model has no ITM"),
    (r"^temp$", "ITC temperature: the VQA model has no ITC"),
    (r"^(image_queue|text_queue|idx_queue|queue_ptr)$", "ITC queues: the VQA model has none"),
)


def _pretrain_to_vqa(fusion_layer: int, num_decoder_layers: int):
    """The remap step from the pre-training layout (after ``bert.`` was stripped and the MLM
    head renamed to ``text_decoder*.cls``): decoder layers and embeddings copied."""
    def remap(state: State) -> State:
        for suffix in ("", "_m"):
            state = fusion_layers_to_decoder(state, f"text_encoder{suffix}.encoder.",
                                             f"text_decoder{suffix}.bert.encoder.", fusion_layer,
                                             num_decoder_layers)
            embeddings = f"text_encoder{suffix}.embeddings."
            state.update({f"text_decoder{suffix}.bert.embeddings." + key[len(embeddings):]: value
                          for key, value in list(state.items()) if key.startswith(embeddings)})
        return state
    return remap


@registry.register_model("albef_vqa")
class ALBEFVQA(ALBEFBase):
    """ALBEF fine-tuned for VQA with an answer decoder; see the module docstring."""

    @dataclass
    class Config(ALBEFBase.Config):
        image_encoder: ImageEncoderConfig = field(
            default_factory=lambda: ImageEncoderConfig(image_size=384))
        distill: bool = True   # momentum distillation of the decoder (official: True)
        # rank_answer score: True = the official log p(first) + log p(answer), which counts the
        # first token twice; False = the plain sequence log-likelihood log p(answer).
        score_first_token_twice: bool = True

    momentum_children = ("visual_encoder", "text_encoder", "text_decoder")
    use_queues = False
    required_batch_keys = (("image", "[B,3,H,W]"), ("question_ids", "[B,Lq]"),
                           ("question_mask", "[B,Lq]"), ("answer_ids", "[A,La]"),
                           ("answer_mask", "[A,La]"), ("answer_question", "[A] question index"),
                           ("answer_weights", "[A]"))
    # the official vqa.pth layout and our own albef_vqa checkpoints: key for key
    checkpoint_filters = {LAYOUT_TEXT_PLAIN: CheckpointFilter()}

    # ------------------------------------------------------------ construction
    def read_config(self, cfg: Any) -> None:
        super().read_config(cfg)
        text = cfg.text_encoder
        self.fusion_layer = int(text.fusion_layer)
        self.num_decoder_layers = int(text.num_hidden_layers) - self.fusion_layer
        if self.num_decoder_layers < 1:
            raise ValueError(f"albef_vqa: text_encoder.num_hidden_layers={text.num_hidden_layers} "
                             f"with fusion_layer={text.fusion_layer} leaves no fusion layer for the "
                             f"answer decoder (it has num_hidden_layers - fusion_layer layers).")
        self.distill = bool(cfg.distill)
        self.score_first_token_twice = bool(cfg.score_first_token_twice)

    def build_heads(self, cfg: Any) -> None:
        """The answer decoder (the official VQA model has no ITC / ITM heads)."""
        self.text_decoder = build_answer_decoder(cfg.text_encoder, self.num_decoder_layers)

    @classmethod
    def tiny_overrides(cls) -> Dict[str, Any]:
        tiny = copy.deepcopy(TINY_ALBEF_OVERRIDES)
        tiny.pop("queue_size")
        return tiny

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        self.text_decoder.set_grad_checkpointing(enable)

    def dummy_batch(self, batch_size: int = 4, seed: int = 0) -> Dict[str, torch.Tensor]:
        """Random images and questions; 1-3 answers ``[CLS] w [SEP]`` per question."""
        base = super().dummy_batch(batch_size, seed)
        text = self.config.text_encoder
        gen = torch.Generator().manual_seed(seed + 1)
        per_question = torch.arange(batch_size) % 3 + 1
        answer_question = torch.repeat_interleave(torch.arange(batch_size), per_question)
        num_answers = int(answer_question.numel())
        special = max(text.pad_token_id, text.cls_token_id, text.mask_token_id) + 1
        answer_ids = torch.randint(special + 1, text.vocab_size, (num_answers, 4), generator=gen)
        answer_ids[:, 0] = text.cls_token_id
        answer_ids[:, 2] = special  # [SEP] of a one-word answer; the last column is padding
        answer_ids[:, 3] = text.pad_token_id
        answer_mask = (answer_ids != text.pad_token_id).long()
        return {"image": base["image"], "question_ids": base["input_ids"],
                "question_mask": base["attention_mask"], "answer_ids": answer_ids,
                "answer_mask": answer_mask, "answer_question": answer_question,
                "answer_weights": torch.rand(num_answers, generator=gen)}

    # ------------------------------------------------------------ checkpoints
    def checkpoint_filter(self, state: Mapping[str, torch.Tensor]) -> Tuple[State, Dict[str, str]]:
        """Pre-training files: the decoder from the fusion layers, embeddings and MLM head
        (online and momentum); VQA files: unchanged. Decoder cross-attention keys / values are
        not taken from the fusion layers when the image width differs from the hidden size
        (the fusion layers read image tokens, the decoder reads question states)."""
        if text_encoder_layout(state) != LAYOUT_TEXT_WITH_MLM_HEAD:
            return super().checkpoint_filter(state)
        rules = CheckpointFilter(
            renames=STRIP_BERT_PREFIX + ((r"^text_encoder(_m)?\.cls\.", r"text_decoder\1.cls."),),
            remap=_pretrain_to_vqa(self.fusion_layer, self.num_decoder_layers),
            unused=_PRETRAIN_UNUSED)
        own = self.state_dict()
        mapped, tolerated = rules.apply(state, own.keys())
        cross_kv = re.compile(r"^text_decoder(_m)?\.bert\.encoder\.layer\.\d+\.crossattention\."
                              r"self\.(key|value)\.")
        for key in [k for k in mapped if cross_kv.match(k)]:
            if key in own and mapped[key].shape != own[key].shape:
                del mapped[key]
                tolerated[key] = ("decoder cross-attention reads question states, not image "
                                  "tokens of another width: left as initialised")
        return mapped, tolerated

    # ------------------------------------------------------------ public API
    def encode_question(self, image: torch.Tensor, question_ids: torch.Tensor,
                        question_mask: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        """Final question-encoder states ``[B, Lq, H]`` (all layers; the fusion layers attend
        to the image); ``momentum=True`` uses the momentum encoders."""
        visual = self.visual_encoder_m if momentum else self.visual_encoder
        text = self.text_encoder_m if momentum else self.text_encoder
        return text(question_ids, question_mask, encoder_hidden_states=visual(image),
                    mode="multimodal")

    def answer_logits(self, answer_ids: torch.Tensor, answer_mask: Optional[torch.Tensor],
                      question_states: torch.Tensor, question_mask: torch.Tensor,
                      momentum: bool = False) -> torch.Tensor:
        """Decoder vocabulary logits ``[A, La, V]`` (one question state per answer row)."""
        decoder = self.text_decoder_m if momentum else self.text_decoder
        return decoder_logits(decoder, answer_ids, answer_mask, question_states, question_mask)

    def rank_answer(self, image: torch.Tensor, question_ids: torch.Tensor,
                    question_mask: torch.Tensor, answer_ids: torch.Tensor,
                    answer_mask: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The official ``rank_answer`` over candidate answers.

        Args:
            image: ``[B, 3, H, W]``; question_ids / question_mask: ``[B, Lq]``.
            answer_ids / answer_mask: ``[N, La]``, every candidate as ``[CLS] answer [SEP]``.
            k: candidates re-ranked per question (official k_test 128); min(k, N) are kept.

        Returns:
            ``(topk_ids [B, k'], topk_probs [B, k'])``: rows of ``answer_ids``, best first, and
            their softmax over the k' scores (score: see ``score_first_token_twice``).
        """
        states = self.encode_question(image, question_ids, question_mask)
        return self.rank_answer_from_states(states, question_mask, answer_ids, answer_mask, k)

    def rank_answer_from_states(self, question_states: torch.Tensor, question_mask: torch.Tensor,
                                answer_ids: torch.Tensor, answer_mask: torch.Tensor,
                                k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`rank_answer` given the question encoder's states ``[B, Lq, H]``."""
        return rank_candidates(
            lambda ids, mask, states, states_mask: self.answer_logits(ids, mask, states, states_mask),
            question_states, question_mask, answer_ids, answer_mask, k,
            first_token_twice=self.score_first_token_twice)

    # ---------------------------------------------------------------- forward
    def forward(self, batch: Dict[str, Any],
                train_state: Optional[TrainState] = None) -> Dict[str, Any]:
        """The answer loss of one batch (see the module docstring for the batch keys).

        Returns ``{"losses": {"vqa"}, "alpha"}``. In eval
        mode the same loss is computed but the momentum encoders do not move.
        """
        self._check_batch(batch)
        image, question_ids, question_mask = (batch["image"], batch["question_ids"],
                                              batch["question_mask"])
        answer_ids, answer_mask = batch["answer_ids"], batch["answer_mask"]
        answer_question, weights = batch["answer_question"], batch["answer_weights"]
        self._check_image_text(image, question_ids, question_mask)
        alpha = self.resolve_alpha(self.alpha, train_state)

        states = self.encode_question(image, question_ids, question_mask)
        # question states repeated per answer (a gather: no host sync for the counts)
        answer_states_mask = question_mask.index_select(0, answer_question)
        logits = self.answer_logits(answer_ids, answer_mask, states.index_select(0, answer_question),
                                    answer_states_mask)
        teacher = None
        if self.distill:
            if self.training and self.should_update_momentum(train_state):
                self.momentum_update()
            with torch.no_grad():
                states_m = self.encode_question(image, question_ids, question_mask, momentum=True)
                teacher = self.answer_logits(answer_ids, answer_mask,
                                             states_m.index_select(0, answer_question),
                                             answer_states_mask, momentum=True)
        per_answer = answer_token_losses(logits, answer_ids, answer_mask, teacher,
                                         alpha if self.distill else 0.0)
        loss = (weights.to(per_answer.dtype) * per_answer).sum() / image.shape[0]
        return {"losses": {"vqa": loss}, "alpha": alpha}


class VQAAnswerer:
    """Answers questions about images with a VQA model and a candidate answer list.

    The candidate list is tokenised once (``[CLS] answer [SEP]``). Example::

        answerer = VQAAnswerer(model, ["yes", "no", "2", "red"], k=128)
        answerer.answer(Image.open("cat.jpg"), "What color is the cat?")  # [("red", 0.93)]

    Args:
        model: an :class:`ALBEFVQA` (moved to ``device`` by the caller).
        answer_list: the candidate answers (``answer_list.json``).
        k: candidates re-ranked per question (official 128).
        question_processor / answer_processor: ``bert_text`` processors; default the packaged
            bert-base-uncased vocabulary, questions cleaned by ``pre_question`` (50 words, as
            at test time), answers with a trailing ``[SEP]``.
        image_processor: PIL -> tensor; default the eval transform at the model's image size
            (mean / std of ``model.pretrained_cfg`` when a checkpoint was loaded).
    """

    def __init__(self, model: ALBEFVQA, answer_list: Sequence[str], k: int = 128,
                 question_processor: Any = None, answer_processor: Any = None,
                 image_processor: Any = None) -> None:
        from albef_plugin.processors import ImageEvalProcessor, TextProcessor

        if not answer_list or not all(isinstance(a, str) and a for a in answer_list):
            raise ValueError("VQAAnswerer needs a non-empty list of non-empty answer strings.")
        if k < 1:
            raise ValueError(f"VQAAnswerer: k={k} must be at least 1.")
        self.model, self.answer_list, self.k = model, list(answer_list), int(k)
        self.question_processor = question_processor or TextProcessor(
            max_length=64, max_words=50, apply_pre_caption=False)
        self.answer_processor = answer_processor or TextProcessor(
            max_length=32, add_sep=True, apply_pre_caption=False)
        if image_processor is None:
            cfg = getattr(model, "pretrained_cfg", None) or {}
            stats = {key: cfg[key] for key in ("mean", "std") if key in cfg}
            image_processor = ImageEvalProcessor(image_size=model.visual_encoder.image_size, **stats)
        self.image_processor = image_processor
        self._answers = self.answer_processor(self.answer_list)

    def answer_batch(self, images: Sequence[Any], questions: Sequence[str],
                     top: int = 1) -> List[List[Tuple[str, float]]]:
        """For each (image, question): the ``top`` answers with their probabilities. Images
        are PIL images, paths, or ``[3, H, W]`` tensors already transformed."""
        from albef_plugin.datasets.images import read_rgb
        from albef_plugin.processors import pre_question

        if len(images) != len(questions) or not questions:
            raise ValueError(f"answer_batch: got {len(images)} images and {len(questions)} "
                             f"questions; give one image per question (at least one).")
        device = next(self.model.parameters()).device
        tensors = []
        for image in images:
            if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
                image = read_rgb(str(image))
            tensors.append(image if isinstance(image, torch.Tensor) else self.image_processor(image))
        tokens = self.question_processor([pre_question(q, 50) for q in questions])
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                ids, probs = self.model.rank_answer(
                    torch.stack(tensors).to(device), tokens["input_ids"].to(device),
                    tokens["attention_mask"].to(device), self._answers["input_ids"].to(device),
                    self._answers["attention_mask"].to(device), self.k)
        finally:
            self.model.train(was_training)
        ids, probs = ids[:, :top].tolist(), probs[:, :top].tolist()
        return [[(self.answer_list[i], p) for i, p in zip(row_ids, row_probs)]
                for row_ids, row_probs in zip(ids, probs)]

    def answer(self, image: Any, question: str, top: int = 1) -> List[Tuple[str, float]]:
        """The ``top`` answers to one question about one image, with their probabilities."""
        return self.answer_batch([image], [question], top)[0]


def answer(model: ALBEFVQA, image: Any, question: str, answer_list: Sequence[str],
           k: int = 128, top: int = 1) -> List[Tuple[str, float]]:
    """One-off :meth:`VQAAnswerer.answer` (tokenises the answer list on every call)."""
    return VQAAnswerer(model, answer_list, k=k).answer(image, question, top)

