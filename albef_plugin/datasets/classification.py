"""Image(s) + sentence -> class label: the data shared by SNLI-VE and NLVR2.

:class:`LabelledImagesDataset` holds entries ``(image paths, sentence, label)`` with one
image (SNLI-VE) or a pair (NLVR2); :class:`LabelledImagesCollate` turns its items into the
batch the task models read::

    image | image0, image1   float (B, 3, H, W)   one key per image slot
    input_ids, attention_mask long (B, L)        the sentence, padded to the longest
    label                     long (B,)
    index                     long (B,)          dataset index (to write predictions)
    num_skipped               int                unreadable samples met building the batch

An unreadable image follows the pre-training policy (see ``images.py``): ``substitute``
the next readable entry (the default for training), ``drop`` it (counted in
``num_skipped``) or ``error``. An entry is unreadable when any of its images is. The collate
leaves dropped entries out; the training iterator pads such a batch back to its size
(``trainers/data.py``), while an evaluation batch stays short, so no entry is scored twice.

Annotation errors (missing field, wrong label, wrong number of images) are raised when the
file is loaded, naming the file, the entry index and the field.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from albef_plugin.datasets.annotations import AnnotationError, FieldSpec, load_annotations
from albef_plugin.datasets.images import ImageTextDataset, UnreadableImageError, read_image_for

__all__ = ["LabelledEntry", "LabelledImagesDataset", "LabelledImagesCollate", "load_labelled",
           "label_parser"]

logger = logging.getLogger(__name__)

Files = Sequence[Union[str, "os.PathLike[str]"]]
# (image paths, sentence, label)
LabelledEntry = Tuple[Tuple[str, ...], str, int]


def label_parser(names: Dict[Any, int]) -> Callable[[Any], Optional[int]]:
    """``value -> class index`` for the accepted label values (None when not accepted).

    Booleans are never taken for the integers 0 / 1 (``True == 1`` in Python).
    """
    def parse(value: Any) -> Optional[int]:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return None
        return names.get(value)
    return parse


def load_labelled(files: Files, fields: FieldSpec,
                  check_entry: Callable[[Dict[str, Any]], Optional[str]],
                  parse_label: Callable[[Any], Optional[int]], accepted: str
                  ) -> List[Tuple[Dict[str, Any], int]]:
    """Read and check labelled annotation files.

    Args:
        files: JSON list files, concatenated in order.
        fields: required fields and their types (checked by ``load_annotations``).
        check_entry: a further per-entry check returning an error text, or None when fine.
        parse_label: ``label value -> class index`` or None for a wrong label.
        accepted: the accepted label values, for the error message.

    Returns:
        ``(entry, class index)`` pairs.

    Raises:
        AnnotationError: naming the file, the entry index and the field.
    """
    out: List[Tuple[Dict[str, Any], int]] = []
    for file in files:
        for index, entry in enumerate(load_annotations([file], fields)):
            problem = check_entry(entry)
            if problem:
                raise AnnotationError(f"{file}: entry {index} {problem}")
            label = parse_label(entry["label"])
            if label is None:
                raise AnnotationError(f"{file}: entry {index} field 'label' is {entry['label']!r}; "
                                      f"expected one of {accepted}.")
            out.append((entry, label))
    return out


class LabelledImagesDataset(ImageTextDataset):
    """One item per entry: its image(s), sentence and label.

    Args:
        entries: ``(image paths, sentence, label)``; every entry has the same number of
            images, one per key of ``image_keys``.
        image_keys: batch keys of the image slots (``("image",)``, ``("image0", "image1")``).
        transform: PIL image -> ``(3, H, W)`` tensor.
        on_unreadable: ``substitute`` | ``drop`` | ``error``.

    Items: ``{<image key>: tensor, ..., "text", "label", "index", "num_skipped"}``.
    """

    def __init__(self, entries: Sequence[LabelledEntry], image_keys: Sequence[str], transform: Any,
                 on_unreadable: str = "substitute") -> None:
        super().__init__(transform, on_unreadable)
        self.image_keys = tuple(image_keys)
        for number, (paths, _, _) in enumerate(entries):
            if len(paths) != len(self.image_keys):
                raise ValueError(f"entry {number} has {len(paths)} images, expected "
                                 f"{len(self.image_keys)} ({', '.join(self.image_keys)})")
        self.image_paths: List[Tuple[str, ...]] = [tuple(p) for p, _, _ in entries]
        self.sentences: List[str] = [s for _, s, _ in entries]
        self.labels: List[int] = [int(label) for _, _, label in entries]

    def __len__(self) -> int:
        return len(self.sentences)

    def _image_path(self, index: int) -> str:
        return ", ".join(self.image_paths[index])

    def _sample(self, index: int) -> Dict[str, Any]:
        return {"text": self.sentences[index], "label": self.labels[index], "index": index}

    def _try_load(self, index: int) -> Optional[Dict[str, Any]]:
        images = []
        for path in self.image_paths[index]:
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
        item = self._sample(index)
        for key, image in zip(self.image_keys, images):
            item[key] = self.transform(image)
        return item


class LabelledImagesCollate:
    """Stack each image slot, tokenise the sentences, and drop / count unreadable samples.

    Args:
        text_processor: callable ``list[str] -> {"input_ids", "attention_mask"}``.
        image_keys: the image slots to stack.

    Returns None for a batch whose every sample was dropped (the loops skip it).
    """

    def __init__(self, text_processor: Any, image_keys: Sequence[str]) -> None:
        self.text_processor = text_processor
        self.image_keys = tuple(image_keys)

    def __call__(self, samples: Sequence[Optional[Dict[str, Any]]]) -> Optional[Dict[str, Any]]:
        kept = [s for s in samples if s is not None]
        num_skipped = (len(samples) - len(kept)) + sum(int(s.get("num_skipped", 0)) for s in kept)
        if not kept:
            return None
        tokens = self.text_processor([s["text"] for s in kept])
        batch: Dict[str, Any] = {key: torch.stack([s[key] for s in kept]) for key in self.image_keys}
        batch.update(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                     label=torch.tensor([s["label"] for s in kept], dtype=torch.long),
                     index=torch.tensor([s["index"] for s in kept], dtype=torch.long),
                     num_skipped=num_skipped)
        return batch
