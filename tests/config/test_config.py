"""Config precedence, includes, interpolation and error messages."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
from omegaconf import OmegaConf

from albef_plugin.config import ConfigError, build_config
from albef_plugin.config.loader import load_yaml
from albef_plugin.registry import registry
from albef_plugin.run import save_resolved_config

FIXTURES = Path(__file__).parent / "fixtures"
PROJECT = str(FIXTURES / "project.yaml")


@dataclass
class _Block:
    width: int = 4


@registry.register_model("cfg_toy_model", aliases=("cfg_toy_alias",), override=True)
class CfgToyModel:
    @dataclass
    class Config:
        hidden: int = 8
        depth: int = 1
        dropout: float = 0.0
        block: _Block = field(default_factory=_Block)
        pretrained: Optional[str] = None

    @classmethod
    def config_path(cls):
        return str(FIXTURES / "toy_model.yaml")


@registry.register_builder("cfg_toy_data", override=True)
class CfgToyData:
    @dataclass
    class Config:
        root: str = "?"
        size: int = 1
        split_ratio: float = 0.5

    @classmethod
    def config_path(cls):
        return str(FIXTURES / "toy_dataset.yaml")


def build(*opts):
    return build_config(list(opts), import_plugins=False)


def test_precedence_defaults_model_dataset_file_cli(monkeypatch, tmp_path):
    monkeypatch.setenv("ALBEF_DATA_DIR", str(tmp_path / "d"))
    cfg = build(f"config={PROJECT}", "training.batch_size=3")
    toy = cfg.model_config.cfg_toy_model
    assert toy.dropout == 0.2          # model defaults YAML over the dataclass
    assert toy.depth == 3              # included file over model defaults
    assert toy.hidden == 32            # the config file over its include
    assert toy.block.width == 4        # dataclass default survives
    assert cfg.training.max_updates == 200
    assert cfg.training.batch_size == 3  # command line over everything
    assert cfg.training.seed == 42       # framework default
    data = cfg.dataset_config.cfg_toy_data
    assert data.size == 7 and data.split_ratio == 0.5
    assert data.root == f"{tmp_path}/d/toy"  # ${env.data_dir} from ${oc.env:ALBEF_DATA_DIR,...}
    assert cfg.config == str(Path(PROJECT).resolve())


def test_model_and_datasets_from_command_line_without_file():
    cfg = build("model=cfg_toy_alias", "datasets=cfg_toy_data", "model_config.cfg_toy_model.hidden=5")
    assert cfg.model == "cfg_toy_model"  # aliases resolve to the registered name
    assert cfg.model_config.cfg_toy_model.hidden == 5
    assert cfg.dataset_config.cfg_toy_data.size == 100


def test_command_line_model_overrides_file_model():
    @registry.register_model("cfg_toy_model_b", override=True)
    class B:
        @dataclass
        class Config:
            other: int = 1

    cfg = build(f"config={PROJECT}", "model=cfg_toy_model_b")
    assert cfg.model == "cfg_toy_model_b"
    assert cfg.model_config.cfg_toy_model_b.other == 1


@pytest.mark.parametrize("opt, needle", [
    ("training.max_updatez=3", "'training.max_updatez'.*Did you mean 'training.max_updates'"),
    ("model_config.cfg_toy_model.block.widht=2",
     "'model_config.cfg_toy_model.block.widht'.*Did you mean 'model_config.cfg_toy_model.block.width'"),
    ("dataset_config.cfg_toy_data.sise=2", "Did you mean 'dataset_config.cfg_toy_data.size'"),
    ("model_config.cfg_toy_modle.hidden=2", "model_config.'cfg_toy_modle'.*Did you mean"),
    ("checkpoint.reset.optimiser=true", "Did you mean 'checkpoint.reset.optimizer'"),
])
def test_unknown_keys_fail_with_full_path_and_suggestion(opt, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        build(f"config={PROJECT}", opt)
    assert "command line" in str(info.value)


def test_unknown_key_in_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: cfg_toy_model\ndatasets: cfg_toy_data\ntraining:\n  bach_size: 4\n")
    with pytest.raises(ConfigError, match=r"training.bach_size.*bad.yaml.*training.batch_size"):
        build(f"config={bad}")


def test_wrong_type_is_reported():
    with pytest.raises(ConfigError, match="training.max_updates"):
        build(f"config={PROJECT}", "training.max_updates=many")


def test_unknown_model_lists_close_names():
    with pytest.raises(ConfigError, match="Did you mean 'cfg_toy_model'"):
        build("model=cfg_toy_mdel", "datasets=cfg_toy_data")


def test_missing_model_or_dataset_says_how_to_set_it():
    with pytest.raises(ConfigError, match="model=<name>"):
        build("datasets=cfg_toy_data")
    with pytest.raises(ConfigError, match="datasets=<name>"):
        build("model=cfg_toy_model")


def test_missing_config_file_and_bad_option():
    with pytest.raises(ConfigError, match="Config file not found.*nope.yaml"):
        build("config=nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        build("training.max_updates")


def test_include_cycle_and_missing_include(tmp_path):
    (tmp_path / "a.yaml").write_text("includes: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("includes: [a.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("includes: [missing.yaml]\n")
    with pytest.raises(ConfigError, match="missing.yaml.*not found"):
        load_yaml(tmp_path / "c.yaml")


def test_resolved_config_is_written(tmp_path):
    cfg = build(f"config={PROJECT}", f"env.save_dir={tmp_path}/run")
    path = save_resolved_config(cfg)
    assert path == tmp_path / "run" / "config.yaml"
    reloaded = OmegaConf.load(path)
    assert reloaded.model_config.cfg_toy_model.hidden == 32
    assert "${" not in path.read_text()  # interpolations are resolved


def test_user_dir_plugin_registers_a_model(tmp_path):
    package = tmp_path / "my_albef_plugin_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from dataclasses import dataclass\n"
        "from albef_plugin.registry import registry\n"
        "@registry.register_model('user_dir_model', override=True)\n"
        "class UserModel:\n"
        "    @dataclass\n"
        "    class Config:\n"
        "        size: int = 11\n"
    )
    from albef_plugin.plugins import import_user_dir

    assert import_user_dir(str(package)) == "my_albef_plugin_pkg"
    assert registry.get_model_class("user_dir_model").Config().size == 11
    with pytest.raises(ImportError, match="neither an existing path nor an importable module"):
        import_user_dir("no_such_plugin_module_xyz")


DEMO_PRETRAIN = Path(__file__).resolve().parents[2] / "projects/albef/configs/demo/pretrain.yaml"


def test_list_element_override_by_index():
    cfg = build_config([f"config={DEMO_PRETRAIN}", "evaluation.metrics.0.params.k_test=3"])
    assert cfg.evaluation.metrics[0].type == "retrieval"
    assert cfg.evaluation.metrics[0].params.k_test == 3


@pytest.mark.parametrize("opt, needle", [
    ("evaluation.metrics.5.params.k_test=3", r"'evaluation.metrics.5' is not an element of a list of 1"),
    ("evaluation.metrix.0.k_test=3", r"Unknown config key 'evaluation.metrix'"),
])
def test_bad_list_element_override_is_a_config_error(opt, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config([f"config={DEMO_PRETRAIN}", opt])
