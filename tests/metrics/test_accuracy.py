"""The ``accuracy`` metric: arg-max of the model's logits against ``batch["label"]``, summed over ranks."""
import json
import threading
from typing import Any, Dict, List

import pytest
import torch
from torch import nn

import albef_plugin.metrics.accuracy as accuracy_module
import albef_plugin.metrics.base as metric_base
from albef_plugin.metrics import AccuracyMetric, EvalContext
from albef_plugin.registry import registry

LABELS = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1]
# the fake model predicts x; 8 of the 11 predictions are right
PREDICTIONS = [0, 1, 2, 0, 1, 0, 0, 2, 2, 0, 0]
EXPECTED = 100.0 * 8 / 11


class Samples(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return len(LABELS)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return {"x": PREDICTIONS[i], "label": LABELS[i], "index": i}


def collate(samples: List[Dict[str, Any]], with_index: bool = True) -> Dict[str, torch.Tensor]:
    batch = {key: torch.tensor([s[key] for s in samples]) for key in ("x", "label", "index")}
    if not with_index:
        del batch["index"]
    return batch


class OneHotClassifier(nn.Module):
    """Eval-mode output ``{"logits": one-hot of batch["x"] over 3 classes}``."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        assert not self.training
        self.calls += 1
        return {"logits": nn.functional.one_hot(batch["x"], 3).float() * self.scale}


def context(**kwargs: Any) -> EvalContext:
    return EvalContext(**{"batch_size": 4, "num_workers": 0, "collate_fn": collate,
                          "split": "test", "dataset_name": "toy_ve", **kwargs})


def test_registered_with_typed_config():
    assert registry.get_metric_class("accuracy") is AccuracyMetric
    assert AccuracyMetric().config.save_predictions is False
    with pytest.raises(ValueError, match="unknown parameter.*save_prediction"):
        AccuracyMetric({"save_prediction": True})


def test_accuracy_in_percent_and_model_mode_restored():
    model = OneHotClassifier().train()
    result = AccuracyMetric().evaluate(model, Samples(), context())
    assert result == {"accuracy": pytest.approx(EXPECTED)}
    assert model.training and model.calls == 3  # 11 samples in batches of 4


def test_predictions_file_in_dataset_order(tmp_path):
    metric = AccuracyMetric({"save_predictions": True})
    metric.evaluate(OneHotClassifier(), Samples(), context(output_dir=str(tmp_path)))
    rows = json.loads((tmp_path / "test_toy_ve_predictions.json").read_text())
    assert rows == [{"index": i, "prediction": p, "label": y}
                    for i, (p, y) in enumerate(zip(PREDICTIONS, LABELS))]
    # no file unless asked, and none without an output dir
    AccuracyMetric().evaluate(OneHotClassifier(), Samples(), context(output_dir=str(tmp_path), split="val"))
    metric.evaluate(OneHotClassifier(), Samples(), context(split="val"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test_toy_ve_predictions.json"]


def test_two_ranks_sum_their_counts_and_gather_predictions(tmp_path, monkeypatch):
    """Two threads play rank 0 and rank 1 with fake collectives (a barrier and a sum)."""
    world_size, local = 2, threading.local()
    barrier = threading.Barrier(world_size)
    slots: List[Any] = [None] * world_size

    def exchange(value: Any) -> List[Any]:
        slots[local.rank] = value
        barrier.wait()
        everything = list(slots)
        barrier.wait()  # nobody overwrites a slot before every rank has read them all
        return everything

    def fake_all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.copy_(sum(exchange(tensor.clone())))

    def fake_gather(rows: List[Any]) -> List[Any]:
        return [row for part in exchange(rows) for row in part]

    for module in (metric_base, accuracy_module):
        monkeypatch.setattr(module, "get_rank", lambda: local.rank)
        monkeypatch.setattr(module, "get_world_size", lambda: world_size)
    monkeypatch.setattr(metric_base, "is_main_process", lambda: local.rank == 0)
    monkeypatch.setattr(accuracy_module, "all_reduce_sum", fake_all_reduce_sum)
    monkeypatch.setattr(accuracy_module, "_gather_lists", fake_gather)

    results: Dict[int, Any] = {}
    models = {rank: OneHotClassifier() for rank in range(world_size)}

    def rank_main(rank: int) -> None:
        local.rank = rank
        # without batch["index"]: positions come from the shard order (rank + i * world_size)
        ctx = context(output_dir=str(tmp_path / f"rank{rank}"), collate_fn=lambda s: collate(s, False))
        results[rank] = AccuracyMetric({"save_predictions": True}).evaluate(models[rank], Samples(), ctx)

    threads = [threading.Thread(target=rank_main, args=(rank,)) for rank in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results[0] == results[1] == {"accuracy": pytest.approx(EXPECTED)}
    assert [models[r].calls for r in range(world_size)] == [2, 2]  # 6 and 5 samples, batches of 4
    rows = json.loads((tmp_path / "rank0" / "test_toy_ve_predictions.json").read_text())
    assert [(r["index"], r["prediction"], r["label"]) for r in rows] == list(
        zip(range(len(LABELS)), PREDICTIONS, LABELS))
    assert not (tmp_path / "rank1").exists()  # rank 0 alone writes


def test_contract_errors_name_what_is_missing():
    no_label = context(collate_fn=lambda s: {"x": torch.tensor([x["x"] for x in s])})
    with pytest.raises(KeyError, match="test/toy_ve: the batch has no 'label'"):
        AccuracyMetric().evaluate(OneHotClassifier(), Samples(), no_label)

    class NoLogits(nn.Module):
        def forward(self, batch):
            return {"scores": batch["x"].float()}

    with pytest.raises(TypeError, match=r"NoLogits\(batch\) in eval mode must return .*'scores'"):
        AccuracyMetric().evaluate(NoLogits(), Samples(), context())
    with pytest.raises(ValueError, match="no samples were evaluated"):
        AccuracyMetric().evaluate(OneHotClassifier(), torch.utils.data.Subset(Samples(), []), context())
