"""Weakly-supervised grounding data (RefCOCO+) in the official ALBEF / REFER formats.

Files (official ``Grounding.py`` and ``dataset/grounding_dataset.py``):

- ``refcoco+_train.json``: ``[{image, text}]``; trained with the retrieval objective, the
  image being the ITC/ITM identity (``image_id`` = contiguous index of the image path);
- ``refcoco+_val.json`` / ``refcoco+_test.json``: ``[{image, text, ref_id}]``; the test file
  holds both testA and testB, told apart by the REFER ref's ``split``;
- REFER ``refs(unc).p``: a pickle of ``[{ref_id, ann_id, image_id, split, ...}]``, read with
  :func:`load_plain_pickle` (only plain containers, strings and numbers; never ``pickle.load``);
- REFER ``instances.json``: COCO ``images`` (``id``, ``height``, ``width``) and ``annotations``
  (``id``, ``bbox [x, y, w, h]``): the ground-truth box of a ref and its image's size;
- ``dets.json`` (detector proposals) and ``cocos.json`` (COCO ground-truth boxes), each
  ``{str(image_id): [[x, y, w, h, ...], ...]}``: the candidate boxes the evaluation ranks.

Bad input fails at start-up with the file and the item: a ref whose image has no candidate
box, a box outside its image, an unknown ref id. An unreadable evaluation image is an error
naming the file (skipping would change the denominator of the accuracy).
"""
from __future__ import annotations

import io
import json
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch.utils.data import Dataset

from albef_plugin.datasets.annotations import AnnotationError, load_annotations, resolve_image_path
from albef_plugin.datasets.images import (ImageTextDataset, UnreadableImageError, check_image_files,
                                          read_rgb)

__all__ = ["load_plain_pickle", "ReferIndex", "GroundingRef", "GroundingTrainDataset",
           "GroundingEvalDataset", "GroundingEvalCollate", "GROUNDING_TRAIN_FIELDS",
           "GROUNDING_EVAL_FIELDS", "REFER_SPLITS"]

logger = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]
Box = List[float]

GROUNDING_TRAIN_FIELDS = {"image": (("str",), "an image path relative to image_root"),
                          "text": (("str",), "a referring expression")}
GROUNDING_EVAL_FIELDS = {**GROUNDING_TRAIN_FIELDS,
                         "ref_id": (("id",), "the REFER ref id of the expression")}
REFER_SPLITS = ("train", "val", "testA", "testB")


# ------------------------------------------------------------------ REFER pickle
class _PlainUnpickler(pickle.Unpickler):
    """Builds only what pickle's opcodes make without imports: dicts, lists, tuples, sets,
    strings, bytes, numbers, booleans and None. Any class or function reference (the way a
    pickle runs code) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refers to {module}.{name}; only plain containers, strings "
                                     f"and numbers are accepted")


def load_plain_pickle(path: PathLike) -> Any:
    """The contents of a pickle of plain data (REFER's ``refs(unc).p``), safely.

    Python 2 pickles (the REFER files) store text as byte strings; they are decoded as UTF-8.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read the REFER refs file ({exc.strerror or exc}).") from None
    try:
        return _PlainUnpickler(io.BytesIO(data), encoding="utf-8").load()
    except (pickle.UnpicklingError, EOFError, ValueError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: not a pickle of plain data ({exc}); expected REFER's "
                              f"refs(unc).p (a list of ref dicts).") from None


def _read_json(path: PathLike, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read the {what} ({exc.strerror or exc}).") from None
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}: the {what} is not valid JSON ({exc}).") from None


@dataclass(frozen=True)
class GroundingRef:
    """One referring expression's ground truth: its image's size, its box, its REFER split and
    the candidate boxes (``dets``; ``cocos`` when that file is given)."""

    ref_id: int
    image_id: int
    split: str
    height: int
    width: int
    box: Box
    dets: List[Box]
    cocos: Optional[List[Box]] = None


def _check_box(box: Any, height: int, width: int, where: str) -> Box:
    """``[x, y, w, h]`` (extra fields such as a score dropped), inside a ``width x height`` image."""
    if not isinstance(box, (list, tuple)) or len(box) < 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in box[:4]):
        raise AnnotationError(f"{where}: box {box!r} is not [x, y, w, h, ...] numbers.")
    x, y, w, h = (float(v) for v in box[:4])
    # one pixel of slack: boxes of inclusive pixel coordinates may end on the last pixel
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width + 1 or y + h > height + 1:
        raise AnnotationError(f"{where}: box [x={x:g}, y={y:g}, w={w:g}, h={h:g}] is empty or lies "
                              f"outside its {width}x{height} image.")
    return [x, y, w, h]


class ReferIndex:
    """REFER refs and COCO instances, with the candidate boxes: :meth:`ref` gives a
    :class:`GroundingRef` for a ref id.

    Args:
        refs_file: REFER ``refs(unc).p`` (a pickle; read with :func:`load_plain_pickle`).
        instances_file: REFER ``instances.json``.
        dets_file: ``dets.json``; ``cocos_file``: ``cocos.json`` (optional).
    """

    def __init__(self, refs_file: PathLike, instances_file: PathLike, dets_file: PathLike,
                 cocos_file: Optional[PathLike] = None) -> None:
        self.refs_file, self.dets_file, self.cocos_file = str(refs_file), str(dets_file), cocos_file
        refs = load_plain_pickle(refs_file)
        if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
            raise AnnotationError(f"{refs_file}: expected a list of ref dicts, got {type(refs).__name__}.")
        self.refs: Dict[int, Dict[str, Any]] = {}
        for i, ref in enumerate(refs):
            missing = [k for k in ("ref_id", "ann_id", "image_id", "split") if k not in ref]
            if missing:
                raise AnnotationError(f"{refs_file}: ref {i} has no field(s) {missing}; its fields "
                                      f"are {sorted(ref)}.")
            self.refs[int(ref["ref_id"])] = ref
        instances = _read_json(instances_file, "REFER instances file")
        try:
            self.images = {int(im["id"]): im for im in instances["images"]}
            self.boxes = {int(a["id"]): a["bbox"] for a in instances["annotations"]}
        except (KeyError, TypeError) as exc:
            raise AnnotationError(f"{instances_file}: expected COCO 'images' [{{id, height, width}}] "
                                  f"and 'annotations' [{{id, bbox}}] (missing {exc}).") from None
        self.instances_file = str(instances_file)
        self.dets = _read_json(dets_file, "candidate boxes file (dets.json)")
        self.cocos = _read_json(cocos_file, "COCO boxes file (cocos.json)") if cocos_file else None

    def ref(self, ref_id: int) -> GroundingRef:
        """The ground truth of ``ref_id``, checked (see the module docstring)."""
        ref = self.refs.get(int(ref_id))
        if ref is None:
            raise AnnotationError(f"ref_id {ref_id} is not in the REFER refs file {self.refs_file}.")
        image_id = int(ref["image_id"])
        image = self.images.get(image_id)
        if image is None or int(ref["ann_id"]) not in self.boxes:
            raise AnnotationError(f"ref_id {ref_id}: image {image_id} or annotation {ref['ann_id']} "
                                  f"is not in {self.instances_file}.")
        height, width = int(image["height"]), int(image["width"])
        box = _check_box(self.boxes[int(ref["ann_id"])], height, width,
                         f"{self.instances_file}: annotation {ref['ann_id']} (ref_id {ref_id})")
        candidates = {}
        for name, table, path in (("dets", self.dets, self.dets_file),
                                  ("cocos", self.cocos, self.cocos_file)):
            if table is None:
                continue
            listed = table.get(str(image_id)) or []
            if not listed:
                raise AnnotationError(f"{path}: image {image_id} (ref_id {ref_id}, "
                                      f"{image.get('file_name', '?')}) has no candidate boxes; every "
                                      f"evaluated image needs at least one.")
            candidates[name] = [_check_box(b, height, width, f"{path}: image {image_id} box {j}")
                                for j, b in enumerate(listed)]
        return GroundingRef(ref_id=int(ref_id), image_id=image_id, split=str(ref["split"]),
                            height=height, width=width, box=box, dets=candidates["dets"],
                            cocos=candidates.get("cocos"))


# ---------------------------------------------------------------------- datasets
class GroundingTrainDataset(ImageTextDataset):
    """``refcoco+_train.json`` rows; items ``{image, text, image_id, num_skipped}`` with
    ``image_id`` the contiguous index of the image path (the official ``idx``)."""

    def __init__(self, ann_files: Sequence[PathLike], image_root: str, transform: Any,
                 on_unreadable: str = "substitute") -> None:
        super().__init__(transform, on_unreadable)
        entries = load_annotations(ann_files, GROUNDING_TRAIN_FIELDS)
        self.image_paths = [resolve_image_path(e["image"], image_root) for e in entries]
        self.texts = [e["text"] for e in entries]
        index: Dict[str, int] = {}
        self.image_ids = [index.setdefault(e["image"], len(index)) for e in entries]

    def __len__(self) -> int:
        return len(self.image_paths)

    def _image_path(self, index: int) -> str:
        return self.image_paths[index]

    def _sample(self, index: int) -> Dict[str, Any]:
        return {"text": self.texts[index], "image_id": self.image_ids[index]}


class GroundingEvalDataset(Dataset):
    """The expressions of one REFER split (``val``, ``testA`` or ``testB``) of an eval file.

    Attributes:
        refs: the :class:`GroundingRef` of each item, in order.
        texts, image_paths: per item.
    Items: ``{"image", "text", "index"}``.
    """

    def __init__(self, ann_files: Sequence[PathLike], image_root: str, transform: Any,
                 refer: ReferIndex, split: str) -> None:
        if split not in REFER_SPLITS:
            raise ValueError(f"grounding split {split!r}: REFER splits are {', '.join(REFER_SPLITS)}")
        entries = load_annotations(ann_files, GROUNDING_EVAL_FIELDS)
        self.transform = transform
        self.split = split
        self.refs: List[GroundingRef] = []
        self.texts: List[str] = []
        self.image_paths: List[str] = []
        for entry in entries:
            ref = refer.ref(entry["ref_id"])
            if ref.split != split:
                continue
            self.refs.append(ref)
            self.texts.append(entry["text"])
            self.image_paths.append(resolve_image_path(entry["image"], image_root))
        files = ", ".join(map(str, ann_files))
        if not self.refs:
            raise AnnotationError(f"{files}: no expression of REFER split {split!r} (by the refs "
                                  f"file {refer.refs_file}).")
        # every image checked now (exists, image header): a long run fails at its start
        check_image_files(sorted(set(self.image_paths)), f"{split} images of {files}")

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        try:
            image = read_rgb(self.image_paths[index])
        except UnreadableImageError as exc:
            raise UnreadableImageError(
                f"grounding {self.split} image of ref_id {self.refs[index].ref_id} is unreadable "
                f"({exc}); restore the file or remove the expression from the eval JSON.") from exc
        return {"image": self.transform(image), "text": self.texts[index], "index": index}


class GroundingEvalCollate:
    """Stack images, tokenise the expressions (padded to the batch's longest, as the official
    evaluation), keep the dataset indices."""

    def __init__(self, text_processor: Any) -> None:
        self.text_processor = text_processor

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
        tokens = self.text_processor([s["text"] for s in samples])
        return {"image": torch.stack([s["image"] for s in samples]),
                "input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"],
                "index": torch.tensor([int(s["index"]) for s in samples], dtype=torch.long)}
