"""Downstream-task annotations derived from the scenes of a synthetic world.

Each ``emit_*`` function reads scene records (``load_scenes(world)``) and writes files in
the official ALBEF format of that task into ``<world>/tasks/``; paths inside are
relative to the world folder, like the retrieval files. The datasets that read them
belong to later work; these writers fix the formats and the ground truth now.

Answers and labels are computed from the scene metadata, so they are always correct.
Statements never use "left" / "right" for positions inside an image (flip
augmentation); in NLVR2 "left image" / "right image" name the two images of a pair.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

from albef_plugin.datasets.synthetic.world import COLOURS, SHAPES, SPLIT_CODES

__all__ = ["emit_vqa", "emit_nlvr2", "emit_snli_ve", "emit_grounding", "emit_all", "GROUNDING_FILES"]

Scenes = Sequence[Dict[str, Any]]
_EMIT_STREAM = 7  # separates these draws from the scene generator's


def _rng(scene: Dict[str, Any], task: int) -> np.random.Generator:
    return np.random.default_rng([SPLIT_CODES[scene["split"]], scene["index"], _EMIT_STREAM, task])


def _by_split(scenes: Scenes) -> Dict[str, List[Dict[str, Any]]]:
    out: Dict[str, List[Dict[str, Any]]] = {split: [] for split in SPLIT_CODES}
    for scene in scenes:
        out[scene["split"]].append(scene)
    return out


def _pairs(scene: Dict[str, Any]) -> Counter:
    return Counter((o["colour"], o["kind"]) for o in scene["objects"])


def _present_pair(scene: Dict[str, Any], rng: np.random.Generator) -> Tuple[str, str]:
    obj = scene["objects"][int(rng.integers(len(scene["objects"])))]
    return obj["colour"], obj["kind"]


def _absent_pair(scene: Dict[str, Any], rng: np.random.Generator) -> Tuple[str, str]:
    present = _pairs(scene)
    while True:
        pair = (str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)))
        if pair not in present:
            return pair


def _write(folder: Path, name: str, data: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, separators=(",", ":"))
    return path


# ---------------------------------------------------------------------- VQA
def _questions(scene: Dict[str, Any]) -> List[Tuple[str, str]]:
    rng = _rng(scene, 0)
    objects = scene["objects"]
    kinds, colours = Counter(o["kind"] for o in objects), Counter(o["colour"] for o in objects)
    qa = [("how many shapes are there", str(len(objects)))]
    qa += [(f"what color is the {o['kind']}", o["colour"]) for o in objects if kinds[o["kind"]] == 1]
    qa += [(f"what shape is the {o['colour']} object", o["kind"])
           for o in objects if colours[o["colour"]] == 1]
    colour, kind = _present_pair(scene, rng)
    qa.append((f"is there a {colour} {kind}", "yes"))
    colour, kind = _absent_pair(scene, rng)
    qa.append((f"is there a {colour} {kind}", "no"))
    return qa


def emit_vqa(scenes: Scenes, world: Union[str, Path]) -> List[Path]:
    """``vqa_{train,val,test}.json`` + ``answer_list.json`` (official VQA formats).

    Train entries: ``{question_id, question, answer: [str], image, dataset: "vqa"}``; val /
    test entries: ``{question_id, question, image, dataset, answer: [str]}`` (the ground
    truth kept for local scoring).
    """
    folder, written, answers = Path(world) / "tasks", [], set()
    qid = 0
    for split, items in _by_split(scenes).items():
        rows = []
        for scene in items:
            for question, answer in _questions(scene):
                rows.append({"question_id": qid, "question": question, "answer": [answer],
                             "image": scene["image"], "dataset": "vqa"})
                answers.add(answer)
                qid += 1
        written.append(_write(folder, f"vqa_{split}.json", rows))
    written.append(_write(folder, "answer_list.json", sorted(answers)))
    return written


# -------------------------------------------------------------------- NLVR2
def emit_nlvr2(scenes: Scenes, world: Union[str, Path]) -> List[Path]:
    """``nlvr2_{train,val,test}.json``: ``{images: [p0, p1], sentence, label: "True"|"False"}``.

    Consecutive scenes of a split form pairs; three statements per pair.
    """
    folder, written = Path(world) / "tasks", []
    for split, items in _by_split(scenes).items():
        rows = []
        for left, right in zip(items[0::2], items[1::2]):
            rng = _rng(left, 1)
            colour, kind = _present_pair(left, rng)
            both = _pairs(right)[(colour, kind)] > 0
            n_left, n_right = len(left["objects"]), len(right["objects"])
            total = n_left + n_right + int(rng.choice([-1, 0, 0, 1]))
            images = [left["image"], right["image"]]
            rows += [
                {"images": images, "sentence": f"both images contain a {colour} {kind}",
                 "label": str(both)},
                {"images": images, "sentence": "the left image contains more shapes than the "
                                               "right image", "label": str(n_left > n_right)},
                {"images": images, "sentence": f"there are {total} shapes in the two images",
                 "label": str(total == n_left + n_right)},
            ]
        written.append(_write(folder, f"nlvr2_{split}.json", rows))
    return written


# ------------------------------------------------------------------ SNLI-VE
_NEUTRAL = ("the {c} {k} was drawn by a child", "the {c} {k} is made of paper",
            "someone is about to erase the {c} {k}")


def emit_snli_ve(scenes: Scenes, world: Union[str, Path]) -> List[Path]:
    """``ve_{train,val,test}.json``: ``{image (no .jpg), sentence, label}``.

    Labels ``entailment`` (a present object), ``contradiction`` (an absent one or a wrong
    count), ``neutral`` (a claim the picture cannot settle).
    """
    folder, written = Path(world) / "tasks", []
    for split, items in _by_split(scenes).items():
        rows = []
        for scene in items:
            rng = _rng(scene, 2)
            image = scene["image"][:-len(".jpg")]
            colour, kind = _present_pair(scene, rng)
            absent = _absent_pair(scene, rng)
            n = len(scene["objects"])
            rows += [
                {"image": image, "sentence": f"there is a {colour} {kind}", "label": "entailment"},
                {"image": image, "sentence": f"there is a {absent[0]} {absent[1]}",
                 "label": "contradiction"},
                {"image": image, "sentence": f"there are exactly {n + 1} shapes",
                 "label": "contradiction"},
                {"image": image, "sentence": str(rng.choice(_NEUTRAL)).format(c=colour, k=kind),
                 "label": "neutral"},
            ]
        written.append(_write(folder, f"ve_{split}.json", rows))
    return written


# ---------------------------------------------------------------- grounding
# The files of the official ALBEF grounding evaluation, in their official formats. REFER's
# testA / testB split RefCOCO+'s test images by content (people / other objects); the demo
# world splits its test images by index parity instead (even: testA, odd: testB).
GROUNDING_FILES = {"train": "grounding_train.json", "val": "grounding_val.json",
                   "test": "grounding_test.json", "refs": "grounding_refs(unc).p",
                   "instances": "grounding_instances.json", "dets": "grounding_dets.json",
                   "cocos": "grounding_cocos.json"}


def _grounding_split(scene: Dict[str, Any]) -> str:
    if scene["split"] != "test":
        return scene["split"]
    return "testA" if scene["index"] % 2 == 0 else "testB"


def emit_grounding(scenes: Scenes, world: Union[str, Path]) -> List[Path]:
    """Referring expressions ``the <colour> <kind>`` for objects unique by colour and kind.

    Official formats (names prefixed ``grounding_``): ``train.json`` ``[{image, text}]``;
    ``val.json`` / ``test.json`` ``[{image, text, ref_id}]`` (test holds testA and testB);
    the REFER annotations ``refs(unc).p`` (a pickle of plain containers: ``[{ref_id, ann_id,
    image_id, split, sentences: [{sent, raw, sent_id}], category_id, file_name}]``) and
    ``instances.json`` (COCO style ``images`` with height / width, ``annotations`` with
    ``bbox [x, y, w, h]``, ``categories``); ``dets.json`` and ``cocos.json``
    (``{str(image_id): [[x, y, w, h], ...]}``): the candidate boxes, here the world's object
    boxes in both (perfect proposals).
    """
    import pickle  # writing plain containers only; readers use a restricted unpickler

    folder, written = Path(world) / "tasks", []
    rows: Dict[str, List[Dict[str, Any]]] = {"train": [], "val": [], "test": []}
    refs: List[Dict[str, Any]] = []
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    boxes: Dict[str, List[List[float]]] = {}
    categories = {kind: i + 1 for i, kind in enumerate(SHAPES)}
    for image_id, scene in enumerate(scenes):
        images.append({"id": image_id, "file_name": scene["image"], "height": int(scene["height"]),
                       "width": int(scene["width"])})
        boxes[str(image_id)] = [[float(v) for v in o["bbox"]] for o in scene["objects"]]
        counts = _pairs(scene)
        split = _grounding_split(scene)
        for o in scene["objects"]:
            ann_id = len(annotations)
            x, y, w, h = (float(v) for v in o["bbox"])
            annotations.append({"id": ann_id, "image_id": image_id, "bbox": [x, y, w, h],
                                "area": w * h, "category_id": categories[o["kind"]], "iscrowd": 0})
            if counts[(o["colour"], o["kind"])] != 1:
                continue  # ambiguous expression: skip
            text = f"the {o['colour']} {o['kind']}"
            if split == "train":
                rows["train"].append({"image": scene["image"], "text": text})
                continue
            ref_id = len(refs)
            refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split,
                         "sentences": [{"sent": text, "raw": text, "sent_id": ref_id}],
                         "sent_ids": [ref_id], "category_id": categories[o["kind"]],
                         "file_name": scene["image"]})
            rows["val" if split == "val" else "test"].append(
                {"image": scene["image"], "text": text, "ref_id": ref_id})
    for split, split_rows in rows.items():
        written.append(_write(folder, GROUNDING_FILES[split], split_rows))
    instances = {"images": images, "annotations": annotations,
                 "categories": [{"id": i, "name": kind} for kind, i in categories.items()]}
    written.append(_write(folder, GROUNDING_FILES["instances"], instances))
    written.append(_write(folder, GROUNDING_FILES["dets"], boxes))
    written.append(_write(folder, GROUNDING_FILES["cocos"], boxes))
    refs_path = folder / GROUNDING_FILES["refs"]
    with open(refs_path, "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    written.append(refs_path)
    return written


def emit_all(scenes: Scenes, world: Union[str, Path]) -> List[Path]:
    """Write every task's files; returns their paths."""
    return [path for emit in (emit_vqa, emit_nlvr2, emit_snli_ve, emit_grounding)
            for path in emit(scenes, world)]
