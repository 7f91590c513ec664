"""Capture and restore the global random generators (python, numpy, torch CPU, CUDA).

States are stored as tensors and plain containers so checkpoints load with
``torch.load(weights_only=True)``. Every rank has its own stream (seeded with
``seed + rank``), so the checkpoint keeps one state per rank.
"""
from __future__ import annotations

import logging
import random
from typing import Any, Dict, List

import numpy as np
import torch
import torch.distributed as dist

from albef_plugin.distributed import get_rank, get_world_size, is_distributed

logger = logging.getLogger(__name__)

__all__ = ["seed_everything", "capture_rng_state", "restore_rng_state", "gather_rng_states"]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> Dict[str, Any]:
    """This process's generator states, as tensors / tuples of ints (weights_only-safe)."""
    version, mt_words, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: Dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt_words, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    python = state["python"]
    random.setstate((python["version"], tuple(int(x) for x in python["state"].tolist()),
                     python["gauss_next"]))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"],
                         numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning("checkpoint has CUDA RNG states for %d devices, this machine has %d: "
                           "CUDA random streams are not restored", len(cuda_states),
                           torch.cuda.device_count())


def gather_rng_states() -> List[Dict[str, Any]]:
    """The RNG state of every rank, in rank order (a collective: call on all ranks).

    torch.distributed's object gather is used directly because the states are small
    python containers; this is the only collective outside ``albef_plugin.distributed``.
    """
    mine = capture_rng_state()
    if not is_distributed() or get_world_size() == 1:
        return [mine]
    states: List[Any] = [None] * get_world_size()
    dist.all_gather_object(states, mine)
    return states


def restore_rank_rng_state(states: List[Dict[str, Any]], fallback_seed: int) -> bool:
    """Restore this rank's state from a checkpoint's list; reseed when the world size changed.

    Returns True when the exact stream was restored.
    """
    rank, world_size = get_rank(), get_world_size()
    if len(states) == world_size:
        restore_rng_state(states[rank])
        return True
    logger.warning("checkpoint holds RNG states of %d processes but this run has %d: random "
                   "streams are reseeded (seed %d + rank), so the continuation is not bit-exact",
                   len(states), world_size, fallback_seed)
    seed_everything(fallback_seed + rank)
    return False
