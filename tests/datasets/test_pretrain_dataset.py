import logging

import pytest
import torch
from torch.utils.data import DataLoader

from albef_plugin.datasets import ImageTextCollate, PretrainDataset, UnreadableImageError


def _entries(n: int = 6):
    return [{"image": f"img{i}.jpg", "caption": f"caption number {i}"} for i in range(n)]


def _dataset(write_json, image_dir, entries, **kwargs):
    return PretrainDataset([write_json("pretrain.json", entries)], str(image_dir),
                           transform=lambda img: torch.tensor(img.getpixel((0, 0)), dtype=torch.float)
                           .view(3, 1, 1).expand(3, 2, 2).clone(), **kwargs)


def test_items_and_shared_image_ids(write_json, image_dir):
    entries = _entries(3) + [{"image": "img0.jpg", "caption": "another caption of image 0"}]
    ds = _dataset(write_json, image_dir, entries)
    assert len(ds) == 4
    item = ds[1]
    assert item["text"] == "caption number 1" and item["image"].shape == (3, 2, 2)
    assert ds.image_ids == [0, 1, 2, 0]  # same path -> same id
    assert item["num_skipped"] == 0


def test_absolute_paths_ignore_image_root(write_json, image_dir):
    ds = PretrainDataset([write_json("p.json", [{"image": str(image_dir / "img2.jpg"), "caption": "c"}])],
                         "/nonexistent/root", transform=lambda img: torch.zeros(3, 1, 1))
    assert ds[0]["text"] == "c"


def test_caption_list_draws_one_caption_per_access(write_json, image_dir):
    captions = ["first caption", "second caption", "third caption"]
    ds = _dataset(write_json, image_dir, [{"image": "img0.jpg", "caption": captions}])
    torch.manual_seed(0)
    seen = {ds[0]["text"] for _ in range(40)}
    assert seen == set(captions)


def test_missing_and_corrupt_images_are_substituted_warned_once_and_counted(
        write_json, image_dir, corrupt, caplog):
    (image_dir / "img1.jpg").unlink()
    corrupt(image_dir / "img3.jpg")
    ds = _dataset(write_json, image_dir, _entries(6))
    with caplog.at_level(logging.WARNING, logger="albef_plugin.datasets.images"):
        item = ds[1]
        ds[1]
    assert item["text"] == "caption number 2" and item["num_skipped"] == 1  # the next readable one
    warnings = [r for r in caplog.records if "img1.jpg" in r.getMessage()]
    assert len(warnings) == 1, "one warning per file, not per access"
    assert ds[3]["num_skipped"] == 1


@pytest.mark.parametrize("num_workers", [0, 2])
def test_training_loop_goes_on_and_batches_count_skipped_files(
        write_json, image_dir, corrupt, text_processor, num_workers):
    (image_dir / "img1.jpg").unlink()
    corrupt(image_dir / "img4.jpg")
    ds = _dataset(write_json, image_dir, _entries(6))
    loader = DataLoader(ds, batch_size=3, num_workers=num_workers,
                        collate_fn=ImageTextCollate(text_processor))
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [3, 3]  # substituted: full batches
    assert sum(b["num_skipped"] for b in batches) == 2
    assert all(b["input_ids"].shape[0] == 3 for b in batches)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_drop_mode_shrinks_the_batch_and_counts(write_json, image_dir, text_processor, num_workers):
    (image_dir / "img0.jpg").unlink()
    ds = _dataset(write_json, image_dir, _entries(6), on_unreadable="drop")
    assert ds[0] is None
    loader = DataLoader(ds, batch_size=3, num_workers=num_workers,
                        collate_fn=ImageTextCollate(text_processor))
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [2, 3]
    assert [b["num_skipped"] for b in batches] == [1, 0]
    assert batches[0]["image_id"].tolist() == [1, 2]


def test_error_mode_and_hopeless_image_root(write_json, image_dir, tmp_path):
    (image_dir / "img0.jpg").unlink()
    strict = _dataset(write_json, image_dir, _entries(6), on_unreadable="error")
    with pytest.raises(UnreadableImageError, match="img0.jpg"):
        strict[0]
    wrong_root = PretrainDataset([write_json("p.json", _entries(6))], str(tmp_path / "wrong"),
                                 transform=lambda img: img)
    with pytest.raises(UnreadableImageError, match="image root is probably wrong"):
        wrong_root[0]
    with pytest.raises(ValueError, match="on_unreadable='skip'"):
        _dataset(write_json, image_dir, _entries(1), on_unreadable="skip")
