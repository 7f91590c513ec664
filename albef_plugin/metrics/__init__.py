"""Evaluation metrics. Importing this package registers ``retrieval``, ``accuracy``, ``vqa`` and
``grounding``.

The metric contract (``BaseMetric``, ``EvalContext``, ``evaluation.metrics`` entries) is in
:mod:`albef_plugin.metrics.base`.
"""
from albef_plugin.metrics.accuracy import AccuracyMetric
from albef_plugin.metrics.grounding import GroundingMetric
from albef_plugin.metrics.base import (BaseMetric, EvalContext, MetricSpec, ShardSampler, as_context,
                                       autocast_for, parse_metric_specs, to_device)
from albef_plugin.metrics.retrieval import RECALL_KS, itm_eval, recall_at_k, retrieval_ranks
from albef_plugin.metrics.retrieval_eval import EncodedRetrievalSet, RetrievalEvaluator, RetrievalScores
from albef_plugin.metrics.vqa import VQAMetric
from albef_plugin.metrics.vqa_accuracy import normalize_answer, vqa_accuracy

__all__ = [
    "RECALL_KS",
    "AccuracyMetric",
    "BaseMetric",
    "EncodedRetrievalSet",
    "EvalContext",
    "GroundingMetric",
    "MetricSpec",
    "RetrievalEvaluator",
    "RetrievalScores",
    "ShardSampler",
    "as_context",
    "autocast_for",
    "itm_eval",
    "parse_metric_specs",
    "recall_at_k",
    "retrieval_ranks",
    "to_device",
    "VQAMetric",
    "normalize_answer",
    "vqa_accuracy",
]
