"""SNLI-VE and NLVR2 annotation files: loading, checks naming file / index / field, unreadable
images, and the batches the collate makes."""
import json

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from albef_plugin.datasets import AnnotationError, UnreadableImageError
from albef_plugin.datasets.classification import LabelledImagesCollate
from albef_plugin.datasets.nlvr import NLVR2_IMAGE_KEYS, load_nlvr2_dataset
from albef_plugin.datasets.ve import VE_IMAGE_KEYS, load_ve_dataset
from albef_plugin.processors import ImageEvalProcessor, TextProcessor


@pytest.fixture(scope="module")
def text_processor():
    return TextProcessor(max_length=30)


@pytest.fixture
def transform():
    return ImageEvalProcessor(image_size=16)


@pytest.fixture
def images(tmp_path):
    """img0.jpg .. img3.jpg (readable, different colours) and broken.jpg (not a JPEG)."""
    for i in range(4):
        Image.new("RGB", (20, 20), (60 * i, 200 - 40 * i, 90)).save(tmp_path / f"img{i}.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a JPEG")
    return tmp_path


def write(folder, name, rows):
    path = folder / name
    path.write_text(json.dumps(rows))
    return path


VE_ROWS = [{"image": "img0", "sentence": "A red circle.", "label": "entailment"},
           {"image": "img1", "sentence": "a blue star", "label": "neutral"},
           {"image": "img2.jpg", "sentence": "a square", "label": "contradiction"},
           {"image": "img3", "sentence": "two rings", "label": 1}]


def test_ve_labels_paths_and_batch(images, transform, text_processor):
    ds = load_ve_dataset([write(images, "ve.json", VE_ROWS)], str(images), transform)
    assert ds.labels == [2, 1, 0, 1]  # entailment 2, neutral 1, contradiction 0; ints as they are
    assert ds.image_paths[0] == (str(images / "img0.jpg"),)  # official: <root>/<id>.jpg
    assert ds.image_paths[2] == (str(images / "img2.jpg"),)  # an explicit extension is kept
    batch = next(iter(DataLoader(ds, batch_size=4,
                                 collate_fn=LabelledImagesCollate(text_processor, VE_IMAGE_KEYS))))
    assert set(batch) == {"image", "input_ids", "attention_mask", "label", "index", "num_skipped"}
    assert batch["image"].shape == (4, 3, 16, 16)
    assert batch["label"].tolist() == [2, 1, 0, 1] and batch["index"].tolist() == [0, 1, 2, 3]
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert (batch["input_ids"][:, 0] == text_processor.cls_token_id).all()
    assert text_processor.decode(batch["input_ids"][0].tolist()) == "a red circle"  # pre_caption
    assert batch["num_skipped"] == 0


def test_nlvr2_pairs_labels_and_batch(images, transform, text_processor):
    rows = [{"images": ["img0.jpg", "img1.jpg"], "sentence": "Left has more.", "label": "True"},
            {"images": ["img2.jpg", "img3.jpg"], "sentence": "both red", "label": "False"}]
    ds = load_nlvr2_dataset([write(images, "nlvr.json", rows)], str(images), transform)
    assert ds.labels == [1, 0]
    batch = LabelledImagesCollate(text_processor, NLVR2_IMAGE_KEYS)([ds[0], ds[1]])
    assert set(batch) == {"image0", "image1", "input_ids", "attention_mask", "label", "index",
                          "num_skipped"}
    assert batch["image0"].shape == batch["image1"].shape == (2, 3, 16, 16)
    # image0 is the left image, image1 the right one
    left = transform(Image.open(images / "img2.jpg").convert("RGB"))
    torch.testing.assert_close(batch["image0"][1], left)
    assert not torch.equal(batch["image0"][1], batch["image1"][1])
    assert batch["label"].tolist() == [1, 0]


@pytest.mark.parametrize("row, message", [
    ({"sentence": "s", "label": "entailment"}, r"entry 1 has no field 'image'"),
    ({"image": "img0", "label": "neutral"}, r"entry 1 has no field 'sentence'"),
    ({"image": "img0", "sentence": "s"}, r"entry 1 has no field 'label'"),
    ({"image": "img0", "sentence": "s", "label": "maybe"}, r"entry 1 field 'label' is 'maybe'"),
    ({"image": "img0", "sentence": "s", "label": 3}, r"entry 1 field 'label' is 3"),
    ({"image": "img0", "sentence": "s", "label": True}, r"entry 1 field 'label'"),
])
def test_ve_annotation_errors_name_file_index_and_field(images, transform, row, message):
    path = write(images, "bad_ve.json", [VE_ROWS[0], row])
    with pytest.raises(AnnotationError, match=r"bad_ve\.json: " + message):
        load_ve_dataset([path], str(images), transform)


@pytest.mark.parametrize("row, message", [
    ({"images": ["img0.jpg"], "sentence": "s", "label": "True"},
     r"entry 1 field 'images' lists 1 image\(s\); an NLVR2 entry needs exactly two"),
    ({"images": ["img0.jpg", "img1.jpg", "img2.jpg"], "sentence": "s", "label": "True"},
     r"entry 1 field 'images' lists 3 image"),
    ({"images": "img0.jpg", "sentence": "s", "label": "True"}, r"entry 1 field 'images'"),
    ({"images": ["img0.jpg", "img1.jpg"], "sentence": "s", "label": "yes"},
     r"entry 1 field 'label' is 'yes'; expected one of 'True', 'False'"),
    ({"images": ["img0.jpg", "img1.jpg"], "label": "True"}, r"entry 1 has no field 'sentence'"),
])
def test_nlvr2_annotation_errors_name_file_index_and_field(images, transform, row, message):
    good = {"images": ["img0.jpg", "img1.jpg"], "sentence": "s", "label": "False"}
    path = write(images, "bad_nlvr.json", [good, row])
    with pytest.raises(AnnotationError, match=r"bad_nlvr\.json: " + message):
        load_nlvr2_dataset([path], str(images), transform)


def test_unreadable_images_are_substituted_dropped_and_counted_or_refused(images, transform,
                                                                          text_processor):
    rows = [{"images": ["img0.jpg", "img1.jpg"], "sentence": "a", "label": "True"},
            {"images": ["img2.jpg", "broken.jpg"], "sentence": "b", "label": "False"},
            {"images": ["missing.jpg", "img3.jpg"], "sentence": "c", "label": "False"},
            {"images": ["img3.jpg", "img2.jpg"], "sentence": "d", "label": "True"}]
    path = write(images, "nlvr.json", rows)
    collate = LabelledImagesCollate(text_processor, NLVR2_IMAGE_KEYS)

    substitute = load_nlvr2_dataset([path], str(images), transform, on_unreadable="substitute")
    batch = collate([substitute[i] for i in range(4)])
    # entries 1 and 2 are replaced by entry 3 (their next readable one), with its label
    assert batch["index"].tolist() == [0, 3, 3, 3] and batch["label"].tolist() == [1, 1, 1, 1]
    assert batch["num_skipped"] == 2 + 1

    drop = load_nlvr2_dataset([path], str(images), transform, on_unreadable="drop")
    batch = collate([drop[i] for i in range(4)])  # left out (the training iterator pads)
    assert batch["index"].tolist() == [0, 3] and batch["num_skipped"] == 2
    assert collate([drop[1], drop[2]]) is None

    strict = load_nlvr2_dataset([path], str(images), transform, on_unreadable="error")
    with pytest.raises(UnreadableImageError, match="broken.jpg"):
        strict[1]


def test_ve_unreadable_image_is_counted(images, transform, text_processor):
    rows = [{"image": "broken", "sentence": "a", "label": 0},
            {"image": "img1", "sentence": "b", "label": 2}]
    ds = load_ve_dataset([write(images, "ve.json", rows)], str(images), transform, "drop")
    batch = LabelledImagesCollate(text_processor, VE_IMAGE_KEYS)([ds[0], ds[1]])
    assert batch["label"].tolist() == [2] and batch["num_skipped"] == 1


def test_missing_annotation_file_is_named(images, transform):
    with pytest.raises(AnnotationError, match=r"nowhere\.json does not exist"):
        load_ve_dataset([images / "nowhere.json"], str(images), transform)
