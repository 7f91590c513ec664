"""Image-text retrieval data in the official ALBEF JSON formats.

- :class:`RetrievalTrainDataset` reads ``re_train`` files:
  ``[{"image": rel_path, "caption": str, "image_id": id}]``, one row per caption.
- :class:`RetrievalEvalDataset` reads ``re_eval`` files:
  ``[{"image": rel_path, "caption": [str, ...]}]``, one row per image, and exposes the
  ground truth the retrieval metrics need (``texts``, ``img2txt``, ``txt2img``).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence, Union

from torch.utils.data import Dataset

from albef_plugin.datasets.annotations import (RE_EVAL_FIELDS, RE_TRAIN_FIELDS, load_annotations,
                                               resolve_image_path)
from albef_plugin.datasets.images import (ImageTextDataset, UnreadableImageError,
                                          check_image_files, read_rgb)

__all__ = ["RetrievalTrainDataset", "RetrievalEvalDataset"]

Files = Sequence[Union[str, "os.PathLike[str]"]]


class RetrievalTrainDataset(ImageTextDataset):
    """One item per caption, for retrieval fine-tuning.

    Args:
        ann_files: re_train JSON files, concatenated.
        image_root: folder the relative image paths are joined to.
        transform: PIL image -> ``(3, H, W)`` tensor (e.g. ``albef_image_train``).
        on_unreadable: ``substitute`` | ``drop`` | ``error`` for missing / corrupt images.

    Items: ``{"image", "text" (raw caption), "image_id", "num_skipped"}``. ``image_id`` is the
    official contiguous ``idx``: the annotation's ``image_id`` values numbered 0, 1, 2, ...
    in order of first appearance. ITC uses it for multi-positive targets and ITM to keep
    captions of the same image out of the negatives.
    """

    def __init__(self, ann_files: Files, image_root: str, transform: Any,
                 on_unreadable: str = "substitute") -> None:
        super().__init__(transform, on_unreadable)
        entries = load_annotations(ann_files, RE_TRAIN_FIELDS)
        self.image_paths: List[str] = [resolve_image_path(e["image"], image_root) for e in entries]
        self.captions: List[str] = [e["caption"] for e in entries]
        self.id_to_index: Dict[Any, int] = {}
        self.image_ids: List[int] = [self.id_to_index.setdefault(e["image_id"], len(self.id_to_index))
                                     for e in entries]

    def __len__(self) -> int:
        return len(self.image_paths)

    def _image_path(self, index: int) -> str:
        return self.image_paths[index]

    def _sample(self, index: int) -> Dict[str, Any]:
        return {"text": self.captions[index], "image_id": self.image_ids[index]}


class RetrievalEvalDataset(Dataset):
    """Images to encode for retrieval evaluation, with the caption ground truth.

    Args:
        ann_files: re_eval JSON files, concatenated.
        image_root: folder the relative image paths are joined to.
        transform: PIL image -> ``(3, H, W)`` tensor (e.g. ``albef_image_eval``).
        text_processor: tokenises caption batches; its ``clean`` (``pre_caption``) is
            applied to the captions once here.

    Attributes:
        texts: all captions, pre-processed, in file order (``Nt``).
        img2txt: for each image, the indices into ``texts`` of its captions (``Ni`` lists).
        txt2img: for each caption, the index of its image (``Nt`` ints).
        image_paths: the ``Ni`` image files.
        text_processor: the callable ``list[str] -> {"input_ids", "attention_mask"}``.

    Items: ``{"image": (3, H, W) tensor, "index": i}``. An unreadable image is an error
    here: skipping it would shift every image index and corrupt the metrics. So every image
    is checked when the dataset is built (exists, regular file, image header): a long run
    fails at its start, not at its final evaluation.
    """

    def __init__(self, ann_files: Files, image_root: str, transform: Any, text_processor: Any) -> None:
        entries = load_annotations(ann_files, RE_EVAL_FIELDS)
        self.transform = transform
        self.text_processor = text_processor
        self.image_paths: List[str] = []
        self.texts: List[str] = []
        self.img2txt: List[List[int]] = []
        self.txt2img: List[int] = []
        clean = getattr(text_processor, "clean", lambda text: text)
        for image_index, entry in enumerate(entries):
            self.image_paths.append(resolve_image_path(entry["image"], image_root))
            self.img2txt.append([])
            for caption in entry["caption"]:
                self.img2txt[image_index].append(len(self.texts))
                self.txt2img.append(image_index)
                self.texts.append(clean(caption))
        files = ", ".join(str(f) for f in ann_files)
        check_image_files(self.image_paths, f"evaluation images of {files}")

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        try:
            image = read_rgb(self.image_paths[index])
        except UnreadableImageError as exc:
            raise UnreadableImageError(
                f"Evaluation image {index} is unreadable ({exc}). Evaluation cannot skip images "
                f"(the ground-truth indices would shift); restore the file or remove its entry "
                f"from the re_eval JSON.") from exc
        return {"image": self.transform(image), "index": index}
