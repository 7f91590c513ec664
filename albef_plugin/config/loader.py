"""Build a run's configuration from ``config=<file>`` plus dotlist overrides.

Precedence, low to high:

1. the typed schema (``schema.RootConfig``) and ``albef_plugin/configs/defaults.yaml``;
2. the model's defaults (its ``Config`` dataclass, then its ``config_path()`` YAML);
3. each dataset builder's defaults, likewise;
4. the ``config=`` file, after the files it lists under ``includes:`` (paths relative to
   the including file; the including file wins);
5. command-line ``key=value`` overrides; a key with a list index (e.g.
   ``evaluation.metrics.0.params.k_test=16``) changes that element of the merged list.

``model=`` and ``datasets=`` may come from the command line or from the config file;
plugins (``env.user_dir`` and the ``albef_plugin.plugins`` entry points) are imported
before the model and dataset defaults are looked up. Every node is typed, so an
unknown or misspelled key at any depth fails here, naming its full path, where it
came from and the closest valid key.
"""
from __future__ import annotations

import difflib
import logging
import re
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from albef_plugin.config.schema import TEST_WEIGHTS, RootConfig
from albef_plugin.errors import UserError
from albef_plugin.registry import DATASET_BUILDERS, MODELS, UnknownNameError

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent
DEFAULTS_YAML = PACKAGE_DIR / "configs" / "defaults.yaml"
# Where an include that is not found next to the including file is looked for.
INCLUDE_SEARCH_PATH = (Path.cwd(), PACKAGE_DIR.parent, PACKAGE_DIR / "configs")


class ConfigError(UserError, ValueError):
    """A configuration problem the user can fix; the message says what and how."""


class UnknownKeyError(ConfigError, KeyError):
    """A key that the component reading that config section does not know."""

    def __str__(self) -> str:  # KeyError would repr() the message and quote it
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- parsing
def parse_opts(opts: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    """Split command-line options into the ``config=`` file and dotlist overrides."""
    config_file: Optional[str] = None
    dotlist: List[str] = []
    for opt in opts:
        if "=" not in opt:
            raise ConfigError(
                f"Cannot read option {opt!r}: options are key=value pairs, e.g. "
                f"config=projects/albef/configs/demo/pretrain.yaml training.max_updates=50"
            )
        key, value = opt.split("=", 1)
        key = key.lstrip("-")
        if key == "config":
            config_file = value
        elif key == "dataset":  # MMF accepts both spellings
            dotlist.append(f"datasets={value}")
        else:
            dotlist.append(f"{key}={value}")
    return config_file, dotlist


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (OmegaConf appends key / type lines), or its
    type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_list_override(item: str) -> bool:
    """``a.0.b=v``: a dotlist item that addresses a list element by index."""
    return any(part.isdigit() for part in item.split("=", 1)[0].split("."))


def _apply_list_overrides(cfg: DictConfig, items: Sequence[str]) -> None:
    """Set ``a.0.b=v`` items on the merged config. They cannot be merged as a dotlist:
    OmegaConf reads ``0`` there as a dict key, which does not merge into a list."""
    for item in items:
        key, value = item.split("=", 1)
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={value}"]))["value"]
        parts = key.split(".")
        node: Any = cfg
        for depth, part in enumerate(parts[:-1]):
            here = ".".join(parts[:depth + 1])
            if isinstance(node, ListConfig):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"Cannot set {key!r} (from the command line): {here!r} is "
                                      f"not an element of a list of {len(node)}; indices start at 0.")
                node = node[int(part)]
            elif isinstance(node, DictConfig) and part in node:
                node = node[part]
            else:
                raise ConfigError(f"Unknown config key {here!r} (from the command line).")
        try:
            OmegaConf.update(cfg, key, parsed, merge=True)
        except (OmegaConfBaseException, TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"Cannot set {key!r} (from the command line): {_first_line(exc)}") from None


def _find_include(name: str, including_file: Path) -> Path:
    candidates = [including_file.parent / name] + [root / name for root in INCLUDE_SEARCH_PATH]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"{including_file}: included file {name!r} not found (tried {tried}).")


def load_yaml(path: Path, _chain: Tuple[Path, ...] = ()) -> DictConfig:
    """Load a YAML config, merging its ``includes:`` first (the file itself wins)."""
    path = Path(path).resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"includes form a cycle: {cycle}")
    if not path.is_file():
        where = f" (included from {_chain[-1]})" if _chain else ""
        raise ConfigError(f"Config file not found: {path}{where}. Check the path given to config=.")
    try:
        node = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(node).__name__}.")
    includes = node.pop("includes", None) or []
    if isinstance(includes, str):
        includes = [includes]
    merged = OmegaConf.create()
    for name in includes:
        merged = OmegaConf.merge(merged, load_yaml(_find_include(str(name), path), (*_chain, path)))
    return OmegaConf.merge(merged, node)


# ------------------------------------------------------------------------- defaults
def default_component_config(cls: type) -> DictConfig:
    """A registered class's defaults: its ``Config`` dataclass, then its ``config_path()`` YAML.

    The result is typed (struct mode): unknown keys merged into it raise.
    """
    config_cls = getattr(cls, "Config", None)
    node = OmegaConf.structured(config_cls) if config_cls is not None else OmegaConf.create()
    config_path = cls.config_path() if hasattr(cls, "config_path") else None
    if config_path:
        yaml_node = OmegaConf.load(config_path)
        node = merge_checked(node, yaml_node, source=str(config_path))
    return node


# -------------------------------------------------------------------------- merging
def _close_key(full_key: str, root: Any) -> str:
    """'Did you mean' text for an unknown ``full_key`` given the node it was merged into."""
    parts = full_key.split(".")
    parent: Any = root
    for part in parts[:-1]:
        try:
            parent = parent[part] if isinstance(parent, DictConfig) else None
        except Exception:
            parent = None
        if parent is None:
            return ""
    if not isinstance(parent, DictConfig):
        return ""
    prefix = ".".join(parts[:-1])
    matches = difflib.get_close_matches(parts[-1], [str(k) for k in parent.keys()], n=1, cutoff=0.5)
    if not matches:
        valid = ", ".join(str(k) for k in parent.keys())
        return f" Valid keys under {prefix or 'the top level'}: {valid}."
    return f" Did you mean {'.'.join(filter(None, [prefix, matches[0]]))!r}?"


def merge_checked(base: DictConfig, other: Any, source: str, path_prefix: str = "") -> DictConfig:
    """``OmegaConf.merge`` that turns schema violations into a readable ConfigError."""
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as exc:
        full_key = f"{path_prefix}{exc.full_key}" if exc.full_key else path_prefix.rstrip(".")
        hint = _close_key(str(exc.full_key), base)
        raise ConfigError(f"Unknown config key {full_key!r} (from {source}).{hint}") from None
    except ValidationError as exc:
        full_key = f"{path_prefix}{exc.full_key}"
        message = str(exc.msg).splitlines()[0]  # omegaconf appends full_key / object_type lines
        raise ConfigError(f"Invalid value for {full_key!r} (from {source}): {message}") from None
    except (OmegaConfBaseException, TypeError) as exc:  # TypeError: a dict merged into a list
        raise ConfigError(f"Cannot merge config from {source}: {_first_line(exc)}") from None


def _select(node: Optional[DictConfig], key: str) -> Any:
    if node is None:
        return None
    return OmegaConf.select(node, key, default=None, throw_on_missing=False)


def _lookup(registry_: Any, name: str, key: str) -> type:
    try:
        return registry_.get(name)
    except UnknownNameError as exc:
        raise ConfigError(f"{key}={name!r}: {exc}") from None


def _dataset_names(value: Any) -> List[str]:
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [name.strip() for name in str(value).split(",") if name.strip()]


# ---------------------------------------------------------------------------- build
def build_config(opts: Optional[Sequence[str]] = None, *, import_plugins: bool = True) -> DictConfig:
    """The fully merged, validated and resolved configuration for ``opts``.

    Args:
        opts: command-line style options: ``config=<yaml>`` and ``key=value`` overrides.
        import_plugins: import built-in components, ``env.user_dir`` and entry-point
            plugins first (tests that register their own components may pass False).
    """
    config_file, dotlist = parse_opts(list(opts or []))
    list_overrides = [item for item in dotlist if _is_list_override(item)]
    overrides = OmegaConf.from_dotlist([item for item in dotlist if item not in list_overrides])
    user = load_yaml(Path(config_file)) if config_file else OmegaConf.create()
    user_source = f"config file {config_file}" if config_file else "config file"

    base = merge_checked(OmegaConf.structured(RootConfig), OmegaConf.load(DEFAULTS_YAML),
                          source=str(DEFAULTS_YAML))

    if import_plugins:
        from albef_plugin.plugins import setup_imports

        user_dir = _select(overrides, "env.user_dir") or _select(user, "env.user_dir") \
            or _select(base, "env.user_dir")
        setup_imports(user_dir or None)

    model_name = _select(overrides, "model") or _select(user, "model")
    datasets = _select(overrides, "datasets") or _select(user, "datasets")
    if not model_name:
        raise ConfigError("No model selected: pass model=<name> or set `model:` in the config= file. "
                          f"Known models: {', '.join(sorted(MODELS.names())) or '(none)'}.")
    if not datasets:
        raise ConfigError("No dataset selected: pass datasets=<name>[,<name>...] or set `datasets:` in "
                          f"the config= file. Known dataset builders: "
                          f"{', '.join(sorted(DATASET_BUILDERS.names())) or '(none)'}.")
    model_cls = _lookup(MODELS, str(model_name), "model")
    model_key = MODELS.canonical_name(str(model_name))
    dataset_keys = []
    component_defaults = OmegaConf.create({"model_config": {}, "dataset_config": {}})
    component_defaults.model_config[model_key] = default_component_config(model_cls)
    for name in _dataset_names(datasets):
        builder_cls = _lookup(DATASET_BUILDERS, name, "datasets")
        key = DATASET_BUILDERS.canonical_name(name)
        dataset_keys.append(key)
        component_defaults.dataset_config[key] = default_component_config(builder_cls)

    cfg = merge_checked(base, component_defaults, source="component defaults")
    _check_component_keys(user, model_key, dataset_keys, user_source)
    _check_component_keys(overrides, model_key, dataset_keys, "the command line")
    cfg = merge_checked(cfg, user, source=user_source)
    cfg = merge_checked(cfg, overrides, source="the command line")
    _apply_list_overrides(cfg, list_overrides)
    cfg.model = model_key
    cfg.datasets = ",".join(dataset_keys)
    cfg.config = str(Path(config_file).resolve()) if config_file else None

    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        missing_env = re.search(r"Environment variable '([^']+)' not found", str(exc))
        key = getattr(exc, "full_key", None) or "a config value"
        if missing_env:
            name = missing_env.group(1)
            raise ConfigError(f"environment variable {name} is not set ({key} reads it): export "
                              f"{name}=<value>, or set the key that reads it on the command line "
                              f"(e.g. env.data_dir=<folder> for ALBEF_DATA_DIR).") from None
        raise ConfigError(f"Cannot resolve an interpolation (${{...}}) of {key}: "
                          f"{_first_line(exc)}") from None
    cfg.evaluation.metrics = _checked_metrics(cfg.evaluation.metrics)
    OmegaConf.set_struct(cfg, True)
    validate_config(cfg, model_cls)
    return cfg


def _checked_metrics(metrics: Any) -> List[Any]:
    """``evaluation.metrics`` as ``{type, params}`` entries, each params checked against (and
    completed from) its metric's ``Config``, so a typo fails here rather than in the job."""
    import albef_plugin.metrics  # noqa: F401  (the built-in metrics; plugins were imported above)
    from albef_plugin.metrics.base import parse_metric_specs

    return [{"type": spec.type, "params": spec.params} for spec in parse_metric_specs(metrics)]


# ------------------------------------------------------------------------ validation
RUN_TYPES = ("train", "val", "test", "train_val", "train_test", "train_val_test")


def validate_config(cfg: DictConfig, model_cls: type) -> None:
    """Values the schema's types cannot check, at start-up instead of deep inside a run.

    Ranges of the training keys; the smallest batch the model can learn from (its class
    attribute ``min_batch_size_per_rank``: 2 for in-batch ITC / ITM negatives); the
    ``params`` of the optimizer and scheduler (through their ``check_params``).
    """
    if cfg.run_type not in RUN_TYPES:
        raise ConfigError(f"run_type={cfg.run_type!r}: expected one of {', '.join(RUN_TYPES)}.")
    training = cfg.training
    _at_least(training, "batch_size", 1)
    _at_least(training, "update_frequency", 1)
    _at_least(training, "num_workers", 0)
    for key in ("log_interval", "checkpoint_interval", "evaluation_interval"):
        _at_least(training, key, 0)
    if training.max_updates is not None:
        _at_least(training, "max_updates", 0, "(use null to train for training.max_epochs)")
    if training.max_epochs is not None:
        _at_least(training, "max_epochs", 1)
    _at_least(training.divergence, "window", 1, prefix="training.divergence")
    _at_least(training.divergence, "loss_spike_factor", 0, prefix="training.divergence")
    _at_least(training.divergence, "max_weight_norm_growth", 0, prefix="training.divergence")
    _at_least(cfg.evaluation, "batch_size", 1, prefix="evaluation")
    if cfg.evaluation.test_weights not in TEST_WEIGHTS:
        raise ConfigError(f"evaluation.test_weights={cfg.evaluation.test_weights!r}: expected "
                          f"{' or '.join(TEST_WEIGHTS)} (best: the test splits are evaluated with "
                          f"best.ckpt's weights; last: with the weights training ended with).")
    minimum = int(getattr(model_cls, "min_batch_size_per_rank", 1))
    if cfg.run_type.startswith("train") and training.batch_size < minimum:
        raise ConfigError(
            f"training.batch_size={training.batch_size}: model {cfg.model} needs at least "
            f"{minimum} samples per process (its contrastive / image-text matching losses take "
            f"their negatives from the batch; with fewer they are 0 and nothing is learned). Set "
            f"training.batch_size>={minimum}.")
    _check_component_params(cfg)


def _at_least(node: DictConfig, key: str, minimum: float, hint: str = "",
              prefix: str = "training") -> None:
    value = node[key]
    if value < minimum:
        raise ConfigError(f"{prefix}.{key}={value}: must be >= {minimum}. {hint}".rstrip())


def _check_component_params(cfg: DictConfig) -> None:
    """``optimizer.params`` / ``scheduler.params`` checked by their registered component."""
    from albef_plugin.registry import registry

    for kind, getter in (("optimizer", registry.get_optimizer_class),
                         ("scheduler", registry.get_scheduler_class)):
        section = cfg[kind]
        try:
            component = getter(section.type)
        except UnknownNameError as exc:
            raise ConfigError(f"{kind}.type={section.type!r}: {exc}") from None
        check = getattr(component, "check_params", None)
        if check is not None:
            params = OmegaConf.to_container(section.params, resolve=True) if section.params else {}
            check(params)


def _check_component_keys(node: DictConfig, model_key: str, dataset_keys: Iterable[str],
                          source: str) -> None:
    """model_config / dataset_config entries must name the selected model / datasets.

    Without this check a typo such as ``model_config.albef_pretrian.temp=0.1`` would
    silently create an unused entry.
    """
    for section, allowed, registry_ in (("model_config", [model_key], MODELS),
                                        ("dataset_config", list(dataset_keys), DATASET_BUILDERS)):
        entries = _select(node, section)
        if not isinstance(entries, DictConfig):
            continue
        for key in entries.keys():
            key = str(key)
            if key in allowed:
                continue
            if key in registry_:
                canonical = registry_.canonical_name(key)
                if canonical in allowed:
                    raise ConfigError(f"{section}.{key} (from {source}): use the registered name "
                                      f"{section}.{canonical} rather than the alias {key!r}.")
                continue  # settings for another known component: harmless, unused
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
            hint = f" Did you mean {section}.{close[0]!r}?" if close else ""
            raise ConfigError(f"Unknown config key {section}.{key!r} (from {source}): it names no "
                              f"selected or registered component.{hint} Selected: "
                              f"{', '.join(allowed)}.")
