import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from albef_plugin.config.loader import default_component_config
from albef_plugin.datasets import (DemoPretrainBuilder, DemoRetrievalBuilder, PretrainDataset,
                                   PretrainJsonBuilder, RetrievalEvalDataset, RetrievalJsonBuilder,
                                   RetrievalTrainDataset)
from albef_plugin.datasets.base import BaseDatasetBuilder, check_split_roles
from albef_plugin.datasets.synthetic import world_is_complete
from albef_plugin.processors import RandAugment
from albef_plugin.registry import registry

BUILDERS = [PretrainJsonBuilder, RetrievalJsonBuilder, DemoPretrainBuilder, DemoRetrievalBuilder]
TINY = {"num_train": 6, "num_val": 3, "num_test": 2, "image_size": 48}


@pytest.mark.parametrize("cls", BUILDERS)
def test_registered_under_its_name_with_typed_yaml_defaults(cls):
    assert registry.get_builder_class(cls.name) is cls
    assert cls.config_path() is not None
    cfg = default_component_config(cls)  # the run-config loader's merge: fails on unknown YAML keys
    assert OmegaConf.to_container(cfg)["data_dir"] == "${env.data_dir}"  # filled from the run config
    assert cfg.processors.text.type == "bert_text"


def test_demo_aliases():
    assert registry.get_builder_class("synthetic_pretrain") is DemoPretrainBuilder
    assert registry.get_builder_class("synthetic_retrieval") is DemoRetrievalBuilder


def test_make_config_resolves_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ALBEF_DATA_DIR", str(tmp_path))
    assert RetrievalJsonBuilder.make_config().data_dir == str(tmp_path)
    assert RetrievalJsonBuilder.make_config({"data_dir": "/elsewhere"}).data_dir == "/elsewhere"


def test_retrieval_json_builder_builds_all_splits(write_json, image_dir, tmp_path):
    write_json("re_train.json", [{"image": f"img{i}.jpg", "caption": f"caption {i}", "image_id": i // 2}
                                 for i in range(6)])
    write_json("re_val.json", [{"image": f"img{i}.jpg", "caption": [f"a {i}", f"b {i}"]} for i in range(3)])
    cfg = RetrievalJsonBuilder.make_config({
        "data_dir": str(tmp_path), "image_root": "images", "image_size": 16,
        "annotations": {"train": ["re_train.json"], "val": ["re_val.json"], "test": ["re_val.json"]}})
    builder = RetrievalJsonBuilder(cfg)
    train = builder.build("train")
    assert isinstance(train, RetrievalTrainDataset) and len(train) == 6
    batch = next(iter(DataLoader(train, batch_size=4, collate_fn=builder.collate_fn("train"))))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image_id"].tolist() == [0, 0, 1, 1]
    val = builder.build("val")
    assert isinstance(val, RetrievalEvalDataset) and val.img2txt == [[0, 1], [2, 3], [4, 5]]
    eval_batch = builder.collate_fn("val")([val[0], val[1]])
    assert eval_batch["image"].shape == (2, 3, 16, 16)


def test_builder_errors_name_the_config_key(tmp_path):
    builder = PretrainJsonBuilder(PretrainJsonBuilder.make_config({"data_dir": str(tmp_path)}))
    with pytest.raises(ValueError, match=r"dataset_config\.albef_pretrain_json\.annotations\.train "
                                         r"lists no annotation files"):
        builder.build("train")
    with pytest.raises(ValueError, match="unknown split 'dev'; its splits are train, val, test"):
        builder.build("dev")
    typo = PretrainJsonBuilder.make_config(
        {"data_dir": str(tmp_path), "processors": {"train_image": {"params": {"hflp": False}}}})
    with pytest.raises(ValueError, match=r"processors\.train_image\.params\.hflp.*'hflip'"):
        PretrainJsonBuilder(typo).image_processor("train")
    with pytest.raises(ValueError, match="on_unreadable"):
        PretrainJsonBuilder(PretrainJsonBuilder.make_config({"on_unreadable": "ignore"}))


def test_demo_pretrain_prepares_its_world_once(tmp_path):
    cfg = DemoPretrainBuilder.make_config({"data_dir": str(tmp_path), "image_size": 32, "synthetic": TINY})
    builder = DemoPretrainBuilder(cfg)
    world = builder.world_dir()
    assert world.parent == tmp_path / "synthetic" and not world.exists()
    builder.prepare()
    assert world_is_complete(world, builder.world_spec())
    done_mtime = (world / "DONE.json").stat().st_mtime_ns
    DemoPretrainBuilder(cfg).prepare()  # idempotent
    assert (world / "DONE.json").stat().st_mtime_ns == done_mtime
    train = builder.build("train")
    assert isinstance(train, PretrainDataset) and len(train) == 6
    torch.manual_seed(0)
    batch = builder.collate_fn("train")([train[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32) and batch["num_skipped"] == 0
    test = builder.build("test")
    assert len(test) == 2 and len(test.texts) == 2 * 6
    # another seed is another world, in another folder
    other = DemoPretrainBuilder(DemoPretrainBuilder.make_config(
        {"data_dir": str(tmp_path), "synthetic": {**TINY, "seed": 1}}))
    assert other.world_dir() != world


def test_demo_retrieval_generates_on_build_when_not_distributed(tmp_path):
    builder = DemoRetrievalBuilder(DemoRetrievalBuilder.make_config(
        {"data_dir": str(tmp_path), "image_size": 32, "synthetic": TINY}))
    train = builder.build("train")  # prepare() was not called: single process generates it
    assert isinstance(train, RetrievalTrainDataset) and len(train) == 6 * 6  # 6 captions per image
    assert sorted(set(train.image_ids)) == list(range(6))


def test_demo_synthetic_parameters_are_checked(tmp_path):
    builder = DemoPretrainBuilder(DemoPretrainBuilder.make_config(
        {"data_dir": str(tmp_path), "synthetic": {"max_objects": 5}}))
    with pytest.raises(ValueError, match=r"dataset_config\.demo_pretrain\.synthetic.*max_objects"):
        builder.prepare()


@pytest.mark.parametrize("cls", [DemoPretrainBuilder, DemoRetrievalBuilder])
def test_demo_augmentation_keeps_colour_words_true(cls, tmp_path):
    proc = cls(cls.make_config({"data_dir": str(tmp_path)})).image_processor("train")
    (randaugment,) = [t for t in proc.transform.transforms if isinstance(t, RandAugment)]
    # per-channel AutoContrast / Equalize recolour the flat synthetic images
    assert not {"AutoContrast", "Equalize"} & set(randaugment.ops)
    assert {"Rotate", "ShearX", "Brightness"} <= set(randaugment.ops)


# ------------------------------------------------------------------ named splits
class GroundingLike(RetrievalJsonBuilder):
    """A builder declaring grounding's splits: val, testA, testB (and train)."""

    name = "grounding_like"
    split_roles = {"train": "train", "val": "val", "testA": "test", "testB": "test"}


def test_builders_declare_train_val_test_by_default():
    for cls in BUILDERS:
        assert cls(cls.make_config()).splits() == {"train": "train", "val": "val", "test": "test"}


def test_named_splits_and_their_roles(write_json, image_dir, tmp_path):
    write_json("re_val.json", [{"image": f"img{i}.jpg", "caption": [f"a {i}"]} for i in range(3)])
    builder = GroundingLike(RetrievalJsonBuilder.make_config({"data_dir": str(tmp_path),
                                                              "image_root": "images", "image_size": 16}))
    assert builder.splits() == {"train": "train", "val": "val", "testA": "test", "testB": "test"}
    assert [builder.split_role(s) for s in ("train", "val", "testA")] == ["train", "val", "test"]
    # an evaluation split gets the eval transform (no augmentation), train the train one
    assert type(builder.image_processor("testA")).__name__ == "ImageEvalProcessor"
    assert type(builder.image_processor("train")).__name__ == "ImageTrainProcessor"
    assert type(builder.collate_fn("testB")).__name__ == "EvalImageCollate"
    with pytest.raises(ValueError, match="unknown split 'test'; its splits are train, val, testA, testB"):
        builder.build("test")


def test_split_declarations_are_checked():
    assert check_split_roles("vqa", {"train": "train", "test": "test"}) == {"train": "train", "test": "test"}
    with pytest.raises(ValueError, match="Dataset 'vqa' declares split 'dev' with role 'validation'"):
        check_split_roles("vqa", {"dev": "validation"})
    with pytest.raises(ValueError, match="split names are non-empty and contain no '/'"):
        check_split_roles("vqa", {"test/dev": "test"})
    assert BaseDatasetBuilder.split_roles["val"] == "val"
    with pytest.raises(TypeError):  # a shared read-only default: no builder can change another's
        BaseDatasetBuilder.split_roles["val"] = "test"
