"""VQA data in the official formats: answer weights, load-time errors, unreadable images, the
collate, the builder's splits, and the vqa metric end to end (results file, accuracy)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from albef_plugin.datasets.annotations import AnnotationError
from albef_plugin.datasets.images import UnreadableImageError
from albef_plugin.datasets.vqa import load_answer_list
from albef_plugin.datasets.vqa_builders import VQAJsonBuilder
from albef_plugin.metrics.base import EvalContext
from albef_plugin.metrics.vqa import VQAMetric

ANSWERS = ["yes", "no", "2", "red", "circle"]


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture()
def vqa_root(tmp_path):
    """Official-format files: 4 COCO-like images, 2 VG images."""
    rng = np.random.default_rng(0)
    for folder, n in (("coco", 4), ("vg", 2)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
                tmp_path / folder / f"{i}.jpg")
    _write(tmp_path / "vqa_train.json", [
        {"question": "Is it RED?", "answer": ["yes"] * 7 + ["no"] * 3, "image": "0.jpg",
         "dataset": "vqa"},
        {"question": "How many?", "answer": ["2"] * 10, "image": "1.jpg", "dataset": "vqa"}])
    _write(tmp_path / "vg_qa.json", [
        {"question": "What shape?", "answer": "circle", "image": "0.jpg", "dataset": "vg"}])
    _write(tmp_path / "vqa_test.json", [
        {"question_id": 10 + i, "question": f"question {i}?", "image": f"{i}.jpg", "dataset": "vqa"}
        for i in range(4)])
    _write(tmp_path / "vqa_val.json", [
        {"question_id": 20 + i, "question": "what color?", "image": f"{i}.jpg", "dataset": "vqa",
         "answer": ["red"] * 10} for i in range(3)])
    _write(tmp_path / "answer_list.json", ANSWERS)
    return tmp_path


def builder(root: Path, **overrides) -> VQAJsonBuilder:
    config = {"data_dir": str(root), "image_root": "coco", "vg_image_root": "vg", "image_size": 16,
              "annotations": {"train": ["vqa_train.json", "vg_qa.json"], "test": ["vqa_test.json"]},
              **overrides}
    return VQAJsonBuilder(VQAJsonBuilder.make_config(config))


def test_answer_weights_questions_and_image_roots(vqa_root):
    data = builder(vqa_root)
    assert data.splits() == {"train": "train", "test": "test"}  # no val files: no val split
    train = data.build("train")
    assert len(train) == 3
    assert train.questions[0] == "is it red"  # pre_question
    assert train.answers[0] == ["yes", "no"] and train.weights[0] == pytest.approx([0.7, 0.3])
    assert train.answers[1] == ["2"] and train.weights[1] == [1.0]
    assert train.answers[2] == ["circle"] and train.weights[2] == [0.5]  # VG
    assert train.image_paths[2] == str(vqa_root / "vg" / "0.jpg")
    assert train.image_paths[0] == str(vqa_root / "coco" / "0.jpg")


def test_training_collate_repeats_question_states_per_answer(vqa_root):
    data = builder(vqa_root)
    train = data.build("train")
    batch = data.collate_fn("train")([train[0], train[1], train[2]])
    assert batch["image"].shape == (3, 3, 16, 16)
    assert batch["answer_question"].tolist() == [0, 0, 1, 2]
    assert batch["answer_weights"].tolist() == pytest.approx([0.7, 0.3, 1.0, 0.5])
    text = data.answer_processor
    ids = batch["answer_ids"]
    assert (ids[:, 0] == text.cls_token_id).all()
    assert [text.decode(row) for row in ids] == ["yes", "no", "2", "circle"]
    assert (ids == text.sep_token_id).sum(1).tolist() == [1, 1, 1, 1]  # [CLS] answer [SEP]
    assert batch["question_ids"].shape[0] == 3 and batch["num_skipped"] == 0


@pytest.mark.parametrize("entry, message", [
    ({"question": "q", "image": "0.jpg", "dataset": "vqa"}, r"entry 0 has no field 'answer'"),
    ({"question": "q", "answer": [], "image": "0.jpg", "dataset": "vqa"},
     r"training question 0 \('q'\) has no answers"),
    ({"question": "q", "answer": ["a", 3], "image": "0.jpg", "dataset": "vqa"}, r"field 'answer'"),
    ({"question": "q", "answer": ["a"], "image": "0.jpg", "dataset": "coco"}, r"field 'dataset'"),
    ({"question": "", "answer": ["a"], "image": "0.jpg"}, r"field 'question'"),
    ({"question": "q", "answer": ["a"]}, r"no field 'image'"),
    ("is it red?", r"entry 0 is a str, expected an object with question, image, dataset \(and answer "
                   r"to train\)\.$"),
])
def test_bad_training_entries_name_file_entry_and_field(vqa_root, entry, message):
    _write(vqa_root / "bad.json", [entry])
    with pytest.raises(AnnotationError, match=message) as info:
        builder(vqa_root, annotations={"train": ["bad.json"]}).build("train")
    assert "bad.json" in str(info.value)


def test_the_builder_checks_its_config_and_paths_as_the_other_json_builders(vqa_root):
    with pytest.raises(ValueError, match=r"albef_vqa_json.on_unreadable='skip'; choose one of"):
        builder(vqa_root, on_unreadable="skip")
    data = builder(vqa_root)
    assert data.annotation_files("test") == [str(vqa_root / "vqa_test.json")]
    assert data.image_roots() == {"vqa": str(vqa_root / "coco"), "vg": str(vqa_root / "vg")}
    assert data.question_processor is data.question_processor  # built once
    assert not data.question_processor.add_sep and data.answer_processor.add_sep


def test_bad_test_entries_and_answer_lists_are_clear_errors(vqa_root):
    _write(vqa_root / "bad_test.json", [{"question": "q", "image": "0.jpg", "dataset": "vqa"}])
    with pytest.raises(AnnotationError, match=r"bad_test.json: entry 0 has no field 'question_id'"):
        builder(vqa_root, annotations={"train": ["vqa_train.json"], "test": ["bad_test.json"]}).build("test")
    _write(vqa_root / "dup.json", [{"question_id": 1, "question": "q", "image": "0.jpg"}] * 2)
    with pytest.raises(AnnotationError, match="repeats question_id 1"):
        builder(vqa_root, annotations={"train": ["vqa_train.json"], "test": ["dup.json"]}).build("test")
    for data, message in (({"a": 1}, "must be a JSON list"), ([], "empty"), (["yes", ""], "entry 1"),
                          (["yes", "yes"], "listed twice")):
        _write(vqa_root / "answers.json", data)
        with pytest.raises(AnnotationError, match=message):
            load_answer_list(vqa_root / "answers.json")
    with pytest.raises(AnnotationError, match="does not exist"):
        load_answer_list(vqa_root / "missing.json")


def test_unreadable_training_images_are_substituted_or_dropped_and_counted(vqa_root):
    (vqa_root / "coco" / "0.jpg").write_bytes(b"not a jpeg")
    train = builder(vqa_root).build("train")
    item = train[0]
    assert item["num_skipped"] == 1 and item["question"] == "how many"  # the next question
    data = builder(vqa_root, on_unreadable="drop")
    train = data.build("train")
    assert train[0] is None
    batch = data.collate_fn("train")([train[0], train[1]])
    assert batch["num_skipped"] == 1 and batch["image"].shape[0] == 2  # padded back to full size


def test_vqa_metric_writes_every_answer_and_scores_where_answers_exist(vqa_root, tmp_path):
    """A model that answers "red" for every question: val (answers "red") scores 100, test has
    no answers (results file only), an unreadable test image is answered and counted."""
    data = builder(vqa_root, annotations={"train": ["vqa_train.json"], "val": ["vqa_val.json"],
                                          "test": ["vqa_test.json"]})
    assert data.splits() == {"train": "train", "val": "val", "test": "test"}

    class AlwaysRed(torch.nn.Module):
        def rank_answer(self, image, question_ids, question_mask, answer_ids, answer_mask, k):
            assert answer_ids.shape[0] == len(ANSWERS) and k == 3
            ids = torch.tensor([[3, 0, 1]]).expand(image.shape[0], 3)
            return ids, torch.full(ids.shape, 1 / 3)

    metric = VQAMetric({"k_test": 3})
    (vqa_root / "coco" / "3.jpg").write_bytes(b"broken")
    save = tmp_path / "save"
    for split in ("val", "test"):
        context = EvalContext(split=split, dataset_name="vqa", output_dir=str(save),
                              collate_fn=data.collate_fn(split), batch_size=2, num_workers=0)
        values = metric.evaluate(AlwaysRed(), data.build(split), context)
        rows = json.loads((save / f"{split}_vqa_vqa_result.json").read_text())
        assert all(row["answer"] == "red" for row in rows)
        if split == "val":
            assert values == {"num_questions": 3.0, "accuracy": 100.0}
            assert [r["question_id"] for r in rows] == [20, 21, 22]
        else:
            assert values == {"num_questions": 4.0, "unreadable_images": 1.0}
            assert [r["question_id"] for r in rows] == [10, 11, 12, 13]


class AlwaysFirst(torch.nn.Module):
    """Answers the first candidate; records the images it was given."""

    def __init__(self):
        super().__init__()
        self.images = []

    def rank_answer(self, image, question_ids, question_mask, answer_ids, answer_mask, k):
        self.images.append(image)
        ids = torch.arange(k).expand(image.shape[0], k)
        return ids, torch.full(ids.shape, 1 / k)


def test_a_test_batch_without_any_readable_image_is_answered_from_blanks(vqa_root, tmp_path):
    data = builder(vqa_root)
    for broken in ("2.jpg", "3.jpg"):  # the whole second batch of 2
        (vqa_root / "coco" / broken).write_bytes(b"\xff\xd8\xff truncated")
    context = EvalContext(split="test", dataset_name="albef_vqa_json", output_dir=str(tmp_path),
                          collate_fn=data.collate_fn("test"), batch_size=2, num_workers=0)
    model = AlwaysFirst()
    values = VQAMetric({"k_test": 2}).evaluate(model, data.build("test"), context)
    assert values == {"num_questions": 4.0, "unreadable_images": 2.0}
    rows = json.loads((tmp_path / "test_albef_vqa_json_vqa_result.json").read_text())
    assert [r["question_id"] for r in rows] == [10, 11, 12, 13]
    assert model.images[1].shape == model.images[0].shape and not model.images[1].any()  # blank


def test_a_vqa_split_without_any_readable_image_is_one_clean_error(vqa_root):
    data = builder(vqa_root)
    for i in range(4):
        (vqa_root / "coco" / f"{i}.jpg").write_bytes(b"broken")
    context = EvalContext(split="test", dataset_name="albef_vqa_json", collate_fn=data.collate_fn("test"),
                          batch_size=2, num_workers=0)
    with pytest.raises(UnreadableImageError, match=r"every one of the 4 samples of split 'test' of "
                                                   r"dataset 'albef_vqa_json' has an unreadable"):
        VQAMetric({"k_test": 2}).evaluate(AlwaysFirst(), data.build("test"), context)


def test_vqa_metric_with_a_real_model(vqa_root, tmp_path):
    from albef_plugin.models import build_model
    from albef_plugin.models.albef.base import TINY_ALBEF_OVERRIDES

    tiny = {**TINY_ALBEF_OVERRIDES, "image_encoder": {**TINY_ALBEF_OVERRIDES["image_encoder"],
                                                      "image_size": 16, "patch_size": 8}}
    tiny["text_encoder"] = {**tiny["text_encoder"], "vocab_size": 30522, "cls_token_id": 101,
                            "mask_token_id": 103}
    model = build_model("albef_vqa", tiny).eval()
    data = builder(vqa_root, annotations={"train": ["vqa_train.json"], "val": ["vqa_val.json"]})
    context = EvalContext(split="val", dataset_name="vqa", output_dir=str(tmp_path),
                          collate_fn=data.collate_fn("val"), batch_size=2, num_workers=0)
    values = VQAMetric({"k_test": 2}).evaluate(model, data.build("val"), context)
    assert values["num_questions"] == 3.0 and 0.0 <= values["accuracy"] <= 100.0
    rows = json.loads((tmp_path / "val_vqa_vqa_result.json").read_text())
    assert [r["question_id"] for r in rows] == [20, 21, 22] and all(r["answer"] in ANSWERS for r in rows)


def test_metric_params_are_checked():
    with pytest.raises(ValueError, match="k_test"):
        VQAMetric({"k_test": 0})
    with pytest.raises(ValueError, match="unknown parameter"):
        VQAMetric({"k_tset": 3})


def test_answerer_answers_a_raw_image_and_question(vqa_root):
    from albef_plugin.models import build_model
    from albef_plugin.models.albef.base import TINY_ALBEF_OVERRIDES
    from albef_plugin.models.albef.vqa import VQAAnswerer, answer

    tiny = {**TINY_ALBEF_OVERRIDES, "text_encoder": {**TINY_ALBEF_OVERRIDES["text_encoder"],
                                                     "vocab_size": 30522, "cls_token_id": 101,
                                                     "mask_token_id": 103}}
    model = build_model("albef_vqa", tiny)
    answerer = VQAAnswerer(model, ANSWERS, k=3)
    top = answerer.answer(Image.open(vqa_root / "coco" / "0.jpg"), "What color is it?", top=2)
    assert len(top) == 2 and all(a in ANSWERS for a, _ in top) and top[0][1] >= top[1][1]
    assert model.training  # the mode is restored
    again = answer(model, str(vqa_root / "coco" / "0.jpg"), "What color is it?", ANSWERS, k=3)
    assert again[0][0] == top[0][0]
    with pytest.raises(ValueError, match="answer strings"):
        VQAAnswerer(model, [])


def test_demo_builder_writes_the_world_and_its_vqa_files(tmp_path):
    from albef_plugin.datasets.vqa_builders import DemoVQABuilder

    world = {"num_train": 6, "num_val": 2, "num_test": 3, "image_size": 64}
    data = DemoVQABuilder(DemoVQABuilder.make_config(
        {"data_dir": str(tmp_path), "image_size": 32, "synthetic": world}))
    assert data.splits() == {"train": "train", "val": "val", "test": "test"}
    data.prepare()
    tasks = data.world_dir() / "tasks"
    assert (tasks / "vqa_train.json").is_file() and (tasks / "answer_list.json").is_file()
    train, test = data.build("train"), data.build("test")
    assert len(train) > 6 and all(w == [1.0] for w in train.weights)  # 10 agreeing annotations
    assert test.has_answers and {"yes", "no"} <= set(test.answer_list)
    batch = data.collate_fn("test")([test[0], test[1]])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["index"].tolist() == [0, 1]
