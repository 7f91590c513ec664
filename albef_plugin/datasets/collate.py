"""Collate functions: lists of dataset items -> the batch dicts models consume.

Training batch (pre-training and retrieval fine-tuning)::

    image           float (B, 3, H, W)
    input_ids       long  (B, L)   text tokenised here: padded to the longest, <= max_length
    attention_mask  long  (B, L)
    image_id        long  (B,)     same id = same image (masks ITM negatives)
    num_skipped     int            unreadable image files met while building this batch

Evaluation batch (retrieval): ``image (B, 3, H, W)`` and ``index`` long ``(B,)``.

Both are classes, not closures, so they pickle into spawned DataLoader workers.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch

__all__ = ["ImageTextCollate", "EvalImageCollate"]


class ImageTextCollate:
    """Stack images, tokenise captions, and drop / count unreadable samples.

    Args:
        text_processor: callable ``list[str] -> {"input_ids", "attention_mask"}``.

    Returns None for a batch in which every sample was dropped (only possible with
    ``on_unreadable: drop``); the training loop should skip such a batch.
    """

    def __init__(self, text_processor: Any) -> None:
        self.text_processor = text_processor

    def __call__(self, samples: Sequence[Optional[Dict[str, Any]]]) -> Optional[Dict[str, Any]]:
        kept: List[Dict[str, Any]] = [s for s in samples if s is not None]
        num_skipped = (len(samples) - len(kept)) + sum(int(s.get("num_skipped", 0)) for s in kept)
        if not kept:
            return None
        tokens = self.text_processor([s["text"] for s in kept])
        return {
            "image": torch.stack([s["image"] for s in kept]),
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "image_id": torch.tensor([int(s["image_id"]) for s in kept], dtype=torch.long),
            "num_skipped": num_skipped,
        }


class EvalImageCollate:
    """Stack evaluation images and their dataset indices."""

    def __call__(self, samples: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        return {
            "image": torch.stack([s["image"] for s in samples]),
            "index": torch.tensor([int(s["index"]) for s in samples], dtype=torch.long),
        }
