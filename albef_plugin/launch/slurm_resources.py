"""What a SLURM partition can grant, read with ``sinfo`` at submission.

A job asking for more CPUs, GPUs, nodes or time than any node of its partition has is
accepted by ``sbatch`` and then stays pending forever (``PD (PartitionConfig)``), which
a user only finds out by asking ``squeue``. The launcher checks the request here first
and either fills unset resources with what the partition offers or fails with the reason.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from albef_plugin.launch.errors import LaunchError

__all__ = ["default_signal_delay_s", "PartitionInfo", "query_partition", "parse_sinfo", "parse_time_limit_min",
           "parse_gpu_count", "resolve_resources", "DEFAULT_MAX_CPUS_PER_TASK"]

# A single task on a big node would otherwise ask for all its cores.
DEFAULT_MAX_CPUS_PER_TASK = 10
_SINFO_FORMAT = "%P|%a|%c|%D|%G|%l|%m"


@dataclass
class PartitionInfo:
    """The largest node of a partition (nodes of one partition may differ)."""
    name: str
    available: bool
    cpus_per_node: int
    gpus_per_node: int
    num_nodes: int
    time_limit_min: Optional[int]      # None: no limit
    memory_mb: int = 0                 # per node (0: unknown)
    node_kinds: List[str] = field(default_factory=list)  # "CPUS cpus, GRES" per node kind


def default_signal_delay_s(timeout_min: int) -> int:
    """USR2 lead time before the time limit: 120 s, at most a quarter of the job's time."""
    return max(10, min(120, timeout_min * 60 // 4))


def parse_time_limit_min(text: str) -> Optional[int]:
    """SLURM's ``[days-]hours:minutes:seconds`` / ``minutes`` / ``infinite`` as minutes."""
    text = text.strip()
    if text in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        days = int(day_text)
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 1:            # minutes
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:          # minutes:seconds
        hours, minutes, seconds = 0, parts[0], parts[1]
    else:
        hours, minutes, seconds = parts[-3:]
    return days * 24 * 60 + hours * 60 + minutes + (1 if seconds else 0)


def parse_gpu_count(gres: str) -> int:
    """GPUs per node in a ``%G`` field such as ``gpu:a100:8(S:0-1),shard:4`` (0 if none)."""
    total = 0
    for item in re.split(r",(?![^()]*\))", gres):
        item = re.sub(r"\(.*?\)", "", item).strip()
        if not item.startswith("gpu"):
            continue
        count = item.split(":")[-1]
        total = max(total, int(count) if count.isdigit() else 1)
    return total


def _cpu_count(text: str) -> int:
    # "64", "64+" (sinfo merged node kinds) or "32-64": the largest
    numbers = [int(n) for n in re.findall(r"\d+", text)]
    return max(numbers) if numbers else 0


def parse_sinfo(lines: Sequence[str], partition: Optional[str]) -> Optional[PartitionInfo]:
    """Combine ``sinfo -h -o '%P|%a|%c|%D|%G|%l|%m'`` lines of one partition (None: the default one)."""
    rows = []
    for line in lines:
        fields = line.strip().split("|")
        if len(fields) == 6:  # no memory column
            fields.append("0")
        if len(fields) != 7:
            continue
        name, avail, cpus, nodes, gres, limit, memory = fields
        is_default = name.endswith("*")
        name = name.rstrip("*")
        if (partition is None and is_default) or name == partition:
            rows.append((name, avail, cpus, nodes, gres, limit, memory))
    if not rows:
        return None
    return PartitionInfo(
        name=rows[0][0],
        available=any(r[1] == "up" for r in rows),
        cpus_per_node=max(_cpu_count(r[2]) for r in rows),
        gpus_per_node=max(parse_gpu_count(r[4]) for r in rows),
        num_nodes=sum(int(r[3]) for r in rows if r[3].isdigit()),
        time_limit_min=parse_time_limit_min(rows[0][5]),
        memory_mb=max(_cpu_count(r[6]) for r in rows),
        node_kinds=[f"{r[3]} node(s) of {r[2]} CPUs" + (f", {r[4]}" if r[4] != "(null)" else "")
                    for r in rows],
    )


def _partition_names(lines: Sequence[str]) -> List[str]:
    return sorted({line.split("|")[0].rstrip("*") for line in lines if "|" in line})


def query_partition(partition: Optional[str]) -> PartitionInfo:
    """Ask ``sinfo`` about ``partition`` (None: the default partition)."""
    if shutil.which("sinfo") is None:
        raise LaunchError("launcher.cluster=slurm but `sinfo` is not on the PATH: submit from a "
                          "SLURM login node, or set launcher.cluster=local to run here.")
    try:
        result = subprocess.run(["sinfo", "-h", "-o", _SINFO_FORMAT], capture_output=True,
                                text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise LaunchError("`sinfo` did not answer within 60 s: is slurmctld reachable from "
                          "this host?") from None
    if result.returncode != 0:
        raise LaunchError(f"`sinfo` failed ({result.stderr.strip() or result.returncode}): "
                          f"is slurmctld reachable from this host?")
    lines = result.stdout.splitlines()
    info = parse_sinfo(lines, partition)
    if info is None:
        known = ", ".join(_partition_names(lines)) or "none"
        what = f"launcher.partition={partition}: no such partition" if partition else \
            "launcher.partition is not set and the cluster has no default partition"
        raise LaunchError(f"{what} (sinfo lists: {known}). Set launcher.partition to one of them.")
    return info


def resolve_resources(info: PartitionInfo, *, nodes: int, tasks_per_node: int,
                      gpus_per_node: int, cpus_per_task: Optional[int],
                      timeout_min: int, mem_gb: Optional[float] = None) -> int:
    """Check a request against the partition; returns ``cpus_per_task`` (filled when None).

    Raises:
        LaunchError: naming the key and what the partition offers, for any request no
            node of the partition can grant.
    """
    where = f"partition {info.name!r} ({'; '.join(info.node_kinds)})"
    if not info.available:
        raise LaunchError(f"{where} is not up (sinfo state 'down'/'drain'): choose another "
                          f"launcher.partition.")
    if nodes > info.num_nodes:
        raise LaunchError(f"launcher.nodes={nodes}: {where} has only {info.num_nodes} node(s).")
    if gpus_per_node > info.gpus_per_node:
        raise LaunchError(f"launcher.gpus_per_node={gpus_per_node}: the nodes of {where} have at "
                          f"most {info.gpus_per_node} GPU(s); the job would stay pending forever.")
    if tasks_per_node > info.cpus_per_node:
        raise LaunchError(f"launcher.tasks_per_node={tasks_per_node}: the nodes of {where} have "
                          f"only {info.cpus_per_node} CPUs (one task needs at least one).")
    if cpus_per_task is None:
        cpus_per_task = max(1, min(DEFAULT_MAX_CPUS_PER_TASK, info.cpus_per_node // tasks_per_node))
    elif cpus_per_task * tasks_per_node > info.cpus_per_node:
        raise LaunchError(
            f"launcher.cpus_per_task={cpus_per_task} x launcher.tasks_per_node={tasks_per_node} "
            f"= {cpus_per_task * tasks_per_node} CPUs per node, but the nodes of {where} have at "
            f"most {info.cpus_per_node}: the job would stay pending forever (PartitionConfig). "
            f"Lower launcher.cpus_per_task to {max(1, info.cpus_per_node // tasks_per_node)} or "
            f"leave it unset (null) to use what the node has.")
    if mem_gb and info.memory_mb and mem_gb * 1024 > info.memory_mb:
        raise LaunchError(f"launcher.mem_gb={mem_gb}: the nodes of {where} have at most "
                          f"{info.memory_mb / 1024:.0f} GB; lower it or leave it unset (null).")
    if info.time_limit_min is not None and timeout_min > info.time_limit_min:
        raise LaunchError(f"launcher.timeout_min={timeout_min}: {where} allows at most "
                          f"{info.time_limit_min} minutes per job; lower it (the job is requeued "
                          f"and resumes when its time runs out).")
    return cpus_per_task
