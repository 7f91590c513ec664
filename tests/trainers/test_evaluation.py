"""Which logged key picks the best checkpoint, early stopping, evaluation over named splits, and
the weights the test splits are evaluated with after training."""
import logging
from types import SimpleNamespace
from typing import Any, Dict

import pytest
from omegaconf import OmegaConf
from torch.utils.data import Dataset

from albef_plugin.config.loader import ConfigError
from albef_plugin.registry import registry
from albef_plugin.trainers.build import build_datasets, parse_run_type
from albef_plugin.trainers.checkpointer import CheckpointError
from albef_plugin.trainers.evaluation import BestMetricTracker
from albef_plugin.trainers.test_weights import load_test_weights

from .toy_components import ToyBuilder, ToyDataset, load_ckpt, make_config, read_records, run_trainer

RETRIEVAL = {"val/coco/itc_txt_r_mean": 1.0, "val/coco/itc_r_mean": 2.0, "val/coco/itm_txt_r_mean": 3.0,
             "val/coco/itm_r_mean": 4.0, "val/flickr/itm_r_mean": 5.0}


@pytest.mark.parametrize("criteria, metrics, expected", [
    ("val/coco/itc_r_mean", RETRIEVAL, "val/coco/itc_r_mean"),          # an exact key
    ("val/flickr/itm_r_mean", RETRIEVAL, "val/flickr/itm_r_mean"),
    ("val/r_mean", {"val/a/mse": 1.0, "val/a/r_mean": 2.0, "val/b/r_mean": 3.0}, "val/a/r_mean"),
    ("val/r_mean", RETRIEVAL, "val/coco/itm_r_mean"),                    # the final (re-ranked) stage
    ("val/r_mean", {k: v for k, v in RETRIEVAL.items() if "itm" not in k}, "val/coco/itc_r_mean"),
    ("val/itc_r_mean", RETRIEVAL, "val/coco/itc_r_mean"),
    ("val/txt_r_mean", RETRIEVAL, "val/coco/itm_txt_r_mean"),
    ("val/accuracy", {"val/ve/accuracy": 80.0, "val/nlvr/accuracy": 70.0}, "val/ve/accuracy"),
])
def test_criteria_resolution(criteria, metrics, expected):
    assert BestMetricTracker(criteria).resolve_key(metrics) == expected


@pytest.mark.parametrize("criteria, metrics", [
    ("val/accuracy", RETRIEVAL),                           # no fallback to r_mean
    ("val/accuracy", {"val/a/mse": 1.0, "val/a/x_r_mean": 2.0}),
    ("val/r_mean", {"val/a/mse": 1.0, "val/b/r_mean": 2.0}),  # the first dataset does not report it
    ("val/coco/accuracy", RETRIEVAL),                      # a full key that was not reported
    ("test/r_mean", RETRIEVAL),                            # another split
    ("val/r_mean", {"val/coco/itm_txt_r_mean": 3.0}),      # txt_r_mean is not a stage of r_mean
])
def test_criteria_matching_nothing_is_an_error_listing_the_reported_keys(criteria, metrics):
    with pytest.raises(ConfigError, match=rf"criteria='{criteria}' matches no metric.*Reported: "
                                          rf"{list(metrics)[0]}"):
        BestMetricTracker(criteria).observe(metrics, update=1)


def test_best_tracking_and_patience():
    tracker = BestMetricTracker("val/loss", minimize=True, patience=3, enabled=True)
    assert tracker.observe({"val/d/loss": 2.0}, update=1)
    assert not tracker.observe({"val/d/loss": 2.5}, update=2)
    assert tracker.observe({"val/d/loss": 1.0}, update=3)
    assert not tracker.should_stop(5)
    assert tracker.should_stop(6)
    restored = BestMetricTracker("val/loss", minimize=True)
    restored.load_state_dict(tracker.state_dict())
    assert (restored.key, restored.value, restored.update) == ("val/d/loss", 1.0, 3)
    assert not restored.should_stop(100)                                 # early stop disabled


@pytest.mark.parametrize("run_type, expected", [
    ("train", (True, [])), ("val", (False, ["val"])), ("test", (False, ["test"])),
    ("train_val", (True, ["val"])), ("train_test", (True, ["test"])),
    ("train_val_test", (True, ["val", "test"])),
])
def test_run_type_names_split_roles(run_type, expected):
    assert parse_run_type(run_type) == expected


def test_unknown_run_type_is_refused():
    with pytest.raises(ValueError, match="run_type='testA'.*train_val_test"):
        parse_run_type("testA")


# ------------------------------------------------------------------ named splits in a run
@registry.register_builder("toy_grounding_like", override=True)
class ToyNamedSplits(ToyBuilder):
    """The toy data with grounding's splits: val, testA, testB (and train)."""

    split_roles = {"train": "train", "val": "val", "testA": "test", "testB": "test"}

    def splits(self) -> Dict[str, str]:
        return dict(self.split_roles)

    def build(self, split: str) -> Dataset:
        if split == "train":
            return ToyDataset(self.config.num_train, [])
        offset = {"val": 1000, "testA": 2000, "testB": 3000}[split]
        return ToyDataset(self.config.num_val + offset // 1000, [], offset=offset)


@registry.register_builder("toy_train_test_only", override=True)
class ToyTrainTestOnly(ToyBuilder):
    """A VQA-like dataset: train and test, no val."""

    def splits(self) -> Dict[str, str]:
        return {"train": "train", "test": "test"}


def config_with(dataset: str, tmp_path: Any, *dotlist: str):
    config = make_config(tmp_path, f"datasets={dataset}", *dotlist)
    config.dataset_config[dataset] = OmegaConf.structured(ToyBuilder.Config)
    return config


def named_config(tmp_path: Any, *dotlist: str):
    return config_with("toy_grounding_like", tmp_path, *dotlist)


def test_build_datasets_by_role(tmp_path):
    built = build_datasets(named_config(tmp_path), ["train", "test"])
    assert len(built.train) == 16
    assert list(built.eval) == ["testA", "testB"] and built.splits_with_role("test") == ["testA", "testB"]
    assert [len(built.eval[s]["toy_grounding_like"]) for s in ("testA", "testB")] == [6, 7]
    assert built.splits_with_role("val") == []
    assert built.declared["toy_grounding_like"]["testB"] == "test"


def test_run_type_test_evaluates_every_test_role_split_and_val_picks_best(tmp_path):
    run_trainer(named_config(tmp_path, "run_type=train_val_test", "training.max_updates=4",
                             "training.evaluation_interval=2"))
    evals = read_records(tmp_path, "eval")
    # periodic val at 2 and 4 (the final val is not repeated), then testA and testB at the end
    assert [(r["split"], r["update"]) for r in evals] == [("val", 2), ("val", 4), ("testA", 4),
                                                          ("testB", 4)]
    assert "testA/toy_grounding_like/r_mean" in evals[2] and "testB/toy_grounding_like/mse" in evals[3]
    best = load_ckpt(tmp_path / "best.ckpt")
    assert best["best"]["key"] == "val/toy_grounding_like/r_mean"


def test_criteria_error_at_the_first_evaluation(tmp_path):
    with pytest.raises(ConfigError, match=r"criteria='val/accuracy' matches no metric.*"
                                          r"val/toy_data/r_mean, val/toy_data/mse"):
        run_trainer(make_config(tmp_path, "run_type=train_val", "training.max_updates=4",
                                "training.evaluation_interval=2", "training.early_stop.criteria=val/accuracy"))
    assert [r["update"] for r in read_records(tmp_path, "eval")] == [2]  # stopped at the first


def test_run_type_asking_for_an_undeclared_role_is_an_error(tmp_path):
    config = config_with("toy_train_test_only", tmp_path, "run_type=train_val")
    config.dataset_config.toy_train_test_only.marker_dir = str(tmp_path / "marker")
    with pytest.raises(ConfigError, match=r"run_type=train_val evaluates the val splits.*"
                                          r"toy_train_test_only: train \(train\), test \(test\)"):
        run_trainer(config)
    assert not (tmp_path / "marker").exists()  # refused before preparing or building anything


def test_periodic_evaluation_without_val_split_trains_and_tests(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="albef_plugin"):
        run_trainer(config_with("toy_train_test_only", tmp_path, "run_type=train_test",
                                "training.max_updates=2", "training.evaluation_interval=1"))
    (record,) = read_records(tmp_path, "eval")
    assert record["split"] == "test"
    assert not (tmp_path / "best.ckpt").exists()
    # VQA's protocol: no val split, so the last weights are tested, and the log says why
    assert (record["weights"], record["weights_update"]) == ("last", 2)
    assert "test metrics of the last weights (update 2): no val split was evaluated" in caplog.text


TEST_WEIGHT_RUN = ("run_type=train_val_test", "training.max_updates=6", "training.evaluation_interval=2",
                   "evaluation.metrics=[toy_worsening,toy_weights]")


@pytest.mark.parametrize("test_weights, weights_update, source, log_line", [
    ("best", 2, "best.ckpt", "test metrics of best.ckpt (update 2, val/toy_data/r_mean = -2.0000)"),
    ("last", 6, "current.ckpt", "test metrics of the last weights (update 6; evaluation.test_weights=last)"),
])
def test_the_test_splits_are_evaluated_with_the_chosen_weights(tmp_path, caplog, test_weights,
                                                               weights_update, source, log_line):
    # toy_worsening (r_mean = -training forwards) is best at the first val evaluation: update 2 of 6
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="albef_plugin"):
        run_trainer(make_config(run_dir, *TEST_WEIGHT_RUN, f"evaluation.test_weights={test_weights}"))
    evals = read_records(run_dir, "eval")
    assert [(r["split"], r["update"]) for r in evals] == [("val", 2), ("val", 4), ("val", 6), ("test", 6)]
    assert load_ckpt(run_dir / "best.ckpt")["train_state"]["update"] == 2
    test = evals[-1]
    assert (test["weights"], test["weights_update"]) == (test_weights, weights_update)
    assert test["test/toy_data/num_train_forwards"] == weights_update  # one forward per update
    assert log_line in caplog.text
    # the same numbers as a test-only run of that checkpoint
    run_trainer(make_config(tmp_path / "alone", "run_type=test", "evaluation.metrics=[toy_worsening,toy_weights]",
                            f"checkpoint.resume_file={run_dir / source}"))
    (alone,) = read_records(tmp_path / "alone", "eval")
    assert {k: v for k, v in test.items() if k.startswith("test/")} == \
        {k: v for k, v in alone.items() if k.startswith("test/")}
    if test_weights == "best":  # and not those of the last weights
        assert test["test/toy_data/weight_sum"] != evals[2]["val/toy_data/weight_sum"]


def _after_training(tmp_path, best_update, best_value=-1.0):
    """What load_test_weights reads of a trainer that ended at update 6."""
    from albef_plugin.trainers.checkpointer import Checkpointer

    best = BestMetricTracker("val/r_mean")
    best.key, best.update, best.value = "val/toy_data/r_mean", best_update, best_value
    return SimpleNamespace(state=SimpleNamespace(update=6), best=best, config=make_config(tmp_path),
                           checkpointer=Checkpointer(str(tmp_path)), model=None)


def test_a_recorded_best_without_its_file_is_an_error_and_a_never_finite_best_tests_the_last(tmp_path,
                                                                                               caplog):
    with pytest.raises(CheckpointError, match=r"best\.ckpt is missing, but the best val/toy_data/r_mean "
                                              r"of this run is at update 2.*evaluation\.test_weights=last"):
        load_test_weights(_after_training(tmp_path, best_update=2))
    with caplog.at_level(logging.WARNING, logger="albef_plugin"):
        weights = load_test_weights(_after_training(tmp_path, best_update=None, best_value=None))
    assert weights == {"weights": "last", "weights_update": 6}
    assert "no val evaluation gave a finite val/toy_data/r_mean" in caplog.text
