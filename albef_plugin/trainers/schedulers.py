"""Learning-rate schedules: pure functions of the update index.

A schedule is a registered class whose instances map ``update -> lr``. The trainer's
:class:`LRScheduler` applies that value to every optimizer group before each update, so
resuming only needs the update count (kept in TrainState): nothing else to save.

To add a schedule (e.g. the official ALBEF staircase), subclass :class:`LRSchedule`,
register it with ``@registry.register_scheduler(name)`` and implement ``__call__``;
``from_config`` hands it ``scheduler.params`` plus the run's geometry.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from albef_plugin.config.loader import ConfigError, UnknownKeyError
from albef_plugin.registry import registry

# scheduler fields the trainer fills in (never set through scheduler.params)
_FROM_TRAINER = {"lr", "max_updates", "updates_per_epoch"}

__all__ = ["LRSchedule", "CosineWarmup", "Constant", "ALBEFOfficialSchedule", "LRScheduler",
           "build_lr_scheduler"]


@dataclass
class LRSchedule:
    """Base of all schedules. ``lr`` is the peak (base) learning rate, from ``optimizer.params.lr``."""

    lr: float

    def __call__(self, update: int) -> float:
        raise NotImplementedError

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> None:
        """Keys and value types of ``scheduler.params`` (a ConfigError names the key);
        called by the config loader at start-up and by :meth:`from_config`."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        settable = sorted(set(fields) - _FROM_TRAINER)
        unknown = sorted(set(params) - set(settable))
        if unknown:
            close = difflib.get_close_matches(unknown[0], settable, n=1)
            hint = f" Did you mean scheduler.params.{close[0]}?" if close else ""
            raise UnknownKeyError(f"scheduler.params: unknown key(s) {', '.join(unknown)} for "
                              f"{cls.__name__}; allowed keys are {', '.join(settable) or '(none)'}."
                              f"{hint}")
        for key, value in params.items():
            kind = str(fields[key].type)
            try:
                if isinstance(value, bool):
                    raise ValueError
                if kind == "int" and float(value) != int(float(value)):
                    raise ValueError
                float(value)
            except (TypeError, ValueError):
                expected = "an integer" if kind == "int" else "a number"
                raise ConfigError(f"scheduler.params.{key}={value!r}: expected {expected}.") from None

    @classmethod
    def from_config(cls, params: Mapping[str, Any], *, lr: float, max_updates: int,
                    updates_per_epoch: int) -> "LRSchedule":
        """Build from ``scheduler.params``; ``max_updates`` / ``updates_per_epoch`` are passed
        to the schedules whose dataclass declares a field of that name."""
        cls.check_params(params)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        geometry = {"max_updates": max_updates, "updates_per_epoch": updates_per_epoch}
        kwargs: Dict[str, Any] = {k: v for k, v in geometry.items() if k in fields}
        for key, value in params.items():
            kwargs[key] = int(float(value)) if str(fields[key].type) == "int" else float(value)
        kwargs["lr"] = lr
        return cls(**kwargs)


@registry.register_scheduler("cosine_warmup")
@dataclass
class CosineWarmup(LRSchedule):
    """Linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup_updates``, then a half cosine
    from ``lr`` down to ``min_lr`` reached at ``max_updates`` (held there afterwards)."""

    max_updates: int = 1
    warmup_updates: int = 0
    warmup_lr: float = 0.0
    min_lr: float = 0.0

    def __call__(self, update: int) -> float:
        if update < self.warmup_updates:
            return self.warmup_lr + (self.lr - self.warmup_lr) * update / self.warmup_updates
        decay_updates = max(1, self.max_updates - self.warmup_updates)
        progress = min(1.0, (update - self.warmup_updates) / decay_updates)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))


@registry.register_scheduler("constant")
@dataclass
class Constant(LRSchedule):
    """``lr`` at every update."""

    def __call__(self, update: int) -> float:
        return self.lr


@registry.register_scheduler("albef_official", aliases=("timm_cosine_epoch_warmup",))
@dataclass
class ALBEFOfficialSchedule(LRSchedule):
    """The learning rate of the official ALBEF scripts (``Pretrain.py`` + its timm-derived
    ``CosineLRScheduler`` with ``warmup_prefix=True``), per update.

    The official code steps a per-*epoch* cosine scheduler in two ways:

    * epoch 0: ``step(i // iterations_per_unit)`` after the optimizer step of every
      iteration ``i`` that is a multiple of ``iterations_per_unit`` (100), for
      ``i <= warmup_units * iterations_per_unit`` (2000): a staircase
      ``warmup_lr + k * (lr - warmup_lr) / warmup_units`` for unit ``k``, reaching ``lr`` at
      ``k = warmup_units`` and staying there for the rest of epoch 0. The step runs *after*
      the update, so unit ``k`` starts one iteration late: iteration ``i`` uses unit
      ``clamp((i - 1) // iterations_per_unit, 0, warmup_units)`` (iterations 0..100 use 0);
    * epoch ``e >= 1``: ``step(e + warmup_units)`` before the epoch:
      ``min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * e / epochs))`` for the whole epoch,
      ``min_lr`` from epoch ``epochs`` on (timm's ``cycle_limit=1``).

    The paper says "warm-up to 1e-4 in the first 1000 iterations"; the released code does
    2000 (20 units of 100). The defaults follow the code; ``warmup_units: 10`` gives the
    paper's. A short epoch 0 (fewer iterations than the warm-up) cuts the staircase short,
    exactly as in the official code. Counts are in updates (= iterations without gradient
    accumulation, the official setting).

    Args (``scheduler.params``): ``min_lr``, ``warmup_lr``, ``warmup_units``,
    ``iterations_per_unit``, ``epochs`` (the cosine period); ``lr`` comes from the optimizer
    and ``updates_per_epoch`` from the trainer.
    """

    updates_per_epoch: int = 1
    epochs: int = 30
    min_lr: float = 1e-5
    warmup_lr: float = 1e-5
    warmup_units: int = 20
    iterations_per_unit: int = 100

    def __post_init__(self) -> None:
        if self.updates_per_epoch < 1 or self.epochs < 1 or self.iterations_per_unit < 1:
            raise ConfigError(f"albef_official schedule: updates_per_epoch="
                             f"{self.updates_per_epoch}, "
                             f"epochs={self.epochs} and iterations_per_unit="
                             f"{self.iterations_per_unit} must all be >= 1.")
        if self.warmup_units < 0:
            raise ConfigError(f"scheduler.params.warmup_units={self.warmup_units} must be >= 0.")

    def cosine(self, epoch: int) -> float:
        """lr during epoch ``epoch >= 1`` (timm's ``_get_lr(epoch + warmup_units)``)."""
        if epoch >= self.epochs:
            return self.min_lr
        cosine = 1.0 + math.cos(math.pi * epoch / self.epochs)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * cosine

    def warmup(self, unit: int) -> float:
        """lr of warm-up unit ``unit`` (``lr`` itself from ``warmup_units`` on)."""
        if unit >= self.warmup_units:
            return self.cosine(0)  # = lr
        return self.warmup_lr + unit * (self.lr - self.warmup_lr) / self.warmup_units

    def __call__(self, update: int) -> float:
        epoch = update // self.updates_per_epoch
        if epoch >= 1:
            return self.cosine(epoch)
        unit = min(self.warmup_units, max(0, (update - 1) // self.iterations_per_unit))
        return self.warmup(unit)


class LRScheduler:
    """Sets the learning rate of every optimizer group to ``schedule(update)``.

    A group may carry an ``lr_scale`` (layer-wise decay, heads trained faster): its lr is
    ``schedule(update) * lr_scale``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LRSchedule) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        self.update = 0

    def step(self, update: int) -> float:
        """Set the lr used by the optimizer step that produces update ``update + 1``."""
        self.update = update
        lr = self.schedule(update)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def get_last_lr(self) -> float:
        return self.schedule(self.update)

    def state_dict(self) -> Dict[str, Any]:
        # the schedule is a pure function of the update; this is only for inspection
        return {"update": self.update}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step(int(state.get("update", 0)))


def build_lr_scheduler(optimizer: torch.optim.Optimizer, scheduler_config: Any, *, lr: float,
                       max_updates: int, updates_per_epoch: int) -> LRScheduler:
    """Build ``scheduler_config.type`` with ``scheduler_config.params`` around ``optimizer``."""
    schedule_cls = registry.get_scheduler_class(scheduler_config.type)
    params = scheduler_config.params or {}
    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=True)
    schedule = schedule_cls.from_config(params, lr=lr, max_updates=max_updates,
                                        updates_per_epoch=updates_per_epoch)
    return LRScheduler(optimizer, schedule)
