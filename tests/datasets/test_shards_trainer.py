"""Training from shards through the trainer: exact resume of the stream, alone and mixed with JSON.

A probe model records the image ids of every training batch; its loss uses dropout and
``torch.randn`` so that equal losses also mean equal random streams.
"""
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import torch
import torch._dynamo  # noqa: F401  (imported before forking the DDP ranks: faster start)
import torch.multiprocessing as mp
from torch import nn

from albef_plugin.config import build_config
from albef_plugin.datasets.synthetic.shards import write_world_shards
from albef_plugin.distributed import destroy_distributed, init_distributed
from albef_plugin.registry import registry

K = 4  # checkpoint after K updates (mid-epoch), then K more


@registry.register_model("shard_probe", override=True)
class ShardProbe(nn.Module):
    @dataclass
    class Config:
        dropout: float = 0.2

    @classmethod
    def config_path(cls) -> Optional[str]:
        return None

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.dropout = nn.Dropout(config.dropout)
        self.seen: List[List[int]] = []

    def forward(self, batch: Dict[str, torch.Tensor], train_state: Any = None) -> Dict[str, Any]:
        if self.training:
            self.seen.append(batch["image_id"].tolist())
        pixels = self.dropout(batch["image"].mean((2, 3)))
        target = batch["attention_mask"].sum(1).float() / 10 + 0.01 * torch.randn(())
        return {"losses": {"mse": ((self.linear(pixels).squeeze(-1) - target) ** 2).mean()}}


@pytest.fixture(scope="module")
def shard_dir(tiny_world, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trainer_shards") / "shards"
    write_world_shards(tiny_world, 5, out=folder)
    (folder / "00003.tar").write_bytes(b"not a tar" * 100)   # counted and skipped in every pass
    return folder


def run(save_dir, tiny_world, shard_dir, datasets, *overrides, open_shards=1):
    config_file = save_dir.parent / f"{save_dir.name}.yaml"
    config_file.write_text(json.dumps({
        "model": "shard_probe", "datasets": datasets, "run_type": "train",
        "dataset_config": {
            "albef_pretrain_shards": {"data_dir": str(shard_dir), "shards": ["{00000..00003}.tar"],
                                      "samples_per_epoch": 14, "image_size": 16, "weight": 2.0,
                                      "open_shards": open_shards},
            "albef_pretrain_json": {"data_dir": str(tiny_world), "image_size": 16, "weight": 1.0,
                                    "annotations": {"train": ["pretrain.json"]}},
        },
        "training": {"max_updates": 2 * K, "batch_size": 2, "num_workers": 0, "log_interval": 1,
                     "checkpoint_interval": K, "evaluation_interval": 0, "device": "cpu",
                     "tensorboard": False, "progress_bar": False, "plot": False, "pin_memory": False},
        "evaluation": {"metrics": []},
        "optimizer": {"type": "adam_w", "params": {"lr": 0.01}},
        "scheduler": {"type": "cosine_warmup", "params": {"warmup_updates": 2}},
        "env": {"save_dir": str(save_dir)},
    }))
    config = build_config([f"config={config_file}", *overrides])
    trainer = registry.get_trainer_class("albef_trainer")(config)
    trainer.load()
    trainer.run()
    return trainer


def records(save_dir, kind):
    lines = (save_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


@pytest.mark.parametrize("datasets, open_shards", [("albef_pretrain_shards", 1),
                                                   ("albef_pretrain_shards,albef_pretrain_json", 3)])
def test_resumed_run_continues_the_stream_exactly(tmp_path, tiny_world, shard_dir, datasets, open_shards):
    full = run(tmp_path / "full", tiny_world, shard_dir, datasets, open_shards=open_shards)
    snapshot = tmp_path / "full" / "models" / f"model_{K}.ckpt"
    data = torch.load(snapshot, map_location="cpu", weights_only=True)["data"]
    assert data["iteration_in_epoch"] == K and len(data["stream"]) == 1      # mid-epoch, one rank
    resumed = run(tmp_path / "resumed", tiny_world, shard_dir, datasets, f"checkpoint.resume_file={snapshot}",
                  open_shards=open_shards)
    assert resumed.model.seen == full.model.seen[K:]                         # no repeat, no skip
    losses = {r["update"]: r["train/mse"] for r in records(tmp_path / "full", "train")}
    for r in records(tmp_path / "resumed", "train"):
        assert r["train/mse"] == pytest.approx(losses[r["update"]], abs=1e-6), r["update"]
    if open_shards == 1:
        first_pass = [i for batch in full.model.seen[:6] for i in batch]    # 12 images in 3 good shards
        assert sorted(first_pass) == list(range(12))
        # the non-tar shard was met in the first pass (14 samples per epoch, 1 epoch of 7 batches)
        assert records(tmp_path / "full", "epoch")[0]["num_skipped"] >= 1


def _ddp_worker(rank: int, tmp: str, world: str, shards: str, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert init_distributed(backend="gloo", timeout_minutes=1)
    try:
        tmp_path = Path(tmp)
        # 14 samples per epoch / (2 ranks x batch 2) = 3 batches per rank and epoch; 8 updates
        # run through 2 epochs and more with 4 shards (one not a tar) dealt to 2 ranks
        full = run(tmp_path / "full", Path(world), Path(shards), "albef_pretrain_shards", open_shards=2)
        resumed = run(tmp_path / "resumed", Path(world), Path(shards), "albef_pretrain_shards",
                      f"checkpoint.resume_file={tmp_path / 'full' / 'models' / f'model_{K}.ckpt'}",
                      open_shards=2)
        torch.save({"full": full.model.seen, "resumed": resumed.model.seen}, tmp_path / f"rank{rank}.pt")
    finally:
        destroy_distributed()


def test_two_ranks_train_on_shards_and_resume_exactly(tmp_path, tiny_world, shard_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(str(tmp_path), str(tiny_world), str(shard_dir), port),
                       nprocs=2, join=True, start_method="fork")
    seen = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for rank in range(2):
        assert len(seen[rank]["full"]) == 2 * K                              # no rank ran dry
        assert seen[rank]["resumed"] == seen[rank]["full"][K:]
    # the ranks start on different shards of the first pass: their first batches never overlap
    assert not set(seen[0]["full"][0]) & set(seen[1]["full"][0])
    data = torch.load(tmp_path / "full" / "models" / f"model_{K}.ckpt", weights_only=True)["data"]
    assert len(data["stream"]) == 2 and data["stream"][0] != data["stream"][1]
    assert [r["epoch"] for r in records(tmp_path / "full", "epoch")] == [0, 1]
