"""Training: the ``albef_trainer`` loop, optimizers, LR schedules, checkpoints, logging.

Importing this package registers ``albef_trainer`` (trainer), ``adam_w`` (optimizer),
``cosine_warmup`` and ``constant`` (schedulers).
"""
from albef_plugin.trainers import optim, schedulers  # noqa: F401  (registration)
from albef_plugin.trainers.trainer import Trainer, compute_max_updates

__all__ = ["Trainer", "compute_max_updates"]
