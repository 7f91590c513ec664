"""The metric contract: a registered class with a typed ``Config``, run on one dataset.

A metric is selected per task in YAML, by name or with parameters::

    evaluation:
      metrics: [retrieval]                                   # short form: the defaults
      metrics:
        - {type: retrieval, params: {k_test: 256, itm_rerank: true}}
        - {type: accuracy, params: {save_predictions: true}}

``params`` are merged into the metric's ``Config`` dataclass at start-up, so a misspelled
parameter fails with its key path (``evaluation.metrics[0].params.k_tset``) and the closest
valid name. A metric class::

    @registry.register_metric("my_metric")
    class MyMetric(BaseMetric):
        @dataclass
        class Config:
            threshold: float = 0.5          # the one source of this default

        def evaluate(self, model, dataset, context: EvalContext) -> Dict[str, float]:
            ...                             # model is in eval mode, under no_grad
            return {"my_score": value}      # logged as <split>/<dataset>/my_score

What a metric needs to know about the evaluation it runs in (device, precision, split and
dataset names, where to write files, the split's collate function, loader sizes) comes in
an :class:`EvalContext`; :meth:`EvalContext.loader` builds the data loader, sharded across
ranks when asked. Every rank calls ``evaluate``; the numbers it returns must be the same
on every rank (all-reduce the counts), and rank 0's are logged.

Unreadable samples: a split whose builder *drops* entries with unreadable images (SNLI-VE
and NLVR2 val / test) gets batches with fewer samples, or None from the collate when a batch
lost every sample. :meth:`EvalContext.readable_batches` passes over (and counts) such batches,
and :func:`unreadable_report` turns the counts into the metric's report, or into one clean
error when no sample of the split was readable (:func:`require_readable`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from typing import (Any, Callable, ContextManager, Dict, Iterable, Iterator, List, Mapping, Optional,
                    Union)

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from albef_plugin.config.schema import EvaluationConfig
from albef_plugin.distributed import get_rank, get_world_size, is_main_process

__all__ = ["BaseMetric", "EvalContext", "MetricSpec", "ReadableBatches", "ShardSampler", "as_context",
           "autocast_for", "parse_metric_specs", "require_readable", "to_device", "unreadable_report"]

logger = logging.getLogger(__name__)

_EVAL_DEFAULTS = EvaluationConfig()  # loader sizes: one source, the evaluation schema
_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``W`` takes indices ``r, r + W, r + 2W, ...`` in order, without padding.

    Unlike torch's ``DistributedSampler`` no index is repeated to even out the shares, so
    counts summed over ranks cover every sample exactly once.
    """

    def __init__(self, num_samples: int, rank: int, world_size: int) -> None:
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.world_size))


@dataclass
class EvalContext:
    """Where and how one metric evaluates one dataset of one split.

    Attributes:
        device: where the model lives.
        precision: fp32 | bf16 | fp16 | auto (autocast of the forward passes).
        split: the split name (``val``, ``test``, ``testA``, ...).
        dataset_name: the dataset builder's name (``demo_ve``, ...).
        output_dir: where the metric may write files (the run's ``save_dir``); None: write none.
        collate_fn: the builder's collate function for this split (None: torch's default).
        batch_size: samples per evaluation batch and process (``evaluation.batch_size``).
        num_workers: data-loader workers (``evaluation.num_workers``).
    """

    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    split: str = "test"
    dataset_name: str = "dataset"
    output_dir: Optional[str] = None
    collate_fn: Optional[Callable[[List[Any]], Any]] = None
    batch_size: int = _EVAL_DEFAULTS.batch_size
    num_workers: int = _EVAL_DEFAULTS.num_workers

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)

    def loader(self, dataset: Dataset, shard: bool = True,
               batch_size: Optional[int] = None) -> DataLoader:
        """A loader over ``dataset`` in order; with ``shard`` each rank gets its own share
        (:class:`ShardSampler`)."""
        from albef_plugin.trainers.preemption import init_signal_free_worker  # (trainers imports metrics)

        sampler = ShardSampler(len(dataset), get_rank(), get_world_size()) if shard else None
        return DataLoader(dataset, batch_size=batch_size or self.batch_size, shuffle=False,
                          sampler=sampler, collate_fn=self.collate_fn, num_workers=self.num_workers,
                          pin_memory=self.device.type == "cuda",
                          worker_init_fn=init_signal_free_worker if self.num_workers else None)

    def readable_batches(self, dataset: Dataset, shard: bool = True) -> "ReadableBatches":
        """:meth:`loader` without the batches in which no sample was readable (counted)."""
        return ReadableBatches(self.loader(dataset, shard=shard))

    def output_path(self, kind: str = "predictions", suffix: str = ".json") -> Optional[str]:
        """``<output_dir>/<split>_<dataset>_<kind><suffix>``, or None without an output dir."""
        if not self.output_dir:
            return None
        return os.path.join(self.output_dir, f"{self.split}_{self.dataset_name}_{kind}{suffix}")

    def save_json(self, data: Any, kind: str = "predictions") -> Optional[str]:
        """Rank 0 writes ``data`` to :meth:`output_path` (atomically: temp file, rename).

        Returns the path on every rank (None without an output dir). Gather the data of
        all ranks before calling.
        """
        path = self.output_path(kind)
        if path is not None and is_main_process():
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            temp = f"{path}.tmp"
            with open(temp, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
            os.replace(temp, path)
        return path


class ReadableBatches:
    """The batches of an evaluation loader, passing over those the collate returned None for
    (every sample of the batch unreadable and dropped); ``skipped_batches`` counts them on this
    rank."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self.skipped_batches = 0

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            if batch is None:
                self.skipped_batches += 1
                continue
            yield batch


def require_readable(context: "EvalContext", num_samples: int, readable: int) -> None:
    """One clean error when ``num_samples > 0`` samples were all unreadable (counts of all ranks).

    Raises:
        UnreadableImageError: naming the split and the dataset, and what to check.
    """
    if num_samples > 0 and readable <= 0:
        from albef_plugin.datasets.images import UnreadableImageError  # (datasets are heavier)

        raise UnreadableImageError(
            f"every one of the {num_samples} samples of split {context.split!r} of dataset "
            f"{context.dataset_name!r} has an unreadable (missing or corrupt) image: nothing to "
            f"evaluate. Check dataset_config.{context.dataset_name}.image_root and the image paths "
            f"in the split's annotation files.")


def unreadable_report(context: "EvalContext", num_samples: int, evaluated: int,
                      skipped_batches: int) -> Dict[str, float]:
    """What an evaluation that left unreadable samples out reports (counts of all ranks).

    Returns ``{}`` when every sample was evaluated; otherwise ``unreadable_samples`` (samples
    left out) and ``skipped_batches`` (batches with no readable sample), with a warning.

    Raises:
        UnreadableImageError: no sample was readable (:func:`require_readable`).
    """
    require_readable(context, num_samples, evaluated)
    unreadable = max(0, num_samples - evaluated)
    if not unreadable and not skipped_batches:
        return {}
    logger.warning("%s/%s: %d of %d samples have unreadable images and were left out of the "
                   "evaluation (%d batch(es) had no readable sample and were skipped)",
                   context.split, context.dataset_name, unreadable, num_samples, skipped_batches)
    return {"unreadable_samples": float(unreadable), "skipped_batches": float(skipped_batches)}


def autocast_for(device: torch.device, precision: str) -> ContextManager[Any]:
    """Autocast context for ``precision`` (fp32 | bf16 | fp16 | auto) on ``device``.

    ``auto`` means bf16 on CUDA and fp32 elsewhere, as ``training.precision``.
    """
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in _PRECISIONS:
        raise ValueError(f"precision={precision!r} is not supported; use one of "
                         f"{', '.join(['auto', *_PRECISIONS])}.")
    dtype = _PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch moved to ``device``; other values untouched."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def as_context(context: Union[EvalContext, str, torch.device, None]) -> EvalContext:
    """``context`` itself, or a default context on a device (``"cpu"``, ``"cuda:0"``)."""
    if isinstance(context, EvalContext):
        return context
    return EvalContext(device=torch.device(context or "cpu"))


class BaseMetric:
    """Base of registered metrics: typed ``Config``, ``evaluate(model, dataset, context)``.

    ``config`` may be a ``Config`` instance, a mapping or an OmegaConf node of its keys;
    keyword arguments override it. Unknown keys raise ``ValueError`` naming them. The
    resolved values are kept as a plain ``Config`` instance in ``self.config``.
    """

    @dataclass
    class Config:
        pass

    def __init__(self, config: Union[None, Mapping[str, Any], Any] = None, **overrides: Any) -> None:
        self.config = self.resolve_config(config, overrides)
        self.check_config(self.config)

    @classmethod
    def resolve_config(cls, config: Any, overrides: Mapping[str, Any]) -> Any:
        if isinstance(config, cls.Config):
            config = dataclasses.asdict(config)
        values = dict(config or {})
        values.update(overrides)
        names = [f.name for f in dataclasses.fields(cls.Config)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown parameter(s) {', '.join(unknown)}; known: "
                             f"{', '.join(names) or '(none)'}.")
        return cls.Config(**values)

    def check_config(self, config: Any) -> None:
        """Raise ``ValueError`` naming the parameter when a value is out of range."""

    def evaluate(self, model: torch.nn.Module, dataset: Dataset,
                 context: Union[EvalContext, str, torch.device]) -> Dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate()")


@dataclass
class MetricSpec:
    """One entry of ``evaluation.metrics``: a registered name and its parameters."""

    type: str
    params: Dict[str, Any] = dataclasses.field(default_factory=dict)


def parse_metric_specs(metrics: Any, where: str = "evaluation.metrics") -> List[MetricSpec]:
    """Read ``evaluation.metrics`` (names or ``{type, params}``) into checked specs.

    Each ``params`` is merged into the metric class's ``Config`` (defaults filled in) and the
    metric is constructed once to run its range checks (constructors must only read their
    config). An unknown metric, an unknown, mistyped or out-of-range parameter, a malformed
    entry or a metric listed twice raises :class:`~albef_plugin.config.loader.ConfigError` naming the key path.
    """
    from omegaconf import DictConfig, OmegaConf

    from albef_plugin.config.loader import ConfigError, merge_checked
    from albef_plugin.registry import METRICS, UnknownNameError

    specs: List[MetricSpec] = []
    entries = list(metrics or [])
    for i, entry in enumerate(entries):
        path = f"{where}[{i}]"
        if isinstance(entry, (Mapping, DictConfig)):
            entry = OmegaConf.to_container(entry) if isinstance(entry, DictConfig) else dict(entry)
            extra = sorted(set(entry) - {"type", "params"})
            if extra or not isinstance(entry.get("type"), str):
                raise ConfigError(f"{path}: expected a metric name or {{type: <name>, params: {{...}}}}, "
                                  f"got {entry!r}" + (f" (unknown key(s) {', '.join(extra)})" if extra else ""))
            name, params = entry["type"], entry.get("params") or {}
        elif isinstance(entry, str):
            name, params = entry, {}
        else:
            raise ConfigError(f"{path}: expected a metric name or {{type, params}}, got {entry!r}.")
        try:
            cls = METRICS.get(name)
        except UnknownNameError as exc:
            raise ConfigError(f"{path}.type={name!r}: {exc}") from None
        canonical = METRICS.canonical_name(name)
        if any(spec.type == canonical for spec in specs):
            raise ConfigError(f"{path}: metric {canonical!r} is listed twice; list each metric once "
                              f"with all its params.")
        config_cls = getattr(cls, "Config", None)
        if config_cls is None or not dataclasses.is_dataclass(config_cls):
            if params:
                raise ConfigError(f"{path}.params: metric {canonical!r} takes no parameters "
                                  f"(it has no Config dataclass).")
            specs.append(MetricSpec(canonical, {}))
            continue
        node = OmegaConf.structured(config_cls)
        OmegaConf.set_struct(node, True)
        merged = merge_checked(node, OmegaConf.create(dict(params)),
                               source=f"the params of metric {canonical!r}", path_prefix=f"{path}.params.")
        spec = MetricSpec(canonical, OmegaConf.to_container(merged, resolve=True))
        try:  # range checks live in the constructor, which only reads the config
            cls(spec.params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}.params (metric {canonical!r}): {exc}") from None
        specs.append(spec)
    return specs
