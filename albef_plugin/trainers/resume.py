"""What a training checkpoint holds, and how a run starts from one.

A checkpoint (format version 1) is a dict of tensors / primitives / containers:

``format_version``, ``model`` (the unwrapped model's full ``state_dict``: momentum
encoders and queues included), ``optimizer``, ``lr_scheduler``, ``scaler``,
``train_state`` (TrainState), ``rng`` (one state per rank), ``data`` (epoch,
iteration_in_epoch, skipped_in_epoch, sampler_seed, batch_size, world_size,
iterations_per_epoch; ``stream``: each rank's stream position when training on shards, see
``trainers/stream_data.py``), ``best`` (best metric key / value / update), ``loss_history``
(the recent total losses the divergence guard compares with; optional) and ``config``
(the resolved config as plain containers).

Which file a run starts from follows MMF's precedence (``checkpointer.resolve_resume_file``);
the ``checkpoint.reset.*`` keys drop parts of it, as in MMF:
``reset.all`` (model weights only), ``reset.optimizer``, ``reset.counts`` (TrainState,
data position, RNG, best metric), ``reset.fp16_scaler``.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, Mapping, Tuple

from omegaconf import DictConfig, OmegaConf

from albef_plugin.distributed import get_world_size, unwrap_model
from albef_plugin.models.checkpoints import load_checkpoint
from albef_plugin.trainers.checkpointer import (CHECKPOINT_FORMAT_VERSION, CheckpointError,
                                                load_checkpoint_file, load_model_state,
                                                resolve_resume_file)
from albef_plugin.trainers.rng import gather_rng_states, restore_rank_rng_state
from albef_plugin.trainers.stream_data import StreamBatchIterator, gather_stream_state

if TYPE_CHECKING:
    from albef_plugin.trainers.trainer import Trainer

logger = logging.getLogger(__name__)

__all__ = ["checkpoint_payload", "load_start_checkpoint"]


def checkpoint_payload(trainer: "Trainer") -> Dict[str, Any]:
    """Everything needed to continue as if never stopped. A collective (gathers RNG states)."""
    rng_states = gather_rng_states()
    stream_states = gather_stream_state(trainer.batches)  # None unless training on a stream
    if not trainer.is_main:
        return {}
    state, batches = trainer.state, trainer.batches
    return {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "lr_scheduler": trainer.lr_scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "train_state": state.state_dict(),
        "rng": rng_states,
        "data": {
            "epoch": batches.epoch,
            "iteration_in_epoch": batches.iteration,
            "skipped_in_epoch": batches.skipped_in_epoch,
            "sampler_seed": batches.sampler.seed,
            "batch_size": batches.batch_size,
            "world_size": get_world_size(),
            "iterations_per_epoch": batches.iterations_per_epoch,
            **({"stream": stream_states} if stream_states is not None else {}),
        },
        "best": trainer.best.state_dict(),
        "loss_history": trainer.meter.history_state(),
        "config": OmegaConf.to_container(trainer.config, resolve=True),
    }


def load_start_checkpoint(trainer: "Trainer") -> None:
    """Load the checkpoint the run starts from (if any), as ``checkpoint.*`` asks."""
    checkpoint_config = trainer.config.checkpoint
    found = resolve_resume_file(checkpoint_config, trainer.save_dir)
    if found is None:
        _log_weights_as_built(trainer)
        return
    path, why = found
    logger.info("loading checkpoint %s (%s)", path, why)
    checkpoint = load_checkpoint_file(path, checkpoint_config.allow_unsafe_pickle)
    if checkpoint_config.resume_pretrained:
        # Weights only, from any known format (official ALBEF, ours, a bare state dict), with
        # the same key mapping and position-embedding resampling as model_config.*.checkpoint.
        result = load_checkpoint(unwrap_model(trainer.model), checkpoint, strict=False)
        logger.info("checkpoint.resume_pretrained=true: model weights loaded (%s format), "
                    "training state not", result.format)
        return
    version = checkpoint.get("format_version") if isinstance(checkpoint, Mapping) else None
    if version is None:
        raise CheckpointError(
            f"{path!r} is not a training checkpoint of albef_plugin (no format_version). To "
            f"initialise the model from its weights, set checkpoint.resume_pretrained=true.")
    if version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path!r} has format version {version}, newer than this code "
                              f"({CHECKPOINT_FORMAT_VERSION}): update albef_plugin.")
    load_model_state(trainer.model, checkpoint["model"], strict=True, source=path)
    if trainer.run_training:
        _restore_training_state(trainer, checkpoint, path)


def _log_weights_as_built(trainer: "Trainer") -> None:
    """Say what the run starts from when no checkpoint is loaded: the weights files the model
    read while it was built (``model.loaded_weights``, e.g. ``model_config.<model>.checkpoint``),
    or its fresh initialisation, which is worth a warning only for an evaluation run."""
    loaded = dict(getattr(trainer.model, "loaded_weights", None) or {})
    files = ", ".join(f"model_config.{trainer.config.model}.{key}={path}" for key, path in loaded.items())
    if trainer.run_training:
        logger.info("no checkpoint to resume: training starts from %s",
                    f"the weights the model was built with ({files})" if files
                    else "the model's initialisation")
    elif files:
        logger.info("run_type=%s evaluates the weights the model was built with: %s",
                    trainer.config.run_type, files)
    else:
        logger.warning("run_type=%s evaluates the model's initial weights: no checkpoint was "
                       "loaded (set checkpoint.resume_file=<file> or model_config.%s.checkpoint=<file>)",
                       trainer.config.run_type, trainer.config.model)


def _restore_training_state(trainer: "Trainer", checkpoint: Mapping[str, Any], path: str) -> None:
    reset = trainer.config.checkpoint.reset
    if reset.all:
        logger.info("checkpoint.reset.all=true: only the model weights of %s are used", path)
        return
    if not reset.optimizer:
        trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    if not reset.fp16_scaler and checkpoint.get("scaler") and trainer.scaler.is_enabled():
        trainer.scaler.load_state_dict(checkpoint["scaler"])
    if reset.counts:
        logger.info("checkpoint.reset.counts=true: updates, epochs and data position start at 0")
        return
    state = trainer.state
    iterations_per_epoch = state.iterations_per_epoch
    state.load_state_dict(checkpoint["train_state"])
    state.iterations_per_epoch = iterations_per_epoch
    trainer.best.load_state_dict(checkpoint.get("best", {}))
    if "loss_history" in checkpoint:
        trainer.meter.load_history_state(checkpoint["loss_history"])
    data = checkpoint["data"]
    _warn_on_changed_data_geometry(trainer, data)
    _warn_on_changed_training_keys(checkpoint.get("config"), trainer.config)
    trainer.batches.start_at(data["epoch"], data["iteration_in_epoch"])
    if isinstance(trainer.batches, StreamBatchIterator):  # the shard stream's own position
        trainer.batches.load_stream_state(data.get("stream"))
    if trainer.batches.epoch == data["epoch"]:  # same epoch continues: keep its skip count
        trainer.batches.skipped_in_epoch = int(data.get("skipped_in_epoch", 0))
    state.epoch, state.iteration_in_epoch = trainer.batches.position
    restore_rank_rng_state(checkpoint["rng"], int(trainer.config.training.seed))
    trainer.lr_scheduler.step(state.update)
    trainer._last_saved = trainer._last_logged = state.update
    logger.info("resumed at update %d, epoch %d, iteration %d of %d", state.update, state.epoch,
                state.iteration_in_epoch, iterations_per_epoch)


def _warn_on_changed_data_geometry(trainer: "Trainer", data: Mapping[str, Any]) -> None:
    now = {"sampler_seed": trainer.batches.sampler.seed, "batch_size": trainer.batches.batch_size,
           "world_size": get_world_size(), "iterations_per_epoch": trainer.batches.iterations_per_epoch}
    changed = {k: (data.get(k), v) for k, v in now.items() if data.get(k) != v}
    if changed:
        logger.warning("the data setup changed since the checkpoint (%s): the data order "
                       "continues approximately, not exactly",
                       ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))


# Keys that do not change what is learned (logging, I/O, where files go, how it is launched).
_NOT_TRAINING = ("config", "includes", "run_type", "env.", "launcher.", "distributed.",
                 "evaluation.", "checkpoint.", "training.log_interval",
                 "training.checkpoint_interval", "training.evaluation_interval",
                 "training.num_workers", "training.pin_memory", "training.persistent_workers",
                 "training.tensorboard", "training.progress_bar", "training.plot",
                 "training.divergence.", "training.early_stop.")


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, Mapping):
        flat: Dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat if flat or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def changed_training_keys(saved: Any, current: Any) -> Dict[str, Tuple[Any, Any]]:
    """``key -> (saved, now)`` for every key that affects training and differs."""
    if isinstance(current, DictConfig):
        current = OmegaConf.to_container(current, resolve=True)
    old, new = _flatten(saved or {}), _flatten(current or {})
    missing = object()
    changed = {}
    for key in sorted(set(old) | set(new)):
        if any(key.startswith(p) if p.endswith(".") else key == p for p in _NOT_TRAINING):
            continue
        before, after = old.get(key, missing), new.get(key, missing)
        if before != after:
            changed[key] = (None if before is missing else before, None if after is missing else after)
    return changed


def _warn_on_changed_training_keys(saved: Any, current: Any) -> None:
    if not isinstance(saved, Mapping):
        return
    changed = changed_training_keys(saved, current)
    if changed:
        logger.warning("resuming with a config that differs from the checkpoint's in %d key(s) that "
                       "affect training: %s", len(changed),
                       "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
