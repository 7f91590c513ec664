"""``evaluation.metrics`` entries: short and long forms, typed params, errors naming the key path."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from albef_plugin.config import ConfigError, build_config
from albef_plugin.metrics import AccuracyMetric, MetricSpec, RetrievalEvaluator, parse_metric_specs
from albef_plugin.trainers.evaluation import build_metrics

DEMO = str(Path(__file__).resolve().parents[2] / "projects/albef/configs/demo/pretrain.yaml")
RETRIEVAL_DEFAULTS = {"k_test": 128, "itm_rerank": True, "itm_plus_itc": False, "itm_score": "logit",
                      "itm_center_candidates": False, "text_batch_size": 256, "itm_pairs_per_call": 512}


def test_short_form_gives_the_config_defaults():
    assert parse_metric_specs(["retrieval", "accuracy"]) == [
        MetricSpec("retrieval", RETRIEVAL_DEFAULTS), MetricSpec("accuracy", {"save_predictions": False})]


def test_long_form_params_override_the_defaults():
    specs = parse_metric_specs([{"type": "retrieval", "params": {"k_test": 256, "itm_rerank": False}},
                                {"type": "accuracy"}])
    assert specs[0] == MetricSpec("retrieval", {**RETRIEVAL_DEFAULTS, "k_test": 256, "itm_rerank": False})
    assert specs[1].params == {"save_predictions": False}


@pytest.mark.parametrize("metrics, message", [
    ([{"type": "retrieval", "params": {"k_tset": 3}}],
     r"Unknown config key 'evaluation.metrics\[0\].params.k_tset'.*Did you mean 'k_test'"),
    (["accuracy", {"type": "accuracy", "params": {"save_predictions": "maybe"}}],
     r"evaluation.metrics\[1\]: metric 'accuracy' is listed twice"),
    ([{"type": "accuracy", "params": {"save_predictions": "maybe"}}],
     r"Invalid value for 'evaluation.metrics\[0\].params.save_predictions'.*not a valid bool"),
    (["retrievl"], r"evaluation.metrics\[0\].type='retrievl': No metric named 'retrievl'. "
                   r"Did you mean 'retrieval'"),
    ([{"type": "retrieval", "param": {"k_test": 3}}], r"evaluation.metrics\[0\]: expected .*unknown key\(s\) param"),
    ([{"type": "retrieval", "params": {"k_test": 0}}],
     r"evaluation.metrics\[0\].params \(metric 'retrieval'\): k_test=0 must be >= 1"),
    ([{"type": "retrieval", "params": {"itm_score": "probability"}}],
     r"evaluation.metrics\[0\].params \(metric 'retrieval'\): itm_score='probability' is not one of "
     r"logit, log_odds"),
    ([3], r"evaluation.metrics\[0\]: expected a metric name"),
])
def test_mistakes_fail_naming_the_key_path(metrics, message):
    with pytest.raises(ConfigError, match=message):
        parse_metric_specs(metrics)


def test_build_metrics_constructs_each_from_its_params():
    class Evaluation:
        metrics = ["accuracy", {"type": "retrieval", "params": {"k_test": 16}}]

    metrics = build_metrics(Evaluation())
    assert list(metrics) == ["accuracy", "retrieval"]
    assert isinstance(metrics["accuracy"], AccuracyMetric)
    assert isinstance(metrics["retrieval"], RetrievalEvaluator) and metrics["retrieval"].config.k_test == 16


def test_run_config_checks_and_completes_metric_params_at_start():
    cfg = build_config([f"config={DEMO}"])
    # the demo config's long form, completed from the dataclass: config.yaml shows every value
    demo_params = OmegaConf.to_container(OmegaConf.load(DEMO).evaluation.metrics[0].params)
    assert set(demo_params) < set(RETRIEVAL_DEFAULTS)
    assert list(cfg.evaluation.metrics) == [
        {"type": "retrieval", "params": {**RETRIEVAL_DEFAULTS, **demo_params}}]
    cfg = build_config([f"config={DEMO}", "evaluation.metrics=[accuracy, {type: retrieval, params: {k_test: 8}}]"])
    assert [m.type for m in cfg.evaluation.metrics] == ["accuracy", "retrieval"]
    assert cfg.evaluation.metrics[1].params.k_test == 8
    with pytest.raises(ConfigError, match=r"evaluation.metrics\[0\].params.itm_reranc.*'itm_rerank'"):
        build_config([f"config={DEMO}", "evaluation.metrics=[{type: retrieval, params: {itm_reranc: false}}]"])
    # retrieval settings live in the metric's params now, not under evaluation
    with pytest.raises(ConfigError, match=r"Unknown config key 'evaluation.k_test'.*metrics, batch_size"):
        build_config([f"config={DEMO}", "evaluation.k_test=8"])
