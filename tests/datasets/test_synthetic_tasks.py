import json

from albef_plugin.datasets.synthetic import (emit_grounding, emit_nlvr2, emit_snli_ve, emit_vqa,
                                             load_scenes)


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
            assert row["answer"] == [str(len(scene["objects"]))]
        if row["question"].startswith("is there a "):
            colour, kind = row["question"][len("is there a "):].split(" ")
            present = any(o["colour"] == colour and o["kind"] == kind for o in scene["objects"])
            assert row["answer"] == ["yes" if present else "no"]
    answers = json.loads((tmp_path / "tasks" / "answer_list.json").read_text())
    assert {"yes", "no"} <= set(answers)
    assert len({r["question_id"] for r in rows}) == len(rows)


def test_nlvr2_snli_ve_and_grounding_formats(tiny_world, tmp_path):
    scenes = load_scenes(tiny_world)
    emit_nlvr2(scenes, tmp_path)
    emit_snli_ve(scenes, tmp_path)
    emit_grounding(scenes, tmp_path)
    by_image = _scenes_by_image(tiny_world)
    nlvr = json.loads((tmp_path / "tasks" / "nlvr2_train.json").read_text())
    assert all(len(r["images"]) == 2 and r["label"] in ("True", "False") for r in nlvr)
    for row in nlvr:
        if row["sentence"].startswith("the left image contains more"):
            left, right = (len(by_image[p]["objects"]) for p in row["images"])
            assert row["label"] == str(left > right)
    ve = json.loads((tmp_path / "tasks" / "ve_val.json").read_text())
    assert {r["label"] for r in ve} == {"entailment", "neutral", "contradiction"}
    assert all(not r["image"].endswith(".jpg") for r in ve)
    # grounding: the official files (REFER refs pickle + instances, dets keyed by image id)
    from albef_plugin.datasets.grounding import load_plain_pickle

    tasks = tmp_path / "tasks"
    test_refs = json.loads((tasks / "grounding_test.json").read_text())
    assert test_refs and all(set(r) == {"image", "text", "ref_id"} for r in test_refs)
    refs = {r["ref_id"]: r for r in load_plain_pickle(tasks / "grounding_refs(unc).p")}
    instances = json.loads((tasks / "grounding_instances.json").read_text())
    boxes = {a["id"]: a["bbox"] for a in instances["annotations"]}
    dets = json.loads((tasks / "grounding_dets.json").read_text())
    assert {refs[r["ref_id"]]["split"] for r in test_refs} <= {"testA", "testB"}
    for row in test_refs:
        ref = refs[row["ref_id"]]
        box = boxes[ref["ann_id"]]
        assert box in dets[str(ref["image_id"])]
        colour, kind = row["text"].split(" ")[1:]
        match = [o for o in by_image[row["image"]]["objects"] if (o["colour"], o["kind"]) == (colour, kind)]
        assert len(match) == 1 and match[0]["bbox"] == box
