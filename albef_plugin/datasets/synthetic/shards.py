"""Write a synthetic world's training images as webdataset tar shards, img2dataset style.

Each training image becomes one sample ``{key}.jpg`` (the world's JPEG bytes, unchanged),
``{key}.txt`` (its first caption) and ``{key}.json`` (``key``, ``url`` = the image path in the
world, ``caption``, and ``captions``: all of its captions, one of which the reader draws per
read, like the world's ``pretrain.json``). Keys are the image indices (``000042``). Each
shard ``{shard:05d}.tar`` gets an img2dataset-like ``{shard:05d}_stats.json``
(``{"count", "successes", "failed_to_download"}``), from which the reader counts samples.

The shards go to ``<world>/shards-<samples_per_shard>/`` by default; writing is
idempotent (a ``DONE.json`` with the parameters) and atomic (temporary folder + rename).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from webdataset import TarWriter

from albef_plugin.datasets.synthetic.generate import ANNOTATION_FILES

__all__ = ["write_world_shards", "world_shards_dir", "shard_pattern"]

DONE_FILE = "DONE.json"


def world_shards_dir(world: Union[str, Path], samples_per_shard: int) -> Path:
    return Path(world) / f"shards-{samples_per_shard}"


def shard_pattern(folder: Union[str, Path], num_shards: int) -> str:
    """The brace pattern naming all shards of ``folder``, e.g. ``.../{00000..00011}.tar``."""
    if num_shards == 1:
        return str(Path(folder) / "00000.tar")
    return str(Path(folder) / f"{{00000..{num_shards - 1:05d}}}.tar")


def _read_done(folder: Path) -> Optional[Dict[str, Any]]:
    try:
        with open(folder / DONE_FILE, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def write_world_shards(world: Union[str, Path], samples_per_shard: int = 1000,
                       out: Optional[Union[str, Path]] = None) -> List[Path]:
    """Write (once) the shards of the world in ``world``; returns the shard paths in order.

    Args:
        world: a generated world folder (``generate_world``).
        samples_per_shard: images per shard (the last shard may hold fewer).
        out: shard folder (default :func:`world_shards_dir`).
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard={samples_per_shard} must be >= 1")
    world = Path(world)
    folder = Path(out) if out is not None else world_shards_dir(world, samples_per_shard)
    with open(world / ANNOTATION_FILES["pretrain"], encoding="utf-8") as handle:
        entries = json.load(handle)
    params = {"world": world.name, "samples_per_shard": samples_per_shard, "samples": len(entries)}
    done = _read_done(folder)
    if done is not None and done.get("params") == params:
        return [folder / name for name in done["shards"]]
    temp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    names: List[str] = []
    try:
        for first in range(0, len(entries), samples_per_shard):
            name = f"{len(names):05d}.tar"
            chunk = entries[first:first + samples_per_shard]
            with TarWriter(str(temp / name), mtime=0.0) as writer:  # mtime: reproducible bytes
                for entry in chunk:
                    key = Path(entry["image"]).stem
                    captions = list(entry["caption"])
                    writer.write({"__key__": key, "jpg": (world / entry["image"]).read_bytes(),
                                  "txt": captions[0],
                                  "json": json.dumps({"key": key, "url": entry["image"],
                                                      "caption": captions[0], "captions": captions})})
            stats = {"count": len(chunk), "successes": len(chunk), "failed_to_download": 0}
            (temp / f"{len(names):05d}_stats.json").write_text(json.dumps(stats))
            names.append(name)
        (temp / DONE_FILE).write_text(json.dumps({"params": params, "shards": names}))
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(temp, folder)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        done = _read_done(folder)
        if done is not None and done.get("params") == params:  # another process finished first
            return [folder / name for name in done["shards"]]
        raise
    return [folder / name for name in names]
