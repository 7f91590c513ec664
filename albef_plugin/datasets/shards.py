"""Reading image-caption pairs from webdataset tar shards, as written by img2dataset.

A shard is a tar file whose members are grouped into samples by their name without
extension: ``{key}.jpg`` (or ``.jpeg`` / ``.png`` / ``.webp``), ``{key}.txt`` (the caption)
and ``{key}.json`` (metadata; optional). When the JSON holds a list ``"captions"`` one of
them is drawn at random each time the sample is read, like a pretrain-format entry with
a caption list (the synthetic world's shards use this); otherwise ``.txt`` is the caption.

Shards are named by patterns: brace expansion (``cc3m/{00000..00331}.tar``), shell globs
for local files (``cc3m/*.tar``), local paths relative to ``data_dir``, or URLs that
``webdataset.gopen`` opens (``https://...``, ``pipe:aws s3 cp s3://.../00001.tar -``).
Tar reading itself is webdataset's (``url_opener`` -> ``tar_file_expander`` ->
``group_by_keys``); this module decides what a bad shard or sample costs: it is counted
and skipped, never the end of a long run (unless ``on_unreadable: error``).
"""
from __future__ import annotations

import glob
import json
import logging
import os
import zlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import braceexpand
from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

from albef_plugin.errors import UserError
from albef_plugin.processors.image import decode_rgb, decode_rgb_tensor, takes_uint8_tensor

__all__ = ["ShardError", "expand_shard_patterns", "is_url", "read_shard", "decode_pair", "image_id_of",
           "IMAGE_EXTENSIONS", "count_samples_from_stats"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_GLOB_CHARS = set("*?[")


class ShardError(UserError, OSError):
    """A shard or one of its samples cannot be read (with ``on_unreadable: error``), or none can."""


def is_url(path: str) -> bool:
    """Whether ``path`` is read through webdataset's openers rather than as a local file."""
    return "://" in path or path.startswith("pipe:")


def expand_shard_patterns(patterns: Sequence[str], resolve: Callable[[str], str], where: str) -> List[str]:
    """Every shard named by ``patterns``, in order, without duplicates.

    Args:
        patterns: brace patterns, globs, local paths or URLs.
        resolve: turns a relative local path into a usable one (joins ``data_dir``).
        where: the config key of ``patterns``, for error messages.

    Raises:
        ValueError: ``patterns`` is empty, or a pattern names no existing local file.
    """
    patterns = [str(p) for p in patterns]
    if not patterns:
        raise ValueError(f"{where} is empty: list the tar shards to train on, e.g. "
                         f"['cc3m/{{00000..00331}}.tar'] (brace patterns, globs, paths or URLs).")
    shards: List[str] = []
    for pattern in patterns:
        found: List[str] = []
        for name in braceexpand.braceexpand(pattern):
            if is_url(name):
                found.append(name)
                continue
            path = resolve(name)
            if _GLOB_CHARS & set(name):
                found.extend(sorted(glob.glob(path)))
            elif os.path.isfile(path):
                found.append(path)
            else:
                raise ValueError(f"{where}: shard {path!r} (from pattern {pattern!r}) does not exist; "
                                 f"check the pattern and data_dir.")
        if not found:
            raise ValueError(f"{where}: pattern {pattern!r} matches no file (looked for "
                             f"{resolve(pattern)!r}); check the pattern and data_dir.")
        shards.extend(found)
    return list(dict.fromkeys(shards))


def count_samples_from_stats(shards: Sequence[str]) -> Optional[int]:
    """Samples in local shards according to img2dataset's ``<shard>_stats.json`` files.

    Returns None unless every shard is local and has a stats file with ``successes``.
    """
    total = 0
    for shard in shards:
        stats = os.path.splitext(shard)[0] + "_stats.json"
        if is_url(shard) or not os.path.isfile(stats):
            return None
        try:
            with open(stats, encoding="utf-8") as handle:
                total += int(json.load(handle)["successes"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return total


def _raw_samples(url: str) -> Iterator[Dict[str, Any]]:
    """webdataset's samples of one shard: dicts ``{__key__, __url__, <ext>: bytes ...}``."""
    files = tar_file_expander(url_opener([{"url": url}]), eof_value=None)
    return group_by_keys(files)


def read_shard(url: str, skip: int = 0) -> Iterator[Tuple[int, Optional[Dict[str, Any]], Optional[str]]]:
    """The samples of one shard, after the first ``skip``, with their 1-based position.

    Yields ``(position, raw_sample, None)`` per sample, and a final ``(position, None,
    reason)`` when the shard stops being readable (not a tar, truncated, gone): the
    samples read before that still count. Skipped samples are read but not decoded.
    """
    position = 0
    samples = _raw_samples(url)
    while True:
        try:
            raw = next(samples)
        except StopIteration:
            return
        except Exception as exc:  # tarfile.ReadError, OSError from the opener, ValueError ...
            yield position, None, f"shard {url}: {type(exc).__name__}: {exc}"
            return
        position += 1
        if position > skip:
            yield position, raw, None


def image_id_of(key: str, url: str, folder_index: int = 0, num_folders: int = 1) -> int:
    """A stable id per sample (same id = same image: ITM does not use it as a negative).

    img2dataset's keys are numbers unique within one output folder, but every folder starts
    again at 0: the id of a numeric key is ``key * num_folders + folder_index``. Other keys
    get a hash of shard and key.
    """
    if key.isdigit():
        return (int(key) * num_folders + folder_index) % (1 << 56)  # headroom for a mix's factor
    return (zlib.crc32(url.encode()) << 24) ^ zlib.crc32(key.encode())


def decode_pair(raw: Dict[str, Any], transform: Any, choose: Callable[[int], int],
                folder_index: int = 0, num_folders: int = 1) -> Dict[str, Any]:
    """A raw shard sample -> ``{"image": tensor, "text": str, "image_id": int}``.

    Args:
        choose: ``choose(n)`` draws an index below ``n`` (the caption, when there are several).
        folder_index / num_folders: the shard's folder among those of the shard list (see
            :func:`image_id_of`).

    The image goes to ``transform`` decoded as it takes it: a uint8 tensor from
    ``torchvision.io`` for ``albef_image_train`` with ``backend: tensor``, else an RGB PIL image.

    Raises:
        ValueError / OSError: no image or caption, or they do not decode.
    """
    image_bytes = next((raw[ext] for ext in IMAGE_EXTENSIONS if ext in raw), None)
    if image_bytes is None:
        raise ValueError(f"no image ({'/'.join(IMAGE_EXTENSIONS)}) in sample {raw.get('__key__')!r}")
    meta = json.loads(raw["json"]) if "json" in raw else {}
    captions = meta.get("captions") if isinstance(meta, dict) else None
    if isinstance(captions, list) and captions:
        caption = str(captions[choose(len(captions))])
    elif "txt" in raw:
        caption = raw["txt"].decode("utf-8").strip()
    else:
        raise ValueError(f"no caption (.txt) in sample {raw.get('__key__')!r}")
    if not caption:
        raise ValueError(f"empty caption in sample {raw.get('__key__')!r}")
    # albef_image_train with backend: tensor takes torchvision.io's uint8 tensor
    image = decode_rgb_tensor(image_bytes) if takes_uint8_tensor(transform) else decode_rgb(image_bytes)
    return {"image": transform(image), "text": caption,
            "image_id": image_id_of(str(raw.get("__key__", "")), str(raw.get("__url__", "")),
                                    folder_index, num_folders)}
