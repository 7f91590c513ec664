"""NLVR2 in the official ALBEF format.

Entries ``{"images": [left, right], "sentence": statement, "label": "True" | "False"}``;
image paths are relative to ``image_root`` (or absolute). Labels: ``"True"`` 1,
``"False"`` 0 (the official loader's rule); the batch keys of the two images are
``image0`` (left) and ``image1`` (right).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from albef_plugin.datasets.annotations import FieldSpec, resolve_image_path
from albef_plugin.datasets.classification import (Files, LabelledImagesDataset, label_parser,
                                                  load_labelled)

__all__ = ["NLVR2_FIELDS", "NLVR2_LABELS", "NLVR2_IMAGE_KEYS", "load_nlvr2_dataset"]

NLVR2_LABELS: Dict[str, int] = {"False": 0, "True": 1}
NLVR2_IMAGE_KEYS = ("image0", "image1")
NLVR2_FIELDS: FieldSpec = {
    "images": (("str_list",), "a list of two image paths [left, right]"),
    "sentence": (("str",), "the statement string"),
    "label": (("str",), "'True' or 'False'"),
}
_parse = label_parser(NLVR2_LABELS)


def _two_images(entry: Dict[str, Any]) -> Optional[str]:
    count = len(entry["images"])
    if count != 2:
        return (f"field 'images' lists {count} image(s); an NLVR2 entry needs exactly two "
                f"[left, right].")
    return None


def load_nlvr2_dataset(files: Files, image_root: str, transform: Any,
                       on_unreadable: str = "substitute") -> LabelledImagesDataset:
    """A :class:`LabelledImagesDataset` over NLVR2 files (batch keys ``image0``, ``image1``)."""
    rows = load_labelled(files, NLVR2_FIELDS, _two_images, _parse, "'True', 'False'")
    entries = [(tuple(resolve_image_path(p, image_root) for p in e["images"]), e["sentence"], label)
               for e, label in rows]
    return LabelledImagesDataset(entries, NLVR2_IMAGE_KEYS, transform, on_unreadable)
