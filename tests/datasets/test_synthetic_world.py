import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from albef_plugin.datasets import PretrainDataset, RetrievalEvalDataset, RetrievalTrainDataset
from albef_plugin.datasets.synthetic import WorldSpec, generate_scenes, generate_world, load_scenes
from albef_plugin.datasets.synthetic import generate as generate_module
from albef_plugin.datasets.synthetic.__main__ import main as cli_main
from albef_plugin.datasets.synthetic.world import BACKGROUNDS, COLOURS

SMALL = WorldSpec(num_train=8, num_val=4, num_test=4, seed=11, image_size=64)


def test_same_seed_gives_identical_captions_and_image_bytes(tmp_path):
    a = generate_world(tmp_path / "a", SMALL)
    b = generate_world(tmp_path / "b", SMALL)
    assert (a / "scenes.json").read_bytes() == (b / "scenes.json").read_bytes()
    images = sorted(p.relative_to(a) for p in a.glob("images/*/*.jpg"))
    assert len(images) == 16
    assert all((a / p).read_bytes() == (b / p).read_bytes() for p in images)
    other = generate_scenes(WorldSpec(num_train=8, num_val=4, num_test=4, seed=12, image_size=64))
    assert [s.captions for s in other["train"]] != [s["captions"] for s in load_scenes(a)[:8]]


def test_captions_name_every_object_and_avoid_left_right(tiny_world):
    for scene in load_scenes(tiny_world):
        assert len(scene["captions"]) >= 5
        for caption in scene["captions"]:
            assert not re.search(r"\b(left|right)\b", caption), caption
            for obj in scene["objects"]:
                assert obj["colour"] in caption and obj["kind"][:4] in caption, (caption, obj)
        assert len(set(scene["captions"])) == len(scene["captions"])


def test_scene_boxes_are_inside_the_image_and_recoverable_from_pixels(tiny_world):
    for scene in load_scenes(tiny_world):
        image = np.asarray(Image.open(tiny_world / scene["image"]).convert("RGB"), dtype=np.float32)
        height, width = scene["height"], scene["width"]
        assert image.shape == (height, width, 3)
        assert 1 <= len(scene["objects"]) <= 3
        top, bottom = (np.array(c, dtype=np.float32) for c in BACKGROUNDS[scene["background"]])
        background = top + (bottom - top) * np.linspace(0, 1, height)[:, None, None]
        foreground = np.abs(image - background).sum(-1) > 60  # (H, W): not the gradient
        for obj in scene["objects"]:
            x, y, w, h = obj["bbox"]
            assert 0 <= x and 0 <= y and w > 0 and h > 0
            assert x + w <= width and y + h <= height
            # the foreground pixels near the box (objects are >= 2 px apart) span the box
            x0, y0 = max(0, x - 2), max(0, y - 2)
            ys, xs = np.nonzero(foreground[y0: y + h + 2, x0: x + w + 2])
            found = (x0 + xs.min(), y0 + ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert np.abs(np.array(found) - np.array(obj["bbox"])).max() <= 2, (found, obj)
            # and the pixel at the centre of a filled shape has the object's colour
            cx, cy = (int(v) for v in obj["center"])
            if obj["kind"] != "ring":
                assert np.abs(image[cy, cx] - np.array(COLOURS[obj["colour"]])).sum() < 60, obj


def test_json_files_parse_with_the_datasets(tiny_world, text_processor, eval_transform):
    root = str(tiny_world)
    pretrain = PretrainDataset([tiny_world / "pretrain.json"], root, eval_transform)
    assert len(pretrain) == 12 and pretrain[0]["image"].shape == (3, 16, 16)
    re_train = RetrievalTrainDataset([tiny_world / "re_train.json"], root, eval_transform)
    assert len(re_train) == 12 * 6 and sorted(set(re_train.image_ids)) == list(range(12))
    for split, count in (("val", 6), ("test", 4)):
        evaluation = RetrievalEvalDataset([tiny_world / f"re_{split}.json"], root, eval_transform,
                                          text_processor)
        assert len(evaluation) == count and len(evaluation.txt2img) == 6 * count
        assert evaluation[count - 1]["index"] == count - 1
    official = json.loads((tiny_world / "pretrain.json").read_text())
    assert set(official[0]) == {"image", "caption"} and not Path(official[0]["image"]).is_absolute()


def test_generation_is_idempotent_and_regenerates_on_mismatch(tmp_path):
    folder = generate_world(tmp_path / "w", SMALL)
    stamp = (folder / "DONE.json").stat().st_mtime_ns
    start = time.perf_counter()
    generate_world(folder, SMALL)
    assert time.perf_counter() - start < 0.5
    assert (folder / "DONE.json").stat().st_mtime_ns == stamp
    bigger = WorldSpec(num_train=9, num_val=4, num_test=4, seed=11, image_size=64)
    generate_world(folder, bigger)  # same folder, other parameters: replaced
    assert len(load_scenes(folder)) == 17
    assert bigger.folder_name() != SMALL.folder_name()


def test_interrupted_generation_leaves_no_half_world(tmp_path, monkeypatch):
    def fail(folder, spec):
        (folder / "images").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(generate_module, "_write_world", fail)
    with pytest.raises(KeyboardInterrupt):
        generate_world(tmp_path / "w", SMALL)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a synthetic world"):
        generate_world(tmp_path / "mine", SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_invalid_parameters():
    with pytest.raises(ValueError, match="max_objects"):
        WorldSpec(max_objects=4)
    with pytest.raises(ValueError, match="image_size=8"):
        WorldSpec(image_size=8)


def test_generation_time_for_a_small_world(tmp_path):
    spec = WorldSpec(num_train=100, num_val=10, num_test=10, image_size=128)
    start = time.perf_counter()
    generate_world(tmp_path / "timed", spec)
    seconds = time.perf_counter() - start
    # measured ~1.5-3 ms per image on one core (about 2-4 s per 1000 images); loose bound
    assert seconds < 8.0, f"{seconds:.2f} s for 120 images"


def test_command_line(tmp_path):
    out = tmp_path / "cli"
    assert cli_main(["--out", str(out), "--num-train", "4", "--num-val", "2", "--num-test", "2",
                     "--image-size", "48", "--tasks"]) == 0
    assert json.loads((out / "DONE.json").read_text())["counts"] == {"train": 4, "val": 2, "test": 2}
    assert (out / "tasks" / "vqa_train.json").is_file()
    with pytest.raises(SystemExit):
        cli_main(["--out", str(out), "--max-objects", "9"])
