"""Which logged key picks the best checkpoint, and early stopping."""
import pytest

from albef_plugin.trainers.evaluation import BestMetricTracker

RETRIEVAL = {"val/coco/itc_txt_r_mean": 1.0, "val/coco/itc_r_mean": 2.0, "val/coco/itm_txt_r_mean": 3.0,
             "val/coco/itm_r_mean": 4.0, "val/flickr/itm_r_mean": 5.0}


@pytest.mark.parametrize("criteria, metrics, expected", [
    ("val/coco/itc_r_mean", RETRIEVAL, "val/coco/itc_r_mean"),          # an exact key
    ("val/r_mean", {"val/a/mse": 1.0, "val/a/r_mean": 2.0, "val/b/r_mean": 3.0}, "val/a/r_mean"),
    ("val/r_mean", RETRIEVAL, "val/coco/itm_r_mean"),                    # the final stage
    ("val/itc_r_mean", RETRIEVAL, "val/coco/itc_r_mean"),
    ("val/accuracy", {"val/a/mse": 1.0, "val/a/x_r_mean": 2.0}, "val/a/x_r_mean"),  # fallback
    ("val/accuracy", {"val/a/mse": 1.0}, "val/a/mse"),
])
def test_criteria_resolution(criteria, metrics, expected):
    assert BestMetricTracker(criteria).resolve_key(metrics) == expected


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
