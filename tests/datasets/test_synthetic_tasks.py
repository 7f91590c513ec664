import json
import re
from collections import Counter

import pytest

from albef_plugin.datasets.synthetic import (emit_grounding, emit_nlvr2, emit_snli_ve, emit_vqa,
                                             load_scenes)
from albef_plugin.datasets.synthetic.world import COLOURS, SHAPES

_COLOUR = "|".join(COLOURS)
_KIND = "|".join(SHAPES)


def _scenes_by_image(world):
    return {s["image"]: s for s in load_scenes(world)}


def test_vqa_answers_follow_the_scenes(tiny_world, tmp_path):
    emit_vqa(load_scenes(tiny_world), tmp_path)
    scenes = _scenes_by_image(tiny_world)
    rows = json.loads((tmp_path / "tasks" / "vqa_train.json").read_text())
    assert rows and set(rows[0]) == {"question_id", "question", "answer", "image", "dataset"}
    for row in rows:
        scene = scenes[row["image"]]
        if row["question"] == "how many shapes are there":
            assert row["answer"] == [str(len(scene["objects"]))] * 10  # VQA v2: 10 annotators
        if row["question"].startswith("is there a "):
            colour, kind = row["question"][len("is there a "):].split(" ")
            present = any(o["colour"] == colour and o["kind"] == kind for o in scene["objects"])
            assert row["answer"] == ["yes" if present else "no"] * 10
    answers = json.loads((tmp_path / "tasks" / "answer_list.json").read_text())
    assert {"yes", "no"} <= set(answers)
    assert len({r["question_id"] for r in rows}) == len(rows)


def _has(scene, colour, kind):
    return any(o["colour"] == colour and o["kind"] == kind for o in scene["objects"])


def _nlvr2_truth(sentence, left, right):
    """The label of an NLVR2 statement, recomputed from the two scenes; (template, label)."""
    match = re.fullmatch(rf"the (left|right) image contains a ({_COLOUR}) ({_KIND})", sentence)
    if match:
        side, colour, kind = match.groups()
        return "the {side} image contains a X", _has(left if side == "left" else right, colour, kind)
    match = re.fullmatch(rf"both images contain a ({_COLOUR}) ({_KIND})", sentence)
    if match:
        return "both images contain a X", _has(left, *match.groups()) and _has(right, *match.groups())
    assert sentence == "the left image contains more shapes than the right image", sentence
    assert len(left["objects"]) != len(right["objects"])  # ties are never asked
    return sentence, len(left["objects"]) > len(right["objects"])


def _ve_truth(sentence, scene):
    match = re.fullmatch(rf"the ({_COLOUR}) ({_KIND}) is (small|large|at the top|in the middle|"
                         rf"at the bottom)", sentence)
    assert match, sentence
    colour, kind, value = match.groups()
    template = "size" if value in ("small", "large") else "position"
    shown = [o for o in scene["objects"] if (o["colour"], o["kind"]) == (colour, kind)]
    if not shown:
        return template, "neutral"
    assert len(shown) == 1  # "the red circle" always names exactly one object
    true_value = shown[0]["size"] if template == "size" else \
        {"top": "at the top", "middle": "in the middle", "bottom": "at the bottom"}[shown[0]["position"]]
    return template, "entailment" if value == true_value else "contradiction"


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_nlvr2_labels_follow_the_scenes_and_every_template_carries_both_labels(
        tiny_world, tmp_path, split):
    emit_nlvr2(load_scenes(tiny_world), tmp_path)
    scenes = _scenes_by_image(tiny_world)
    rows = json.loads((tmp_path / "tasks" / f"nlvr2_{split}.json").read_text())
    assert rows
    counts = Counter()
    for row in rows:
        assert set(row) == {"images", "sentence", "label"} and len(row["images"]) == 2
        left, right = (scenes[path] for path in row["images"])
        assert left["split"] == right["split"] == split and left is not right
        template, truth = _nlvr2_truth(row["sentence"], left, right)
        assert row["label"] == str(truth), row
        counts[(template, row["label"])] += 1
    templates = {template for template, _ in counts}
    assert len(templates) >= 2
    for template in templates:  # text alone cannot tell the label
        assert counts[(template, "True")] == counts[(template, "False")] > 0, counts
    # the same sentence is asked as often with answer True as with False
    by_sentence = Counter((row["sentence"], row["label"]) for row in rows)
    for sentence in {row["sentence"] for row in rows if "image contains a" in row["sentence"]}:
        assert by_sentence[(sentence, "True")] == by_sentence[(sentence, "False")]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_snli_ve_labels_follow_the_scenes_and_every_template_carries_every_label(
        tiny_world, tmp_path, split):
    emit_snli_ve(load_scenes(tiny_world), tmp_path)
    scenes = {s["image"][:-len(".jpg")]: s for s in load_scenes(tiny_world)}
    rows = json.loads((tmp_path / "tasks" / f"ve_{split}.json").read_text())
    assert rows
    counts = Counter()
    for row in rows:
        assert set(row) == {"image", "sentence", "label"} and not row["image"].endswith(".jpg")
        template, truth = _ve_truth(row["sentence"], scenes[row["image"]])
        assert row["label"] == truth, row
        counts[(template, truth)] += 1
    for template in ("size", "position"):
        assert counts[(template, "entailment")] == counts[(template, "neutral")] \
            == counts[(template, "contradiction")] > 0, counts


def test_grounding_files_follow_the_official_formats_and_name_one_object(tiny_world, tmp_path):
    """REFER refs pickle + instances (boxes, sizes), dets / cocos keyed by image id."""
    from albef_plugin.datasets.grounding import load_plain_pickle

    emit_grounding(load_scenes(tiny_world), tmp_path)
    by_image = _scenes_by_image(tiny_world)
    tasks = tmp_path / "tasks"
    test_refs = json.loads((tasks / "grounding_test.json").read_text())
    assert test_refs and all(set(r) == {"image", "text", "ref_id"} for r in test_refs)
    assert all(set(r) == {"image", "text"} for r in json.loads((tasks / "grounding_train.json").read_text()))
    refs = {r["ref_id"]: r for r in load_plain_pickle(tasks / "grounding_refs(unc).p")}
    instances = json.loads((tasks / "grounding_instances.json").read_text())
    boxes = {a["id"]: a["bbox"] for a in instances["annotations"]}
    dets = json.loads((tasks / "grounding_dets.json").read_text())
    assert {refs[r["ref_id"]]["split"] for r in test_refs} == {"testA", "testB"}
    for row in test_refs:
        ref = refs[row["ref_id"]]
        box = boxes[ref["ann_id"]]
        assert box in dets[str(ref["image_id"])]
        colour, kind = row["text"].split(" ")[1:]
        match = [o for o in by_image[row["image"]]["objects"] if (o["colour"], o["kind"]) == (colour, kind)]
        assert len(match) == 1 and match[0]["bbox"] == box
