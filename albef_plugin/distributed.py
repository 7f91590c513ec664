"""Everything distributed lives here: init from the environment, rank helpers, gathers.

Launchers set the environment (torchrun, ``srun``, submitit); this module reads it.
Models and losses never read environment variables themselves.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from typing import Any, Dict, Iterator, List

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))


def rank_from_env() -> int:
    """This process's global rank as the launcher set it, before joining the group."""
    if is_distributed():
        return get_rank()
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed() and get_world_size() > 1:
        dist.barrier()


def _env_from_slurm() -> None:
    """Fill torch's env:// variables from a plain ``srun`` launch (one task per GPU)."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in os.environ:
        nodelist = os.environ.get("SLURM_STEP_NODELIST", os.environ.get("SLURM_NODELIST", "localhost"))
        # first host of a list like "node[01-04],other": good enough for the common forms
        first = nodelist.split(",")[0]
        if "[" in first:
            prefix, rest = first.split("[", 1)
            first = prefix + rest.split("-")[0].split("]")[0]
        os.environ["MASTER_ADDR"] = first
    if "MASTER_PORT" not in os.environ:
        job_id = int(os.environ.get("SLURM_JOB_ID", "0"))
        os.environ["MASTER_PORT"] = str(20000 + job_id % 20000)


def init_distributed(backend: str = "auto", timeout_minutes: int = 30) -> bool:
    """Join the process group described by the environment, if any.

    Returns True when running with more than one process. A single process (plain
    ``python tools/run.py``) stays non-distributed. ``backend="auto"`` picks NCCL
    when CUDA is available, else gloo.
    """
    if is_distributed():
        return get_world_size() > 1
    _env_from_slurm()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        logger.info("distributed: rank 0 of 1 (a single process, no process group)")
        return False
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(get_local_rank())
    dist.init_process_group(backend=backend, init_method="env://",
                            timeout=datetime.timedelta(minutes=timeout_minutes))
    logger.info("distributed: rank %d of %d, backend %s, master %s:%s", get_rank(), world_size,
                backend, os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"))
    return True


def destroy_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


@torch.no_grad()
def all_gather_concat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0 (no gradient). Identity when alone."""
    world_size = get_world_size()
    if world_size == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it. Identity when alone."""
    if get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def reduce_dict_mean(values: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Average a dict of scalar tensors over ranks (for logging)."""
    if get_world_size() == 1 or not values:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in keys])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    stacked /= get_world_size()
    return dict(zip(keys, stacked))


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if get_world_size() == 1:
        return obj
    holder: List[Any] = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Let rank 0 do a job (write data, build caches) before the other ranks read it."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DistributedDataParallel (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
