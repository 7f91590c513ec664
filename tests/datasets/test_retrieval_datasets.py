import pytest
import torch
from torch.utils.data import DataLoader

from albef_plugin.datasets import (EvalImageCollate, ImageTextCollate, RetrievalEvalDataset,
                                   RetrievalTrainDataset, UnreadableImageError)


def test_re_train_image_ids_are_contiguous_in_first_seen_order(write_json, image_dir, eval_transform):
    rows = [{"image": "img3.jpg", "caption": "c0", "image_id": "coco_77"},
            {"image": "img1.jpg", "caption": "c1", "image_id": 5},
            {"image": "img3.jpg", "caption": "c2", "image_id": "coco_77"},
            {"image": "img1.jpg", "caption": "c3", "image_id": 5}]
    ds = RetrievalTrainDataset([write_json("re_train.json", rows)], str(image_dir), eval_transform)
    assert ds.image_ids == [0, 1, 0, 1]
    item = ds[2]
    assert item["text"] == "c2" and item["image_id"] == 0 and item["image"].shape == (3, 16, 16)


def test_re_eval_index_maps(write_json, image_dir, eval_transform, text_processor):
    rows = [{"image": "img0.jpg", "caption": ["A Dog.", "a puppy"]},
            {"image": "img1.jpg", "caption": ["one cat"]},
            {"image": "img2.jpg", "caption": ["x", "y", "z"]}]
    ds = RetrievalEvalDataset([write_json("re_eval.json", rows)], str(image_dir), eval_transform,
                              text_processor)
    assert len(ds) == 3
    assert ds.texts == ["a dog", "a puppy", "one cat", "x", "y", "z"]  # pre_caption applied
    assert ds.img2txt == [[0, 1], [2], [3, 4, 5]]
    assert ds.txt2img == [0, 0, 1, 2, 2, 2]
    for image_index, text_indices in enumerate(ds.img2txt):
        assert all(ds.txt2img[t] == image_index for t in text_indices)
    assert ds.text_processor is text_processor
    item = ds[2]
    assert item["index"] == 2 and item["image"].shape == (3, 16, 16)
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=EvalImageCollate())))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["index"].tolist() == [0, 1]


def test_unreadable_eval_image_is_an_error(write_json, image_dir, eval_transform, text_processor):
    ds = RetrievalEvalDataset([write_json("e.json", [{"image": "img0.jpg", "caption": ["c"]}])],
                              str(image_dir), eval_transform, text_processor)
    (image_dir / "img0.jpg").unlink()  # gone after the start-up check
    with pytest.raises(UnreadableImageError, match="img0.jpg.*cannot skip"):
        ds[0]


def test_training_collate_builds_the_batch_contract(write_json, image_dir, eval_transform, text_processor):
    rows = [{"image": f"img{i}.jpg", "caption": f"A caption, number {i}!", "image_id": i % 2}
            for i in range(4)]
    ds = RetrievalTrainDataset([write_json("t.json", rows)], str(image_dir), eval_transform)
    batch = ImageTextCollate(text_processor)([ds[i] for i in range(4)])
    assert set(batch) == {"image", "input_ids", "attention_mask", "image_id", "num_skipped"}
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[0] == 4 and (batch["input_ids"][:, 0] == text_processor.cls_token_id).all()
    assert batch["image_id"].dtype == torch.long and batch["image_id"].tolist() == [0, 1, 0, 1]
    assert batch["num_skipped"] == 0
    assert ImageTextCollate(text_processor)([None, None]) is None
