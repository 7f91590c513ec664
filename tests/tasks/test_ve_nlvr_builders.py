"""Dataset builders of SNLI-VE and NLVR2: registry names, typed defaults, all splits, the
synthetic demo's task files."""
import json

import pytest
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from albef_plugin.config.loader import default_component_config
from albef_plugin.datasets import (DemoNLVR2Builder, DemoVEBuilder, NLVR2JsonBuilder,
                                   VEJsonBuilder)
from albef_plugin.datasets.synthetic.tasks import TASKS_VERSION
from albef_plugin.registry import registry

BUILDERS = [VEJsonBuilder, NLVR2JsonBuilder, DemoVEBuilder, DemoNLVR2Builder]
TINY_WORLD = {"num_train": 8, "num_val": 4, "num_test": 4, "image_size": 48}


@pytest.mark.parametrize("cls", BUILDERS)
def test_registered_with_typed_yaml_defaults(cls):
    assert registry.get_builder_class(cls.name) is cls
    cfg = default_component_config(cls)  # fails on a YAML key the Config does not declare
    assert OmegaConf.to_container(cfg)["data_dir"] == "${env.data_dir}"
    assert cfg.processors.text.params.add_sep is False


def test_aliases():
    assert registry.get_builder_class("synthetic_ve") is DemoVEBuilder
    assert registry.get_builder_class("synthetic_nlvr2") is DemoNLVR2Builder


def test_nlvr2_json_builder_builds_every_split_and_eval_drops_unreadable_entries(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (70 * i, 90, 200 - 60 * i)).save(images / f"{i}.jpg")
    rows = [{"images": ["0.jpg", "1.jpg"], "sentence": "a", "label": "True"},
            {"images": ["1.jpg", "gone.jpg"], "sentence": "b", "label": "False"},
            {"images": ["2.jpg", "0.jpg"], "sentence": "c", "label": "False"}]
    (tmp_path / "nlvr.json").write_text(json.dumps(rows))
    builder = NLVR2JsonBuilder(NLVR2JsonBuilder.make_config({
        "data_dir": str(tmp_path), "image_root": "images", "image_size": 16,
        "annotations": {"train": ["nlvr.json"], "val": ["nlvr.json"], "test": ["nlvr.json"]}}))
    train = builder.build("train")
    batch = next(iter(DataLoader(train, batch_size=3, collate_fn=builder.collate_fn("train"))))
    assert batch["image0"].shape == (3, 3, 16, 16) and batch["num_skipped"] == 1  # substituted
    assert batch["index"].tolist() == [0, 2, 2]
    val = builder.build("val")
    batch = next(iter(DataLoader(val, batch_size=3, collate_fn=builder.collate_fn("val"))))
    assert batch["index"].tolist() == [0, 2] and batch["label"].tolist() == [1, 0]
    assert batch["num_skipped"] == 1  # dropped and counted, never scored twice


def test_ve_json_builder_names_the_key_of_a_missing_split(tmp_path):
    builder = VEJsonBuilder(VEJsonBuilder.make_config({"data_dir": str(tmp_path)}))
    with pytest.raises(ValueError, match=r"dataset_config\.albef_ve_json\.annotations\.test"):
        builder.build("test")


@pytest.mark.parametrize("cls, stem, keys", [(DemoVEBuilder, "ve", {"image"}),
                                             (DemoNLVR2Builder, "nlvr2", {"image0", "image1"})])
def test_demo_builders_write_the_world_and_its_task_files(tmp_path, cls, stem, keys):
    builder = cls(cls.make_config({"data_dir": str(tmp_path), "image_size": 32,
                                   "synthetic": TINY_WORLD}))
    builder.prepare()
    tasks = builder.world_dir() / "tasks"
    assert json.loads((tasks / f"{builder.task}.done").read_text())["version"] == TASKS_VERSION
    for split in ("train", "val", "test"):
        files = builder.annotation_files(split)
        assert files == [str(tasks / f"{stem}_{split}.json")]
        dataset = builder.build(split)
        assert len(dataset) > 0
    batch = builder.collate_fn("test")([dataset[0], dataset[1]])
    assert keys <= set(batch) and batch[sorted(keys)[0]].shape == (2, 3, 32, 32)
    # stale files (an older generator) are rewritten; current ones are kept
    (tasks / f"{builder.task}.done").write_text(json.dumps({"version": TASKS_VERSION - 1}))
    (tasks / f"{stem}_train.json").write_text("[]")
    builder.prepare()
    assert json.loads((tasks / f"{stem}_train.json").read_text()) != []
