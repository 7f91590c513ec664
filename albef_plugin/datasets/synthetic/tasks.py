"""Downstream-task annotations derived from the scenes of a synthetic world.

Each ``emit_*`` function reads scene records (``load_scenes(world)``) and writes files in
the official ALBEF format of that task into ``<world>/tasks/``; paths inside are
relative to the world folder, like the retrieval files.

Answers and labels are computed from the scene metadata, so they are always correct. The
NLVR2 and SNLI-VE writers emit every statement template with every label equally often, so
the text alone cannot tell the label (only the image can).
Statements never use "left" / "right" for positions inside an image (flip
augmentation); in NLVR2 "left image" / "right image" name the two images of a pair.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from albef_plugin.datasets.synthetic.world import COLOURS, SHAPES, SPLIT_CODES

__all__ = ["emit_vqa", "emit_nlvr2", "emit_snli_ve", "emit_grounding", "emit_all",
           "NLVR2_TEMPLATES", "VE_TEMPLATES", "TASKS_VERSION", "ensure_task_files", "GROUNDING_FILES"]

Scenes = Sequence[Dict[str, Any]]
_EMIT_STREAM = 7  # separates these draws from the scene generator's
# Bump when any emitted file changes (templates, labels, pairing): files of an older version
# are rewritten by ensure_task_files instead of being reused.
TASKS_VERSION = 3  # 3: grounding files in the official REFER / ALBEF formats


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
_VQA_ANNOTATORS = 10  # answers per question in VQA v2
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

    Entries: ``{question_id, question, answer: [10 strs], image, dataset: "vqa"}``, the 10
    annotations of VQA v2 (all agree: the answers are computed from the scene). The official
    test file has no ``answer``; here val / test keep it as the ground truth for local scoring.
    """
    folder, written, answers = Path(world) / "tasks", [], set()
    qid = 0
    for split, items in _by_split(scenes).items():
        rows = []
        for scene in items:
            for question, answer in _questions(scene):
                rows.append({"question_id": qid, "question": question,
                             "answer": [answer] * _VQA_ANNOTATORS, "image": scene["image"],
                             "dataset": "vqa"})
                answers.add(answer)
                qid += 1
        written.append(_write(folder, f"vqa_{split}.json", rows))
    written.append(_write(folder, "answer_list.json", sorted(answers)))
    return written


# -------------------------------------------------------------------- NLVR2
# Every statement template is emitted once as "True" and once as "False" for the same anchor
# scene, so no template (and no slot word) tells the label: the images must. Wherever it can,
# the "False" row shows the *same* two images as the "True" row, swapped.
NLVR2_TEMPLATES = ("the {side} image contains a {colour} {kind}",
                   "both images contain a {colour} {kind}",
                   "the left image contains more shapes than the right image")


def _scenes_with(items: Sequence[Dict[str, Any]]) -> Dict[Tuple[str, str], List[int]]:
    """(colour, kind) -> indices of the scenes (in ``items``) holding such an object."""
    index: Dict[Tuple[str, str], List[int]] = {}
    for i, scene in enumerate(items):
        for pair in _pairs(scene):
            index.setdefault(pair, []).append(i)
    return index


def _partner(items: Sequence[Dict[str, Any]], anchor: int, rng: np.random.Generator,
             accept: Any, candidates: Optional[Sequence[int]] = None) -> Optional[Dict[str, Any]]:
    """A random other scene of the split for which ``accept(scene)`` holds, or None."""
    pool = list(range(len(items))) if candidates is None else list(candidates)
    for i in rng.permutation(len(pool)):
        j = pool[int(i)]
        if j != anchor and accept(items[j]):
            return items[j]
    return None


def _nlvr2_rows(items: Sequence[Dict[str, Any]], anchor: int,
                holders: Dict[Tuple[str, str], List[int]]) -> List[Dict[str, Any]]:
    scene = items[anchor]
    rng = _rng(scene, 1)
    colour, kind = _present_pair(scene, rng)
    has = lambda s: _pairs(s)[(colour, kind)] > 0  # noqa: E731
    rows = []

    def add(left: Dict[str, Any], right: Dict[str, Any], sentence: str, label: bool) -> None:
        rows.append({"images": [left["image"], right["image"]], "sentence": sentence,
                     "label": str(label)})

    # "the {side} image contains X": True with the anchor (holding X) on that side and a scene
    # without X on the other; False with the same two images swapped.
    other = _partner(items, anchor, rng, lambda s: not has(s))
    if other is not None:
        side = "left" if rng.random() < 0.5 else "right"
        sentence = NLVR2_TEMPLATES[0].format(side=side, colour=colour, kind=kind)
        pair = (scene, other) if side == "left" else (other, scene)
        add(*pair, sentence, True)
        add(*pair[::-1], sentence, False)
    # "both images contain X": True with another holder of X; False with a scene without X.
    sharer = _partner(items, anchor, rng, has, holders.get((colour, kind), []))
    if sharer is not None and other is not None:
        sentence = NLVR2_TEMPLATES[1].format(colour=colour, kind=kind)
        for partner, label in ((sharer, True), (other, False)):
            add(*((scene, partner) if rng.random() < 0.5 else (partner, scene)), sentence, label)
    # "the left image contains more shapes ...": a scene with another count, in both orders.
    count = len(scene["objects"])
    differing = _partner(items, anchor, rng, lambda s: len(s["objects"]) != count)
    if differing is not None:
        more, fewer = (scene, differing) if count > len(differing["objects"]) else (differing, scene)
        add(more, fewer, NLVR2_TEMPLATES[2], True)
        add(fewer, more, NLVR2_TEMPLATES[2], False)
    return rows


def emit_nlvr2(scenes: Scenes, world: Union[str, Path]) -> List[Path]:
    """``nlvr2_{train,val,test}.json``: ``{images: [p0, p1], sentence, label: "True"|"False"}``.

    Each scene of a split anchors up to three pairs of rows, one pair per template of
    :data:`NLVR2_TEMPLATES`, each pair one "True" and one "False" statement; the partner
    images come from the same split. A template is skipped for an anchor when the split
    has no suitable partner, so every template carries both labels equally often.
    """
    folder, written = Path(world) / "tasks", []
    for split, items in _by_split(scenes).items():
        holders = _scenes_with(items)
        rows = [row for anchor in range(len(items)) for row in _nlvr2_rows(items, anchor, holders)]
        written.append(_write(folder, f"nlvr2_{split}.json", rows))
    return written


# ------------------------------------------------------------------ SNLI-VE
# The image is a window onto a larger world: a statement about an object the picture shows
# is settled by it (entailment or contradiction); one about an object it does not show could
# be true out of view (neutral). Each template is emitted once per label for a scene, so the
# template and its slot words carry no label information.
VE_TEMPLATES = ("the {colour} {kind} is {size}", "the {colour} {kind} is {position}")
_POSITIONS = {"top": "at the top", "middle": "in the middle", "bottom": "at the bottom"}
_VE_SLOTS = (("size", {"small": "small", "large": "large"}), ("position", _POSITIONS))


def _unique_objects(scene: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Objects that no other object of the scene shares colour and kind with ("the red circle"
    names exactly one of them)."""
    counts = _pairs(scene)
    return [o for o in scene["objects"] if counts[(o["colour"], o["kind"])] == 1]


def _ve_rows(scene: Dict[str, Any]) -> List[Dict[str, Any]]:
    rng = _rng(scene, 2)
    image = scene["image"][:-len(".jpg")]
    unique = _unique_objects(scene)
    if not unique:  # every object has a twin: "the red circle" would be ambiguous
        return []
    rows = []
    for template, (slot, words) in zip(VE_TEMPLATES, _VE_SLOTS):
        obj = unique[int(rng.integers(len(unique)))]
        true_value = obj[slot]
        false_value = str(rng.choice([v for v in words if v != true_value]))
        absent = _absent_pair(scene, rng)
        any_value = str(rng.choice(list(words)))
        for (colour, kind), value, label in (
                ((obj["colour"], obj["kind"]), true_value, "entailment"),
                ((obj["colour"], obj["kind"]), false_value, "contradiction"),
                (absent, any_value, "neutral")):
            sentence = template.format(colour=colour, kind=kind, **{slot: words[value]})
            rows.append({"image": image, "sentence": sentence, "label": label})
    return rows


def emit_snli_ve(scenes: Scenes, world: Union[str, Path]) -> List[Path]:
    """``ve_{train,val,test}.json``: ``{image (no .jpg), sentence, label}``.

    Per scene and template of :data:`VE_TEMPLATES`: ``entailment`` (a shown object's true
    size / position), ``contradiction`` (the same object, a false size / position) and
    ``neutral`` (an object the picture does not show). Scenes whose objects all have a twin
    of the same colour and kind are skipped.
    """
    folder, written = Path(world) / "tasks", []
    for split, items in _by_split(scenes).items():
        rows = [row for scene in items for row in _ve_rows(scene)]
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


_EMITTERS = {"vqa": emit_vqa, "nlvr2": emit_nlvr2, "snli_ve": emit_snli_ve,
             "grounding": emit_grounding}


def ensure_task_files(world: Union[str, Path], task: str) -> Path:
    """Write ``task``'s files into ``<world>/tasks`` unless they are there from this
    :data:`TASKS_VERSION`; returns the ``tasks`` folder. Main rank only (like ``prepare``).

    A marker ``tasks/<task>.done`` holding the version is written after the files, so an
    interrupted write or an older generator's files are redone.
    """
    if task not in _EMITTERS:
        raise ValueError(f"unknown synthetic task {task!r}; known: {', '.join(_EMITTERS)}")
    from albef_plugin.datasets.synthetic.generate import load_scenes

    folder = Path(world) / "tasks"
    marker = folder / f"{task}.done"
    try:
        if json.loads(marker.read_text(encoding="utf-8")).get("version") == TASKS_VERSION:
            return folder
    except (OSError, ValueError, AttributeError):
        pass
    _emit_with_marker(task, load_scenes(world), world)
    return folder


def _emit_with_marker(task: str, scenes: Scenes, world: Union[str, Path]) -> List[Path]:
    written = _EMITTERS[task](scenes, world)
    _write(Path(world) / "tasks", f"{task}.done", {"version": TASKS_VERSION})
    return written


def emit_all(scenes: Scenes, world: Union[str, Path]) -> List[Path]:
    """Write every task's files (and their version markers); returns the files' paths."""
    return [path for task in _EMITTERS for path in _emit_with_marker(task, scenes, world)]
