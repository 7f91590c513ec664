"""Dataset builders of SNLI-VE and NLVR2: registry names, typed defaults, all splits, the
synthetic demo's task files, evaluation of splits with unreadable images."""
import json

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from albef_plugin.config.loader import default_component_config
from albef_plugin.datasets import (DemoNLVR2Builder, DemoVEBuilder, NLVR2JsonBuilder,
                                   UnreadableImageError, VEJsonBuilder)
from albef_plugin.errors import UserError
from albef_plugin.metrics import AccuracyMetric, EvalContext
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


class AlwaysTrue(torch.nn.Module):
    """Eval-mode NLVR2 stand-in: predicts class 1 ("True") for every pair."""

    def forward(self, batch):
        return {"logits": torch.tensor([[0.0, 1.0]]).expand(batch["image0"].shape[0], 2)}


def _nlvr2_val(tmp_path, rows):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.new("RGB", (20, 20), (90 * i, 90, 200)).save(images / f"{i}.jpg")
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (tmp_path / "nlvr.json").write_text(json.dumps(rows))
    builder = NLVR2JsonBuilder(NLVR2JsonBuilder.make_config({
        "data_dir": str(tmp_path), "image_root": "images", "image_size": 16,
        "annotations": {"train": ["nlvr.json"], "val": ["nlvr.json"], "test": ["nlvr.json"]}}))
    context = EvalContext(split="val", dataset_name="albef_nlvr2_json", batch_size=2, num_workers=0,
                          collate_fn=builder.collate_fn("val"))
    return builder.build("val"), context


def test_evaluation_skips_and_counts_batches_whose_every_image_is_unreadable(tmp_path):
    good, bad = ["0.jpg", "1.jpg"], ["1.jpg", "corrupt.jpg"]
    rows = [{"images": good, "sentence": "a", "label": "True"},
            {"images": good, "sentence": "b", "label": "False"},
            {"images": bad, "sentence": "c", "label": "True"},       # batch 2: both entries
            {"images": ["corrupt.jpg", "0.jpg"], "sentence": "d", "label": "False"},  # unreadable
            {"images": good, "sentence": "e", "label": "True"}]
    val, context = _nlvr2_val(tmp_path, rows)
    values = AccuracyMetric().evaluate(AlwaysTrue(), val, context)
    # entries 0, 1 and 4 are scored (2 of 3 right); 2 and 3 are counted, their batch skipped
    assert values == {"accuracy": pytest.approx(200 / 3), "unreadable_samples": 2.0,
                      "skipped_batches": 1.0}


def test_evaluation_of_a_split_with_no_readable_image_is_one_clean_error(tmp_path):
    rows = [{"images": ["0.jpg", "corrupt.jpg"], "sentence": s, "label": "True"} for s in "abc"]
    val, context = _nlvr2_val(tmp_path, rows)
    with pytest.raises(UnreadableImageError, match=r"every one of the 3 samples of split 'val' of "
                                                   r"dataset 'albef_nlvr2_json' has an unreadable"):
        AccuracyMetric().evaluate(AlwaysTrue(), val, context)
    assert issubclass(UnreadableImageError, UserError)  # one `error:` line from the command line


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
