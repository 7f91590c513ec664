"""Pre-training data in the official ALBEF JSON format.

Each entry is ``{"image": path, "caption": str | [str, ...]}``; the image path is absolute
(official files) or relative to ``image_root``. When ``caption`` is a list, one caption is
drawn at random every time the entry is read (official behaviour). Several files are
concatenated (the official 4M set is COCO + VG + CC3M + SBU files).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence, Union

import torch

from albef_plugin.datasets.annotations import PRETRAIN_FIELDS, load_annotations, resolve_image_path
from albef_plugin.datasets.images import ImageTextDataset

__all__ = ["PretrainDataset"]


class PretrainDataset(ImageTextDataset):
    """Image-caption pairs for pre-training.

    Args:
        ann_files: pretrain-format JSON files, concatenated in order.
        image_root: folder that relative image paths are joined to ("" = as given).
        transform: PIL image -> ``(3, H, W)`` tensor (e.g. ``albef_image_train``).
        on_unreadable: what to do with a missing or corrupt image file
            (``substitute`` | ``drop`` | ``error``, see :mod:`albef_plugin.datasets.images`).

    Items: ``{"image": (3, H, W) float tensor, "text": str (raw caption), "image_id": int,
    "num_skipped": int}``. ``image_id`` numbers distinct image paths 0, 1, 2, ... in order of
    first appearance, so two captions of one image share it (ITM must not treat them as
    negatives of each other).
    """

    def __init__(self, ann_files: Sequence[Union[str, "os.PathLike[str]"]], image_root: str,
                 transform: Any, on_unreadable: str = "substitute") -> None:
        super().__init__(transform, on_unreadable)
        entries = load_annotations(ann_files, PRETRAIN_FIELDS)
        self.image_paths: List[str] = [resolve_image_path(e["image"], image_root) for e in entries]
        self.captions: List[Union[str, List[str]]] = [e["caption"] for e in entries]
        first_seen: Dict[str, int] = {}
        self.image_ids: List[int] = [first_seen.setdefault(p, len(first_seen))
                                     for p in self.image_paths]

    def __len__(self) -> int:
        return len(self.image_paths)

    def _image_path(self, index: int) -> str:
        return self.image_paths[index]

    def _sample(self, index: int) -> Dict[str, Any]:
        caption = self.captions[index]
        if isinstance(caption, list):
            # torch's generator: seeded per DataLoader worker, reproducible under manual_seed
            caption = caption[int(torch.randint(len(caption), ()))]
        return {"text": caption, "image_id": self.image_ids[index]}
