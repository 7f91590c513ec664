"""A toy model, dataset builder and metrics for the trainer tests, plus config helpers.

They follow the component contracts (nested ``Config``, ``config_path()``,
``__init__(config)``, ``build``/``collate_fn``/``prepare``) with tiny sizes. Randomness
is deliberately everywhere: dropout and ``torch.randn`` in the model's forward, torch /
python / numpy augmentation in the dataset, so exact-resume tests mean something.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import Dataset

import albef_plugin.trainers  # noqa: F401  (registers albef_trainer, adam_w, the schedules)
from albef_plugin.config.schema import RootConfig
from albef_plugin.registry import registry
from albef_plugin.train_state import TrainState

IMAGE_SHAPE = (3, 2, 2)


@registry.register_model("toy_albef", override=True)
class ToyModel(nn.Module):
    """Linear -> LayerNorm -> dropout -> head, with ALBEF-like extra parameters and buffers."""

    @dataclass
    class Config:
        hidden: int = 8
        dropout: float = 0.2
        nan_at_update: int = -1     # losses are NaN from this (1-based) update on; -1: never

    @classmethod
    def config_path(cls) -> Optional[str]:
        return None

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        in_dim = int(np.prod(IMAGE_SHAPE))
        self.embed = nn.Linear(in_dim, config.hidden)
        self.norm = nn.LayerNorm(config.hidden)
        self.pos_embed = nn.Parameter(torch.zeros(1, 2, config.hidden))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden))
        self.temp = nn.Parameter(torch.tensor(0.07))
        self.head = nn.Linear(config.hidden, 1)
        self.dropout = nn.Dropout(config.dropout)
        self.head_m = nn.Linear(config.hidden, 1)  # a frozen "momentum" copy
        self.head_m.requires_grad_(False)
        self.register_buffer("queue", torch.zeros(4, config.hidden))
        self.register_buffer("num_train_forwards", torch.zeros((), dtype=torch.long))
        self.alphas: List[Optional[float]] = []

    def alpha_for(self, state: TrainState) -> float:
        return 0.4 * min(1.0, state.epoch_progress)

    def forward(self, batch: Dict[str, torch.Tensor], train_state: Optional[TrainState] = None) -> Dict:
        x = batch["image"].flatten(1)
        hidden = self.dropout(self.norm(self.embed(x))) + self.pos_embed.mean() + self.cls_token.mean()
        prediction = self.head(hidden).squeeze(-1)
        mse = ((prediction - batch["target"]) ** 2).mean()
        # a random op on the global torch RNG, like MLM masking or hard-negative sampling
        aux = (self.temp - 0.07 + 0.01 * torch.randn(())) ** 2
        if self.training:
            self.alphas.append(train_state.alpha if train_state is not None else None)
            with torch.no_grad():
                self.queue.copy_(torch.roll(self.queue, 1, 0))
                self.queue[0] = hidden.mean(0)
                self.num_train_forwards += 1
            bad_from = self.config.nan_at_update
            if bad_from > 0 and train_state is not None and train_state.update + 1 >= bad_from:
                mse = mse * float("nan")
        return {"losses": {"mse": mse, "aux": aux}, "prediction": prediction}


class ToyDataset(Dataset):
    """Sample i: a fixed image and target plus random augmentation from torch, python and numpy.

    Samples in ``skip`` come back as None (an unreadable image), dropped by the collate.
    """

    def __init__(self, size: int, skip: List[int], offset: int = 0) -> None:
        self.size, self.skip, self.offset = size, set(skip), offset

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        if index in self.skip:
            return None
        base = torch.Generator().manual_seed(index + self.offset)
        image = torch.randn(IMAGE_SHAPE, generator=base)
        image = image + 0.1 * torch.rand(IMAGE_SHAPE)              # torch augmentation
        if random.random() < 0.5:                                  # python augmentation
            image = image.flip(-1)
        image = image * float(np.random.uniform(0.9, 1.1))         # numpy augmentation
        return {"image": image, "target": torch.tensor(float(index % 3)), "index": index}


def toy_collate(samples: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
    good = [s for s in samples if s is not None]
    batch: Dict[str, Any] = {"num_skipped": len(samples) - len(good)}
    if good:
        batch["image"] = torch.stack([s["image"] for s in good])
        batch["target"] = torch.stack([s["target"] for s in good])
        batch["index"] = torch.tensor([s["index"] for s in good])
    return batch


@registry.register_builder("toy_data", override=True)
class ToyBuilder:
    @dataclass
    class Config:
        num_train: int = 16
        num_val: int = 4
        skip_indices: List[int] = field(default_factory=list)
        marker_dir: str = ""        # prepare() writes prepared.txt here when set

    @classmethod
    def config_path(cls) -> Optional[str]:
        return None

    def __init__(self, config: Any) -> None:
        self.config = config

    def prepare(self) -> None:
        if self.config.marker_dir:
            os.makedirs(self.config.marker_dir, exist_ok=True)
            with open(os.path.join(self.config.marker_dir, "prepared.txt"), "a") as handle:
                handle.write("prepared\n")

    def build(self, split: str) -> Dataset:
        if split == "train":
            return ToyDataset(self.config.num_train, list(self.config.skip_indices))
        return ToyDataset(self.config.num_val, [], offset=1000)

    def collate_fn(self, split: str):
        return toy_collate


@registry.register_metric("toy_loss_metric", override=True)
class ToyLossMetric:
    """r_mean = -MSE of the model on the dataset (deterministic: eval mode, no augmentation use)."""

    def __init__(self, params: Any = None) -> None:
        self.params = params

    def evaluate(self, model: nn.Module, dataset: Dataset, context: Any) -> Dict[str, float]:
        assert not model.training, "the trainer must hand over the model in eval mode"
        with torch.random.fork_rng():
            batch = toy_collate([dataset[i] for i in range(len(dataset))])
            mse = float(model(batch)["losses"]["mse"])
        return {"r_mean": -mse, "mse": mse}


@registry.register_metric("toy_worsening", override=True)
class ToyWorseningMetric:
    """r_mean = -(number of training forwards): never improves after the first evaluation."""

    def __init__(self, params: Any = None) -> None:
        pass

    def evaluate(self, model: nn.Module, dataset: Dataset, context: Any) -> Dict[str, float]:
        return {"r_mean": -float(model.num_train_forwards)}


@registry.register_metric("toy_weights", override=True)
class ToyWeightsMetric:
    """A function of the weights alone (no data, no randomness): which weights were evaluated.

    ``num_train_forwards`` is a buffer of the model state, so it says the update of the weights."""

    def __init__(self, params: Any = None) -> None:
        pass

    def evaluate(self, model: nn.Module, dataset: Dataset, context: Any) -> Dict[str, float]:
        return {"weight_sum": float(sum(p.double().sum() for p in model.parameters())),
                "num_train_forwards": float(model.num_train_forwards)}


def make_config(save_dir: Any, *dotlist: str):
    """A root config for the toy run in ``save_dir``, then ``key=value`` overrides."""
    base = OmegaConf.merge(OmegaConf.structured(RootConfig), {
        "run_type": "train",
        "model": "toy_albef",
        "datasets": "toy_data",
        "model_config": {"toy_albef": OmegaConf.structured(ToyModel.Config)},
        "dataset_config": {"toy_data": OmegaConf.structured(ToyBuilder.Config)},
        "env": {"save_dir": str(save_dir)},
        "training": {"max_updates": 6, "batch_size": 4, "num_workers": 0, "log_interval": 1,
                     "checkpoint_interval": 100, "evaluation_interval": 0, "device": "cpu",
                     "tensorboard": False, "progress_bar": False, "plot": False,
                     "persistent_workers": False, "pin_memory": False},
        "evaluation": {"metrics": ["toy_loss_metric"]},
        "optimizer": {"type": "adam_w", "params": {"lr": 0.01, "weight_decay": 0.02}},
        "scheduler": {"type": "cosine_warmup",
                      "params": {"warmup_updates": 2, "warmup_lr": 0.001, "min_lr": 0.0001}},
    })
    return OmegaConf.merge(base, OmegaConf.from_dotlist(list(dotlist)))


def build_trainer(config):
    trainer = registry.get_trainer_class("albef_trainer")(config)
    trainer.load()
    return trainer


def run_trainer(config):
    trainer = build_trainer(config)
    trainer.run()
    return trainer


def read_records(save_dir: Any, kind: Optional[str] = None) -> List[Dict[str, Any]]:
    with open(os.path.join(str(save_dir), "metrics.jsonl")) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]


def load_ckpt(path: Any) -> Dict[str, Any]:
    return torch.load(str(path), map_location="cpu", weights_only=True)
