"""Recall@K for image-text retrieval: the official ALBEF ``itm_eval``, vectorised.

Definitions (official ``Retrieval.py:itm_eval``):

- text retrieval (TR, image -> text): for each image, the rank is the best position
  among its ground-truth captions when all captions are sorted by descending score;
- image retrieval (IR, text -> image): for each caption, the position of its one
  ground-truth image;
- R@K = 100 * fraction of queries whose rank < K, for K = 1, 5, 10.

The official code sorts every row with ``np.argsort`` inside a Python loop. Here the
rank of a query is computed without sorting, as the number of *negative* candidates
scoring at least as high as its best positive. Without ties this is exactly the
sorted position. With ties the positive is placed after the tied negatives
(pessimistic): the official order among tied scores depends on numpy's unstable sort,
and a pessimistic rule cannot inflate recall (a model giving every pair the same
score gets ~0, not 100).
"""
from __future__ import annotations

import logging
from typing import Dict, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["RECALL_KS", "format_recall_table", "itm_eval", "recall_at_k", "retrieval_ranks"]

logger = logging.getLogger(__name__)

RECALL_KS: Tuple[int, ...] = (1, 5, 10)

# Rows compared at once: bounds the temporary boolean matrix to about 64M entries
# for 25K COCO captions, instead of the full 5K x 25K.
_ROW_CHUNK_ELEMENTS = 1 << 26

ScoreMatrix = Union[torch.Tensor, np.ndarray]


def _as_float_tensor(scores: ScoreMatrix, name: str) -> torch.Tensor:
    scores = torch.as_tensor(scores)
    if scores.dim() != 2:
        raise ValueError(f"{name} must be a 2-D score matrix [queries, candidates], "
                         f"got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        scores = scores.float()
    # row blocks of a transposed view are strided: one contiguous copy makes the comparisons faster
    scores = scores.contiguous()
    if scores.numel() and torch.isnan(scores.max()):  # max propagates NaN; no bool matrix
        raise ValueError(f"{name} contains NaN scores; ranks would be meaningless. "
                         f"Check the model outputs (e.g. fp16 overflow) before evaluating.")
    return scores


def _flatten_positives(positives: Sequence[Sequence[int]], num_candidates: int,
                       name: str, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Turn ragged per-query positive lists into flat (query_index, candidate_index) pairs."""
    lengths = torch.tensor([len(p) for p in positives], dtype=torch.long)
    flat = [int(c) for p in positives for c in p]
    cols = torch.tensor(flat, dtype=torch.long)
    if cols.numel() and (cols.min() < 0 or cols.max() >= num_candidates):
        bad = cols[(cols < 0) | (cols >= num_candidates)][0].item()
        raise ValueError(f"{name} refers to candidate {bad}, outside [0, {num_candidates}); "
                         f"the ground-truth lists do not match the score matrix.")
    rows = torch.repeat_interleave(torch.arange(len(positives)), lengths)
    return rows.to(device), cols.to(device)


def retrieval_ranks(scores: ScoreMatrix, positives: Sequence[Sequence[int]],
                    name: str = "scores") -> torch.Tensor:
    """Rank of the best-scored positive candidate of every query (0 = top of the list).

    Args:
        scores: ``(Q, C)`` similarity of each query to each candidate (higher = better).
        positives: ``Q`` lists of ground-truth candidate indices (at least one each;
            a query without any positive is counted as a miss, as in the official code).
        name: used in error messages.

    Returns:
        ``(Q,)`` long tensor: the number of negative candidates scoring at least as high
        as the query's best positive. Queries without positives get ``C`` (never a hit).
    """
    return _ranks(_as_float_tensor(scores, name), positives, name)


def _ranks(scores: torch.Tensor, positives: Sequence[Sequence[int]], name: str) -> torch.Tensor:
    """:func:`retrieval_ranks` on an already validated float tensor."""
    num_queries, num_candidates = scores.shape
    if len(positives) != num_queries:
        raise ValueError(f"{name} has {num_queries} rows but {len(positives)} ground-truth "
                         f"lists were given; they must match one to one.")
    rows, cols = _flatten_positives(positives, num_candidates, name, scores.device)

    positive_scores = scores[rows, cols]
    best_positive = torch.full((num_queries,), float("-inf"), dtype=scores.dtype,
                               device=scores.device)
    best_positive.scatter_reduce_(0, rows, positive_scores, reduce="amax")

    # positives tied with or above the best one are not negatives: subtract them
    positives_at_or_above = torch.zeros(num_queries, dtype=torch.long, device=scores.device)
    positives_at_or_above.scatter_add_(0, rows, (positive_scores >= best_positive[rows]).long())

    at_or_above = torch.empty(num_queries, dtype=torch.long, device=scores.device)
    chunk = max(1, _ROW_CHUNK_ELEMENTS // max(1, num_candidates))
    for start in range(0, num_queries, chunk):
        block = scores[start:start + chunk]
        at_or_above[start:start + chunk] = (block >= best_positive[start:start + chunk, None]).sum(1)
    ranks = at_or_above - positives_at_or_above

    has_positive = torch.zeros(num_queries, dtype=torch.bool, device=scores.device)
    has_positive[rows] = True
    if not bool(has_positive.all()):
        missing = int((~has_positive).sum())
        logger.warning("%s: %d of %d queries have no ground-truth candidate; counted as misses",
                       name, missing, num_queries)
        ranks[~has_positive] = num_candidates
    return ranks


def recall_at_k(ranks: torch.Tensor, ks: Sequence[int] = RECALL_KS) -> Dict[int, float]:
    """``{K: 100 * fraction of ranks < K}`` as plain floats."""
    if ranks.numel() == 0:
        raise ValueError("recall_at_k needs at least one query; the evaluation set is empty.")
    return {k: 100.0 * float((ranks < k).double().mean()) for k in ks}


def itm_eval(scores_i2t: ScoreMatrix, scores_t2i: ScoreMatrix,
             img2txt: Sequence[Sequence[int]], txt2img: Sequence[int]) -> Dict[str, float]:
    """Text and image retrieval recalls, with the official ALBEF keys.

    Args:
        scores_i2t: ``(Ni, Nt)`` score of every caption for every image.
        scores_t2i: ``(Nt, Ni)`` score of every image for every caption.
        img2txt: ``Ni`` lists of the caption indices describing each image.
        txt2img: ``Nt`` image indices, the one image of each caption.

    Returns:
        ``txt_r1, txt_r5, txt_r10, txt_r_mean, img_r1, img_r5, img_r10, img_r_mean, r_mean``
        as floats in [0, 100].
    """
    scores_i2t = _as_float_tensor(scores_i2t, "scores_i2t")
    scores_t2i = _as_float_tensor(scores_t2i, "scores_t2i")
    if scores_t2i.shape != scores_i2t.shape[::-1]:
        raise ValueError(f"scores_t2i has shape {tuple(scores_t2i.shape)} but scores_i2t has "
                         f"{tuple(scores_i2t.shape)}; scores_t2i must be [Nt, Ni].")

    text_ranks = _ranks(scores_i2t, img2txt, name="scores_i2t (text retrieval)")
    image_ranks = _ranks(scores_t2i, [[int(i)] for i in txt2img], name="scores_t2i (image retrieval)")
    txt = recall_at_k(text_ranks)
    img = recall_at_k(image_ranks)

    result: Dict[str, float] = {}
    for k in RECALL_KS:
        result[f"txt_r{k}"] = txt[k]
    result["txt_r_mean"] = sum(txt.values()) / len(txt)
    for k in RECALL_KS:
        result[f"img_r{k}"] = img[k]
    result["img_r_mean"] = sum(img.values()) / len(img)
    result["r_mean"] = (result["txt_r_mean"] + result["img_r_mean"]) / 2
    return result


def format_recall_table(results: Dict[str, float]) -> str:
    """A table of TR/IR R@1/5/10 per ranking found in ``results`` ('' when there is none).

    Keys look like ``<prefix>/<ranking>_txt_r1`` (e.g. ``test/demo_pretrain/itc_txt_r1``);
    one row per ``<prefix>/<ranking>``.
    """
    columns = [f"{side}_r{k}" for side in ("txt", "img") for k in RECALL_KS]
    rows = sorted({key[: -len("_txt_r1")] for key in results if key.endswith("_txt_r1")})
    if not rows:
        return ""
    width = max(len(row) for row in rows)
    header = f"{'ranking':<{width}} | " + " | ".join(
        f"{'TR' if c.startswith('txt') else 'IR'}@{c.rsplit('r', 1)[1]:<3}" for c in columns)
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = [f"{results.get(f'{row}_{c}', float('nan')):6.2f}" for c in columns]
        lines.append(f"{row:<{width}} | " + " | ".join(cells))
    return "\n".join(lines)
