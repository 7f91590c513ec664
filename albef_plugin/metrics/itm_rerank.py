"""Second stage of ALBEF retrieval: re-score each query's top-k ITC candidates with ITM.

Official protocol (``Retrieval.py:evaluation``): for each query row of the ITC
similarity matrix, take the ``k_test`` best candidates, score each (query, candidate)
pair with the fusion encoder's ITM head (logit of class 1, "matched"), and give every
other candidate -100. Rows are split across ranks and the score matrices summed.

Here several queries' candidates share one fusion call (``pairs_per_call`` pairs),
instead of one query (k pairs) per call. Each rank fills its own rows and leaves the
others at 0, so the SUM all-reduce gives every row exactly once (the official code
starts from -100 everywhere, which shifts each row by a constant: same ranking).
"""
from __future__ import annotations

import math
from typing import Callable, Tuple

import torch

from albef_plugin.distributed import all_reduce_sum, get_rank, get_world_size

__all__ = ["NOT_RERANKED_SCORE", "center_on_candidate_means", "rerank_top_k", "rows_of_rank"]

# Score of the candidates outside a query's top-k, as in the official code.
NOT_RERANKED_SCORE = -100.0

# (query indices (P,), candidate indices (P,)) -> ITM "match" logits (P,)
PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def rows_of_rank(num_rows: int, rank: int, world_size: int) -> Tuple[int, int]:
    """The contiguous ``[start, end)`` block of rows that ``rank`` re-ranks."""
    step = math.ceil(num_rows / world_size) if num_rows else 0
    start = min(num_rows, rank * step)
    return start, min(num_rows, start + step)


def rerank_top_k(sims: torch.Tensor, k: int, score_pairs: PairScorer, pairs_per_call: int,
                 add_itc: bool = False) -> torch.Tensor:
    """ITM scores for the top-``k`` ITC candidates of every query row, -100 elsewhere.

    Args:
        sims: ``(Q, C)`` ITC similarities (query rows, candidate columns).
        k: candidates re-scored per query; clamped to ``C``.
        score_pairs: maps ``(query_idx (P,), candidate_idx (P,))`` to ITM logits ``(P,)``.
        pairs_per_call: upper bound on ``P`` per call (at least ``k``: one query per call).
        add_itc: add the ITC similarity to the ITM logit (LAVIS variant; not the
            official ALBEF protocol).

    Returns:
        ``(Q, C)`` float32 scores, identical on every rank (all-reduced under
        distributed evaluation; each rank computes the rows of :func:`rows_of_rank`).
    """
    num_queries, num_candidates = sims.shape
    k = max(1, min(int(k), num_candidates))
    scores = torch.zeros(num_queries, num_candidates, dtype=torch.float32, device=sims.device)
    start, end = rows_of_rank(num_queries, get_rank(), get_world_size())
    rows_per_call = max(1, int(pairs_per_call) // k)

    for first in range(start, end, rows_per_call):
        last = min(end, first + rows_per_call)
        top_sims, top_idx = sims[first:last].topk(k, dim=1)              # (R, k)
        query_idx = torch.arange(first, last, device=sims.device).repeat_interleave(k)
        logits = score_pairs(query_idx, top_idx.reshape(-1)).float().view(last - first, k)
        if add_itc:
            logits = logits + top_sims.float()
        block = scores[first:last]
        block.fill_(NOT_RERANKED_SCORE)
        block.scatter_(1, top_idx, logits)
    return all_reduce_sum(scores)


def center_on_candidate_means(scores_i2t: torch.Tensor, scores_t2i: torch.Tensor
                              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Subtract from every re-ranked score the candidate's mean score as a query.

    ``scores_i2t`` ``(Ni, Nt)`` and ``scores_t2i`` ``(Nt, Ni)`` are the two outputs of
    :func:`rerank_top_k` (re-ranked entries, :data:`NOT_RERANKED_SCORE` elsewhere). In text
    retrieval a caption's score becomes its ITM score with the image minus its mean ITM score
    with its own top-k images (row of ``scores_t2i``); in image retrieval likewise for an
    image. A candidate the ITM head rates high with every image or caption (a caption form it
    favours, say) then loses that head start; within one query row every candidate is
    shifted by its own amount, so the order can change. The official protocol has no such
    step (not ALBEF's; a demo choice, see the README).
    """
    scored_i2t, scored_t2i = scores_i2t != NOT_RERANKED_SCORE, scores_t2i != NOT_RERANKED_SCORE
    # mean re-ranked score of each row: an image's over its top-k captions, a caption's over its
    # top-k images
    image_means = (scores_i2t * scored_i2t).sum(1) / scored_i2t.sum(1).clamp_min(1)
    text_means = (scores_t2i * scored_t2i).sum(1) / scored_t2i.sum(1).clamp_min(1)
    return (torch.where(scored_i2t, scores_i2t - text_means[None, :], scores_i2t),
            torch.where(scored_t2i, scores_t2i - image_means[None, :], scores_t2i))
