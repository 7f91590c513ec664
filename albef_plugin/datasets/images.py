"""Image reading that survives missing or corrupt files in training data.

Web-scale image-text data always has some files that are gone or broken. A training
dataset built on :class:`ImageTextDataset` does not crash on them: the file is logged
once (per process) and the sample is handled by the ``on_unreadable`` policy:

- ``"substitute"`` (default): the next readable sample (index + 1, + 2, ...) is returned
  instead, so every batch keeps its full size. ALBEF needs that: the feature queues
  assume a fixed global batch (queue size divisible by it) and ITM hard-negative
  sampling needs at least two different images per batch.
- ``"drop"``: ``__getitem__`` returns None and the collate function leaves it out, so the
  batch is smaller (the training loop pads it back to full size by repeating its samples,
  and skips a batch left empty on all ranks together: ``trainers/data.py``).
- ``"error"``: raise at once (for data you expect to be complete).

Either way the collate function reports how many unreadable files were met in
``batch["num_skipped"]``. Counting in the batch, not in a dataset attribute, is what
reaches the trainer when DataLoader workers (separate processes) read the images.

What the image is decoded to follows the transform (:func:`read_image_for`): an RGB
``PIL.Image`` (:func:`read_rgb`), or, for ``albef_image_train`` with ``backend: tensor``,
a ``uint8 (3, H, W)`` tensor straight from ``torchvision.io`` (:func:`read_rgb_tensor`).
Both check the file and report an unreadable one the same way, so the policy above does
not depend on the backend.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Set, Union

import torch
from PIL import Image
from torch.utils.data import Dataset

from albef_plugin.errors import UserError
from albef_plugin.processors.image import decode_rgb_tensor, takes_uint8_tensor

__all__ = ["read_rgb", "read_rgb_tensor", "read_image_for", "check_image_files",
           "UnreadableImageError", "ImageTextDataset", "ON_UNREADABLE_CHOICES"]

logger = logging.getLogger(__name__)

ON_UNREADABLE_CHOICES = ("substitute", "drop", "error")
# Consecutive unreadable samples tolerated while looking for a substitute: more than
# this means the image root itself is wrong, which deserves an error, not a silent spin.
_MAX_CONSECUTIVE_UNREADABLE = 32


class UnreadableImageError(UserError, OSError):
    """An image file is missing or cannot be decoded."""


def _not_a_regular_file(path: str) -> Optional[str]:
    """Why ``path`` cannot be an image file, or None. Only regular files are opened: a FIFO
    or device would block the reader forever."""
    if not os.path.exists(path):
        return "does not exist"
    if not os.path.isfile(path):
        return "is not a regular file"
    return None


def read_rgb(path: str) -> Image.Image:
    """Open ``path`` and decode it fully into an RGB image.

    Raises:
        UnreadableImageError: the file is missing, not a regular file, truncated or not an image.
    """
    reason = _not_a_regular_file(path)
    if reason:
        raise UnreadableImageError(f"{path}: {reason}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # forces the full decode inside the try
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, struct.error ...
        raise UnreadableImageError(f"{path}: {type(exc).__name__}: {exc}") from exc


def read_rgb_tensor(path: str) -> torch.Tensor:
    """Read ``path`` and decode it into ``uint8 (3, H, W)`` RGB with
    :func:`~albef_plugin.processors.image.decode_rgb_tensor` (the pixels of :func:`read_rgb`).

    Raises:
        UnreadableImageError: as :func:`read_rgb`.
    """
    reason = _not_a_regular_file(path)
    if reason:
        raise UnreadableImageError(f"{path}: {reason}")
    try:
        with open(path, "rb") as handle:
            return decode_rgb_tensor(handle.read())
    except Exception as exc:  # OSError from the read, PIL's errors for what it cannot decode
        raise UnreadableImageError(f"{path}: {type(exc).__name__}: {exc}") from exc


def read_image_for(transform: Any, path: str) -> Union[Image.Image, torch.Tensor]:
    """``path`` decoded into what ``transform`` takes: a uint8 tensor when it says so
    (``takes_uint8_tensor``: ``albef_image_train`` with ``backend: tensor``), else an RGB
    ``PIL.Image``.

    Raises:
        UnreadableImageError: as :func:`read_rgb`.
    """
    return read_rgb_tensor(path) if takes_uint8_tensor(transform) else read_rgb(path)


def check_image_files(paths: Sequence[str], what: str) -> None:
    """Cheap start-up check of images that must all be readable (evaluation): each is a
    regular file whose header PIL recognises (no decoding).

    Raises:
        UnreadableImageError: listing the first bad files and why.
    """
    bad = []
    for path in paths:
        reason = _not_a_regular_file(path)
        if reason is None:
            try:
                with Image.open(path):
                    pass
            except Exception as exc:  # PIL.UnidentifiedImageError, OSError ...
                reason = f"is not a readable image ({type(exc).__name__})"
        if reason:
            bad.append(f"{path} {reason}")
    if bad:
        shown = "; ".join(bad[:5]) + ("; ..." if len(bad) > 5 else "")
        raise UnreadableImageError(
            f"{len(bad)} of {len(paths)} {what} are unreadable: {shown}. Restore the files, fix "
            f"the dataset's image_root, or remove their entries from the annotation file.")


class ImageTextDataset(Dataset):
    """Base of the datasets whose entries hold image file(s) + text, with the unreadable-file policy.

    Subclasses implement :meth:`_image_path` and :meth:`_sample` (the item without the
    image); this class reads and transforms the image and applies the unreadable-file
    policy. Items are dicts ``{"image": (3, H, W) tensor, "text": str, "image_id": int,
    "num_skipped": int}``. An entry of several images (NLVR2's pair) overrides
    :meth:`_image_files` and :meth:`_add_images`; it is unreadable when any of its images is.
    """

    def __init__(self, transform: Any, on_unreadable: str = "substitute") -> None:
        if on_unreadable not in ON_UNREADABLE_CHOICES:
            raise ValueError(f"on_unreadable={on_unreadable!r}; choose one of "
                             f"{', '.join(ON_UNREADABLE_CHOICES)}.")
        self.transform = transform
        self.on_unreadable = on_unreadable
        self._warned: Set[str] = set()  # per process: each bad file is logged once

    # ---------------------------------------------------------- subclass API
    def __len__(self) -> int:
        raise NotImplementedError

    def _image_path(self, index: int) -> str:
        raise NotImplementedError

    def _sample(self, index: int) -> Dict[str, Any]:
        """The item's non-image fields (``text``, ``image_id``)."""
        raise NotImplementedError

    def _image_files(self, index: int) -> Sequence[str]:
        """The image file(s) of entry ``index`` (default: the one of :meth:`_image_path`)."""
        return (self._image_path(index),)

    def _add_images(self, item: Dict[str, Any], images: List[Any]) -> None:
        """Put the transformed images into ``item`` (default: the one image as ``image``)."""
        item["image"] = self.transform(images[0])

    # --------------------------------------------------------------- access
    def _read_images(self, index: int) -> Optional[List[Any]]:
        """Every image of entry ``index`` decoded (as :func:`read_image_for` gives it), or
        None when one is unreadable (``error``: raise; otherwise warn once per file, per
        process)."""
        images = []
        for path in self._image_files(index):
            try:
                images.append(read_image_for(self.transform, path))
            except UnreadableImageError as exc:
                if self.on_unreadable == "error":
                    raise UnreadableImageError(
                        f"Image unreadable ({exc}). Fix or remove the file, or set the dataset's "
                        f"on_unreadable to 'substitute' or 'drop' to skip such entries.") from exc
                if path not in self._warned:
                    self._warned.add(path)
                    logger.warning("Skipping the entry of an unreadable image (%s); counted in "
                                   "batch['num_skipped'].", exc)
                return None
        return images

    def _try_load(self, index: int) -> Optional[Dict[str, Any]]:
        images = self._read_images(index)
        if images is None:
            return None
        item = self._sample(index)
        self._add_images(item, images)
        return item

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        item = self._try_load(index)
        if item is not None:
            item["num_skipped"] = 0
            return item
        if self.on_unreadable == "drop":
            return None
        for step in range(1, min(_MAX_CONSECUTIVE_UNREADABLE, len(self))):
            item = self._try_load((index + step) % len(self))
            if item is not None:
                item["num_skipped"] = step
                return item
        raise UnreadableImageError(
            f"{min(_MAX_CONSECUTIVE_UNREADABLE, len(self))} consecutive training images are "
            f"unreadable, from {self._image_path(index)}; the image root is probably wrong. "
            f"Check the dataset's image_root and the paths in the annotation files.")
