"""SNLI-VE (visual entailment) in the official ALBEF format.

Entries ``{"image": flickr30k id without ".jpg", "sentence": hypothesis, "label": ...}``;
the image file is ``<image_root>/<image>.jpg`` (an ``image`` that already ends in ``.jpg``
or ``.png`` is taken as it is). Labels: ``entailment`` 2, ``neutral`` 1,
``contradiction`` 0, given as those strings or as the integers.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

from albef_plugin.datasets.annotations import FieldSpec, resolve_image_path
from albef_plugin.datasets.classification import (Files, LabelledImagesDataset, label_parser,
                                                  load_labelled)

__all__ = ["VE_FIELDS", "VE_LABELS", "VE_IMAGE_KEYS", "ve_image_file", "load_ve_dataset"]

VE_LABELS: Dict[str, int] = {"contradiction": 0, "neutral": 1, "entailment": 2}
VE_IMAGE_KEYS = ("image",)
VE_FIELDS: FieldSpec = {
    "image": (("str",), "an image id (file name without .jpg, relative to image_root)"),
    "sentence": (("str",), "the hypothesis string"),
    "label": (("str", "id"), "entailment | neutral | contradiction (or 2 | 1 | 0)"),
}
_ACCEPTED = "'entailment', 'neutral', 'contradiction' (or 2, 1, 0)"
_parse = label_parser({**VE_LABELS, **{i: i for i in VE_LABELS.values()}})


def ve_image_file(image: str, image_root: str) -> str:
    """The official ``<image_root>/<image>.jpg``; names with an image extension kept."""
    name = image if os.path.splitext(image)[1].lower() in (".jpg", ".jpeg", ".png") else image + ".jpg"
    return resolve_image_path(name, image_root)


def _no_extra_check(entry: Dict[str, Any]) -> Optional[str]:
    return None


def load_ve_dataset(files: Files, image_root: str, transform: Any,
                    on_unreadable: str = "substitute") -> LabelledImagesDataset:
    """A :class:`LabelledImagesDataset` over SNLI-VE files (batch key ``image``)."""
    rows = load_labelled(files, VE_FIELDS, _no_extra_check, _parse, _ACCEPTED)
    entries = [((ve_image_file(e["image"], image_root),), e["sentence"], label) for e, label in rows]
    return LabelledImagesDataset(entries, VE_IMAGE_KEYS, transform, on_unreadable)
