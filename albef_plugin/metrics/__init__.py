"""Evaluation metrics. Importing this package registers the ``retrieval`` metric."""
from albef_plugin.metrics.retrieval import RECALL_KS, itm_eval, recall_at_k, retrieval_ranks
from albef_plugin.metrics.retrieval_eval import (
    EncodedRetrievalSet,
    RetrievalEvaluator,
    RetrievalScores,
    autocast_for,
)

__all__ = [
    "RECALL_KS",
    "EncodedRetrievalSet",
    "RetrievalEvaluator",
    "RetrievalScores",
    "autocast_for",
    "itm_eval",
    "recall_at_k",
    "retrieval_ranks",
]
