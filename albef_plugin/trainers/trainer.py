"""The ALBEF trainer: an update-based loop with evaluation, checkpoints and exact resume.

Reading order: :meth:`Trainer.load` (construction, one ``build_*`` call per part),
:meth:`Trainer.run` (what ``run_type`` asks for), :meth:`Trainer.train` (the loop),
:meth:`Trainer.train_step` (one optimizer update). Checkpoint contents and resuming live in
``resume.py``; files in ``checkpointer.py``; data order and randomness in ``data.py``.

Counting: one *iteration* is one batch (a micro-batch); one *update* is one optimizer step
over ``training.update_frequency`` iterations. Intervals (log, evaluation, checkpoint) and
``max_updates`` count updates. ``max_epochs`` is converted to updates with the loader length.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, ContextManager, Dict, List, Optional, Tuple

import torch
from tqdm import tqdm

from albef_plugin.datasets.streams import SampleStream
from albef_plugin.distributed import (all_reduce_sum, broadcast_object, get_rank, get_world_size,
                                      is_main_process)
from albef_plugin.metrics.base import EvalContext
from albef_plugin.metrics.retrieval import format_recall_table
from albef_plugin.registry import registry
from albef_plugin.train_state import TrainState
from albef_plugin.trainers import resume
from albef_plugin.trainers.build import build_datasets, build_model, parse_run_type, wrap_model
from albef_plugin.trainers.checkpointer import Checkpointer
from albef_plugin.trainers.data import EpochBatchIterator, batch_size_of, build_train_loader
from albef_plugin.trainers.divergence import DivergenceGuard
from albef_plugin.trainers.evaluation import BestMetricTracker, build_metrics, evaluate_split
from albef_plugin.trainers.meter import NonFiniteLossError, TrainMeter
from albef_plugin.trainers.metrics_log import MetricsWriter, attach_file_log, detach_file_log
from albef_plugin.trainers.optim import build_optimizer
from albef_plugin.trainers.plots import plot_training_curves
from albef_plugin.trainers.preemption import RunPreempted, StopAgreement
from albef_plugin.trainers.progress import progress_bar
from albef_plugin.trainers.precision import (build_grad_scaler, get_autocast, resolve_device,
                                             resolve_precision)
from albef_plugin.trainers.rng import seed_everything
from albef_plugin.trainers.schedulers import build_lr_scheduler
from albef_plugin.trainers.stream_data import build_stream_batches
from albef_plugin.trainers.test_weights import load_test_weights

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "compute_max_updates", "move_to_device"]

Batch = Dict[str, Any]
MicroBatch = Tuple[Tuple[int, int], Batch, int]  # (position, batch, num_skipped)


def compute_max_updates(max_updates: Optional[int], max_epochs: Optional[int],
                        iterations_per_epoch: int, update_frequency: int) -> int:
    """``max_updates`` wins; else ``max_epochs`` worth of iterations, in whole updates (the
    last ``< update_frequency`` batches of the final epoch are not used)."""
    if max_updates is not None:
        return int(max_updates)
    if max_epochs is not None:
        return max(1, int(max_epochs) * iterations_per_epoch // update_frequency)
    raise ValueError("set training.max_updates or training.max_epochs (max_updates wins when "
                     "both are set).")


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch moved to ``device``; other values untouched."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def _every(update: int, interval: int) -> bool:
    return interval > 0 and update % interval == 0


@registry.register_trainer("albef_trainer")
class Trainer:
    """Trains and evaluates a registered model on registered datasets.

    Args:
        config: the full resolved root config (``RootConfig`` schema).
    """

    def __init__(self, config: Any) -> None:
        self.config = config
        self.run_training, self.eval_roles = parse_run_type(config.run_type)
        self.state = TrainState()
        self.stop_requested = False
        self.preempted_by: Optional[str] = None  # the signal that stopped training early
        self.stop_agreement: Optional[StopAgreement] = None
        self._last_logged = self._last_saved = -1
        self._last_eval: Dict[str, int] = {}
        self._grad_norm: Optional[torch.Tensor] = None
        self._lr_used = float("nan")
        self._log_handler: Optional[logging.Handler] = None
        self._progress: Optional[tqdm] = None
        self.writer = MetricsWriter(None)

    # ------------------------------------------------------------------ construction
    def load(self) -> None:
        """Build everything and load the checkpoint to start from, if any."""
        cfg, training = self.config, self.config.training
        self.save_dir = str(cfg.env.save_dir)
        self.is_main = is_main_process()
        if self.is_main:  # (run_job writes the resolved config.yaml)
            self._log_handler = attach_file_log(self.save_dir, cfg.env.log_level)
        self.device = resolve_device(training.device)
        self.precision = resolve_precision(training.precision, self.device)
        seed_everything(training.seed + get_rank())

        self.metrics = build_metrics(cfg.evaluation)
        periodic_eval = self.run_training and training.evaluation_interval > 0 and self.metrics
        roles = (["train"] if self.run_training else []) + self.eval_roles
        if periodic_eval and "val" not in roles:
            roles.append("val")
        self.datasets = build_datasets(cfg, roles, required=self.eval_roles if self.metrics else ())
        self.eval_context = EvalContext(device=self.device, precision=self.precision,
                                        output_dir=self.save_dir,
                                        batch_size=int(cfg.evaluation.batch_size),
                                        num_workers=int(cfg.evaluation.num_workers))
        self.model = build_model(cfg).to(self.device)
        self.best = BestMetricTracker(training.early_stop.criteria, training.early_stop.minimize,
                                      training.early_stop.patience, training.early_stop.enabled)
        self.checkpointer = Checkpointer(self.save_dir, cfg.checkpoint.max_to_keep)
        if self.run_training:
            self._load_training_parts()
        resume.load_start_checkpoint(self)
        self.wrapped = wrap_model(self.model, self.device,
                                  find_unused_parameters=training.find_unused_parameters,
                                  compile_model=training.compile)
        self.writer = MetricsWriter(self.save_dir if self.is_main else None,
                                    tensorboard=training.tensorboard,
                                    drop_after_update=self.state.update if self.run_training else None)
        # evaluations recorded at the resumed update are not redone (nor written twice)
        for split in broadcast_object(self.writer.evaluated_at_start):
            self._last_eval[split] = self.state.update
        if self.run_training:
            self.stop_agreement = StopAgreement()  # on every rank (builds a process group)
        logger.info("device %s, precision %s, %d process(es), run_type %s", self.device,
                    self.precision, get_world_size(), cfg.run_type)

    def _load_training_parts(self) -> None:
        cfg, training = self.config, self.config.training
        if training.update_frequency < 1:
            raise ValueError(f"training.update_frequency={training.update_frequency}: must be >= 1.")
        self.update_frequency = int(training.update_frequency)
        if isinstance(self.datasets.train, SampleStream):  # shards: an endless stream
            self.batches = build_stream_batches(
                self.datasets.train, self.datasets.train_collate, batch_size=training.batch_size,
                seed=training.seed, rank=get_rank(), world_size=get_world_size(),
                num_workers=training.num_workers,
                pin_memory=training.pin_memory and self.device.type == "cuda", on_epoch_end=self._on_epoch_end)
        else:
            loader, sampler = build_train_loader(
                self.datasets.train, self.datasets.train_collate, batch_size=training.batch_size,
                seed=training.seed, rank=get_rank(), world_size=get_world_size(),
                num_workers=training.num_workers, pin_memory=training.pin_memory and self.device.type == "cuda",
                persistent_workers=training.persistent_workers)
            self.batches = EpochBatchIterator(loader, sampler, on_epoch_end=self._on_epoch_end)
        self.state.iterations_per_epoch = self.batches.iterations_per_epoch
        self.max_updates = compute_max_updates(training.max_updates, training.max_epochs,
                                               self.batches.iterations_per_epoch, self.update_frequency)
        self.optimizer = build_optimizer(self.model, cfg.optimizer)
        self.lr_scheduler = build_lr_scheduler(
            self.optimizer, cfg.scheduler, lr=float(self.optimizer.defaults["lr"]),
            max_updates=self.max_updates,
            updates_per_epoch=max(1, self.batches.iterations_per_epoch // self.update_frequency))
        self.scaler = build_grad_scaler(self.precision, self.device)
        divergence = training.divergence
        self.meter = TrainMeter(self.device, divergence.loss_spike_factor, divergence.window)
        self.guard = DivergenceGuard(self.checkpointer, divergence.max_weight_norm_growth)
        logger.info("%d updates of %d x %d x %d samples (update_frequency x batch_size x processes); "
                    "%d iterations per epoch", self.max_updates, self.update_frequency,
                    training.batch_size, get_world_size(), self.batches.iterations_per_epoch)

    # ------------------------------------------------------------------ entry point
    def run(self) -> None:
        """Train and/or evaluate as ``run_type`` says, then write the curves and close."""
        try:
            if self.run_training:
                self.train()
                if self.preempted_by and self.state.update < self.max_updates:
                    # current.ckpt is written: the launcher may requeue
                    raise RunPreempted(self.preempted_by, self.state.update,
                                       self.checkpointer.current_path)
            if self.eval_roles and not self.metrics:
                logger.warning("run_type=%s asks for evaluation but evaluation.metrics is empty",
                               self.config.run_type)
            for role in self.eval_roles if self.metrics else []:  # val before test
                # splits the periodic evaluation already covered at this update are not redone
                splits = [split for split in self.datasets.splits_with_role(role)
                          if self._last_eval.get(split) != self.state.update]
                if not splits:
                    continue
                # after training, the test splits get best.ckpt's weights (evaluation.test_weights)
                weights = load_test_weights(self) if role == "test" and self.run_training else {}
                if self.evaluate(splits, weights) and self.run_training:
                    self.save_checkpoint(current=False, snapshot=False, best=True)
        finally:
            self.close()

    # ------------------------------------------------------------------ training
    def train(self) -> None:
        """Updates until ``max_updates`` or early stop: log, evaluate and checkpoint on intervals."""
        state, training = self.state, self.config.training
        logger.info("training from update %d to %d", state.update, self.max_updates)
        self.wrapped.train()
        self.lr_scheduler.step(state.update)
        self.guard.start(self.model, state.update, current_update=self._last_saved)
        self._progress = progress_bar(self.max_updates, state.update,
                                      enabled=self.is_main and training.progress_bar)
        while state.update < self.max_updates and not self.stop_requested:
            self.train_step([self.batches.next() for _ in range(self.update_frequency)])
            self._progress.update(1)
            if _every(state.update, training.log_interval):
                self.log_training()
            improved = False
            val_splits = self.datasets.splits_with_role("val")
            if _every(state.update, training.evaluation_interval) and self.metrics and val_splits:
                improved = self.evaluate(val_splits)
            periodic = _every(state.update, training.checkpoint_interval)
            if periodic or improved:
                self.save_checkpoint(current=periodic, snapshot=periodic, best=improved)
            if self.best.should_stop(state.update):
                logger.info("early stop at update %d: %s has not improved since update %d",
                            state.update, self.best.key, self.best.update)
                self.stop_requested = True
            if self.stop_agreement.after_update():  # USR2/SIGTERM seen by any rank (preemption.py)
                self.preempted_by = self.stop_agreement.signal_name
                logger.warning("%s received: stopping after update %d to write a checkpoint",
                               self.preempted_by, state.update)
                self.stop_requested = True
        self.stop_agreement.close()
        self._progress.close()
        if self._last_logged != state.update:
            self.log_training()
        if self._last_saved != state.update:
            self.save_checkpoint()

    def train_step(self, micro_batches: List[MicroBatch]) -> None:
        """One optimizer update: forward/backward on each micro-batch, clip, step, schedule.

        Gradients are synchronised across processes only on the last micro-batch (DDP
        ``no_sync`` before). Micro-batches whose samples were all skipped by the dataset
        are passed over.
        """
        state = self.state
        with_data = [i for i, (_, batch, _) in enumerate(micro_batches) if batch_size_of(batch) > 0]
        for i, (position, batch, num_skipped) in enumerate(micro_batches):
            self.meter.add_skipped(num_skipped)
            if i not in with_data:
                logger.warning("update %d: empty batch (all samples skipped by the dataset); passed over",
                               state.update + 1)
                continue
            state.epoch, state.iteration_in_epoch = position
            state.first_micro_batch = i == with_data[0]  # the model's EMA step: once per update
            state.alpha = self.model.alpha_for(state) if hasattr(self.model, "alpha_for") else None
            with self._gradient_sync(i == with_data[-1]):
                with get_autocast(self.precision, self.device):
                    losses = self._losses(self.wrapped(move_to_device(batch, self.device), train_state=state))
                    total = sum(losses.values())
                self.scaler.scale(total / len(with_data)).backward()
            self.meter.add(losses, total, batch_size_of(batch), update=state.update + 1)
        if with_data:
            if self.config.training.clip_grad_norm:
                self.scaler.unscale_(self.optimizer)
                self._grad_norm = torch.nn.utils.clip_grad_norm_(
                    self.model.parameters(), self.config.training.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self._lr_used = float(self.optimizer.param_groups[0]["lr"])
        state.update += 1
        state.epoch, state.iteration_in_epoch = self.batches.position
        self.lr_scheduler.step(state.update)

    def _losses(self, output: Any) -> Dict[str, torch.Tensor]:
        losses = output.get("losses") if isinstance(output, dict) else None
        if not losses:
            raise TypeError(f"model {self.config.model!r} returned no 'losses' in training mode: "
                            f"forward() must return {{'losses': {{name: scalar tensor}}, ...}}.")
        return losses

    def _gradient_sync(self, sync: bool) -> ContextManager:
        """DDP's ``no_sync`` on micro-batches that are not the last of an update."""
        if sync or not isinstance(unwrap_ddp(self.wrapped), torch.nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return unwrap_ddp(self.wrapped).no_sync()

    def _on_epoch_end(self, epoch: int, num_skipped: int) -> None:
        total = int(all_reduce_sum(torch.tensor(num_skipped, device=self.device)).item())
        logger.info("epoch %d finished: %d samples skipped by the datasets", epoch, total)
        self.writer.write({"kind": "epoch", "update": self.state.update, "epoch": epoch,
                           "num_skipped": total})

    # ------------------------------------------------------------------ logging / evaluation
    def log_training(self) -> None:
        """Write the averaged losses since the last log; stop on NaN/inf (a sync point)."""
        record: Dict[str, Any] = {"kind": "train", "update": self.state.update,
                                  "epoch": round(self.state.epoch_progress, 4)}
        record.update(self.meter.summary())
        record["lr"] = self._lr_used  # the lr of the update just done (group 0)
        if self._grad_norm is not None:
            record["grad_norm"] = float(self._grad_norm)
        self.writer.write(record)
        self._last_logged = self.state.update
        losses = ", ".join(f"{k.removeprefix('train/')} {v:.4f}" for k, v in record.items()
                           if k.startswith("train/") or k == "total_loss")
        logger.info("update %d/%d epoch %.2f | %s | lr %.3g | %.1f samples/s", self.state.update,
                    self.max_updates, record["epoch"], losses, record["lr"], record["samples_per_s"])
        if self._progress is not None:
            self._progress.set_postfix(loss=f"{record.get('total_loss', float('nan')):.4f}",
                                       lr=f"{record['lr']:.2e}", sps=f"{record['samples_per_s']:.0f}")
        self.raise_if_non_finite()

    def raise_if_non_finite(self) -> None:
        """Stop (:class:`NonFiniteLossError`) if any loss since the start was NaN/inf or a
        spike; otherwise record that the losses so far are good (see ``divergence.py``)."""
        bad = self.meter.first_non_finite() if self.run_training else None
        if bad is None:
            if self.run_training:
                self.guard.clean_through = self.state.update
            return
        update, losses = bad
        if update > 0:  # the updates before the first bad one were fine
            self.guard.clean_through = max(self.guard.clean_through, update - 1)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in losses.items()) or "(seen on another rank)"
        if update < 0:
            reason = "training diverged on another process (NaN/inf or a loss spike there)."
        elif "recent_median" in losses:
            reason = (f"training diverged at update {update}: {shown} (the total loss is more than "
                      f"training.divergence.loss_spike_factor="
                      f"{self.config.training.divergence.loss_spike_factor:g} x the recent median).")
        else:
            reason = f"non-finite training loss at update {update}: {shown}."
        self._stop_diverged(reason)

    def _stop_diverged(self, reason: str) -> None:
        """Set diverged checkpoints aside, name the last verified one, raise."""
        good = self.guard.roll_back() if self.is_main else self.guard.last_good()
        if good is None:
            where = "no checkpoint of this run is verified good"
        else:
            where = (f"last good checkpoint: {good[1]} (update {good[0]}); continue from it with "
                     f"checkpoint.resume_file={good[1]}")
        message = (f"{reason} Stopping without writing a checkpoint ({where}). Try a lower "
                   f"optimizer.params.lr, training.clip_grad_norm, or training.precision=bf16/fp32.")
        logger.error(message)
        raise NonFiniteLossError(message)

    def evaluate(self, splits: List[str], weights: Optional[Dict[str, Any]] = None) -> bool:
        """Evaluate every metric on each of ``splits`` (one ``eval`` record per split); log.

        Args:
            weights: for the test splits after training, which weights they are evaluated
                with (``{"weights": "best" | "last", "weights_update": N}``, see
                ``test_weights.py``); added to the records and the log line.

        Returns True when training and the val-role splits among them give a new best
        (``training.early_stop.criteria``; an error when it matches nothing reported).
        """
        val_results: Dict[str, float] = {}
        weights = dict(weights or {})
        for split in splits:
            results = evaluate_split(self.model, split, self.datasets.eval.get(split, {}), self.metrics,
                                     self.eval_context, self.datasets.eval_collate.get(split))
            self.writer.write({"kind": "eval", "split": split, "update": self.state.update,
                               "epoch": round(self.state.epoch_progress, 4), **weights, **results})
            of_weights = (f" ({weights['weights']} weights, of update {weights['weights_update']})"
                          if weights else "")
            logger.info("evaluation on %s at update %d%s: %s", split, self.state.update, of_weights,
                        ", ".join(f"{k} {v:.4f}" for k, v in results.items()) or "(no metrics)")
            table = format_recall_table(results)
            if table:
                logger.info("retrieval on %s (R@K in %%):\n%s", split, table)
            self._last_eval[split] = self.state.update
            if self.datasets.roles.get(split) == "val":
                val_results.update(results)
        return bool(val_results) and self.run_training and self.best.observe(val_results,
                                                                             self.state.update)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, *, current: bool = True, snapshot: bool = True, best: bool = False) -> None:
        """Write the full training state (rank 0) after checking the run has not diverged.

        The check reads the device-side divergence flag (one sync) and the weights (finite,
        norm not exploding), so a checkpoint is never written from broken weights, even
        between log intervals.
        """
        self.raise_if_non_finite()
        try:
            self.guard.check_weights(self.model, self.state.update)
        except NonFiniteLossError as exc:
            self._stop_diverged(str(exc))
        payload = resume.checkpoint_payload(self)  # a collective (RNG states of all ranks)
        if self.is_main:
            self.checkpointer.save(payload, self.state.update, current=current, snapshot=snapshot,
                                   best=best, verified_through=self.guard.verified_through)
        if current:
            self._last_saved = self.guard.current_update = self.state.update

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Close the log files; draw ``training_curves.png`` (rank 0, ``training.plot``)."""
        if self._progress is not None:
            self._progress.close()
        if getattr(self, "batches", None) is not None:
            self.batches.close()
        self.writer.close()
        if getattr(self, "is_main", False) and self.config.training.plot and self.writer.path \
                and os.path.isfile(self.writer.path):
            try:
                logger.info("training curves: %s", plot_training_curves(self.writer.path))
            except Exception:  # a plot must never hide the run's own error
                logger.exception("could not draw the training curves")
        if getattr(self, "is_main", False):
            logger.info("peak resident memory: %s", peak_rss_text())
        detach_file_log(self._log_handler)
        self._log_handler = None


def peak_rss_text() -> str:
    """Peak RSS of this process and of its largest finished child (DataLoader workers).

    ``ru_maxrss`` is in KiB on Linux (bytes on macOS); where ``resource`` is missing
    (Windows) the figure is simply not known."""
    try:
        import resource
    except ImportError:
        return "unknown on this platform"
    unit = 1024 if sys.platform != "darwin" else 1
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2 ** 20
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit / 2 ** 20
    return f"{own:.0f} MiB (this process), {child:.0f} MiB (largest finished worker process)"


def unwrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """The DDP wrapper under a ``torch.compile`` wrapper (or the model itself)."""
    return getattr(model, "_orig_mod", model)
