"""Write a synthetic world to disk: JPEG images + annotation files in the official formats.

Layout of a world folder (all image paths in the JSON files are relative to it, so it
is both the ``image_root`` and the place of the annotations)::

    images/{train,val,test}/000000.jpg ...
    pretrain.json   [{"image", "caption": [str, ...]}]           train images (pretrain format)
    re_train.json   [{"image", "caption": str, "image_id"}]       one row per train caption
    re_val.json     [{"image", "caption": [str, ...]}]            re_eval format
    re_test.json    [{"image", "caption": [str, ...]}]
    scenes.json     {"spec": {...}, "scenes": [...]}               full metadata (objects, boxes)
    DONE.json       the generation parameters; written last

Generation is idempotent and atomic: a folder whose ``DONE.json`` matches the
parameters is reused; otherwise the world is written to a temporary sibling folder and
renamed into place, so an interrupted run never leaves a half world behind.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from albef_plugin.datasets.synthetic.world import (SPLIT_CODES, Scene, render_scene, sample_scene,
                                                   write_captions)

__all__ = ["WorldSpec", "GENERATOR_VERSION", "make_scene", "generate_scenes", "generate_world",
           "world_is_complete", "load_scenes", "ANNOTATION_FILES"]

logger = logging.getLogger(__name__)

# Bump when the scenes, captions or pixels a spec produces change: a new version
# gives new folder names, so old worlds are never reused by mistake.
GENERATOR_VERSION = 1
DONE_FILE = "DONE.json"
ANNOTATION_FILES = {"pretrain": "pretrain.json", "re_train": "re_train.json",
                    "val": "re_val.json", "test": "re_test.json", "scenes": "scenes.json"}


@dataclass(frozen=True)
class WorldSpec:
    """Everything that determines a world's content."""

    num_train: int = 3000
    num_val: int = 300
    num_test: int = 300
    seed: int = 0
    image_size: int = 128      # side of the rendered JPEGs, pixels
    jpeg_quality: int = 90
    min_objects: int = 1
    max_objects: int = 3

    def __post_init__(self) -> None:
        problems = []
        if min(self.num_train, self.num_val, self.num_test) < 0:
            problems.append("num_train / num_val / num_test must be >= 0")
        if self.image_size < 32:
            problems.append(f"image_size={self.image_size} must be >= 32 px")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"jpeg_quality={self.jpeg_quality} must be in [1, 100]")
        if not 1 <= self.min_objects <= self.max_objects <= 3:
            problems.append(f"need 1 <= min_objects ({self.min_objects}) <= max_objects "
                            f"({self.max_objects}) <= 3")
        if problems:
            raise ValueError("Invalid synthetic world parameters: " + "; ".join(problems) + ".")

    def as_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "generator_version": GENERATOR_VERSION}

    def folder_name(self) -> str:
        """A readable name that changes whenever any parameter changes."""
        digest = hashlib.sha1(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:8]
        return (f"world-{self.num_train}-{self.num_val}-{self.num_test}-s{self.seed}-"
                f"{self.image_size}px-{digest}")

    def count(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]


def make_scene(spec: WorldSpec, split: str, index: int) -> Scene:
    """Scene ``index`` of ``split``: objects, boxes and captions (no pixels)."""
    rng = np.random.default_rng([spec.seed, SPLIT_CODES[split], index])
    background, objects = sample_scene(rng, spec.image_size, spec.min_objects, spec.max_objects)
    captions = write_captions(objects, background, rng)
    return Scene(image=f"images/{split}/{index:06d}.jpg", split=split, index=index,
                 width=spec.image_size, height=spec.image_size, background=background,
                 objects=objects, captions=captions)


def generate_scenes(spec: WorldSpec) -> Dict[str, List[Scene]]:
    """All scenes per split, without rendering: the hook for emitting other task formats."""
    return {split: [make_scene(spec, split, i) for i in range(spec.count(split))]
            for split in SPLIT_CODES}


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, separators=(",", ":"))


def _read_manifest(folder: Path) -> Optional[Dict[str, Any]]:
    try:
        with open(folder / DONE_FILE, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError):
        return None


def world_is_complete(folder: Union[str, Path], spec: WorldSpec) -> bool:
    """True when ``folder`` holds a finished world generated from exactly ``spec``."""
    manifest = _read_manifest(Path(folder))
    return manifest is not None and manifest.get("spec") == spec.as_dict()


def load_scenes(folder: Union[str, Path]) -> List[Dict[str, Any]]:
    """The scene records of a generated world (dicts, as in ``scenes.json``)."""
    with open(Path(folder) / ANNOTATION_FILES["scenes"], encoding="utf-8") as handle:
        return json.load(handle)["scenes"]


def _write_world(folder: Path, spec: WorldSpec) -> Dict[str, int]:
    scenes = generate_scenes(spec)
    for split, split_scenes in scenes.items():
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        for scene in split_scenes:
            image = render_scene(scene.background, scene.objects, spec.image_size)
            # 4:4:4 chroma: the default 4:2:0 smears colour across the small shapes' edges
            image.save(folder / scene.image, "JPEG", quality=spec.jpeg_quality, subsampling=0)
    train = scenes["train"]
    _write_json(folder / ANNOTATION_FILES["pretrain"],
                [{"image": s.image, "caption": s.captions} for s in train])
    _write_json(folder / ANNOTATION_FILES["re_train"],
                [{"image": s.image, "caption": c, "image_id": f"train/{s.index:06d}"}
                 for s in train for c in s.captions])
    for split in ("val", "test"):
        _write_json(folder / ANNOTATION_FILES[split],
                    [{"image": s.image, "caption": s.captions} for s in scenes[split]])
    _write_json(folder / ANNOTATION_FILES["scenes"],
                {"spec": spec.as_dict(),
                 "scenes": [s.to_dict() for split in scenes.values() for s in split]})
    return {split: len(items) for split, items in scenes.items()}


def _looks_generated(folder: Path) -> bool:
    """Whether ``folder`` may be replaced: empty, or made by this generator."""
    return (not any(folder.iterdir()) or (folder / DONE_FILE).exists()
            or (folder / ANNOTATION_FILES["scenes"]).exists())


def generate_world(folder: Union[str, Path], spec: WorldSpec = WorldSpec(),
                   overwrite: bool = False) -> Path:
    """Make sure ``folder`` holds the world of ``spec``; write it if needed.

    Args:
        folder: the world folder (created; its parent must be writable).
        spec: the generation parameters.
        overwrite: regenerate even if a matching world is there.

    Returns:
        ``folder`` as a Path.

    Raises:
        FileExistsError: ``folder`` exists, is not empty and was not made by this
            generator (nothing is deleted then).
    """
    folder = Path(folder).expanduser().resolve()
    if world_is_complete(folder, spec) and not overwrite:
        logger.info("synthetic world already present: %s", folder)
        return folder
    if folder.exists() and not (folder.is_dir() and _looks_generated(folder)):
        raise FileExistsError(f"{folder} exists and is not a synthetic world made by albef_plugin; "
                              f"refusing to overwrite it. Choose another output folder.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    start = time.perf_counter()
    try:
        counts = _write_world(temp, spec)
    except BaseException:  # interrupted or failed: leave no half world behind
        shutil.rmtree(temp, ignore_errors=True)
        raise
    seconds = round(time.perf_counter() - start, 2)
    _write_json(temp / DONE_FILE, {"spec": spec.as_dict(), "counts": counts, "seconds": seconds})
    if folder.exists():  # a stale, mismatched or overwritten world: move it aside, then delete
        old = folder.parent / f".{folder.name}.old-{os.getpid()}"
        os.rename(folder, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(temp, folder)
    except OSError:
        shutil.rmtree(temp, ignore_errors=True)
        if world_is_complete(folder, spec):  # another process finished the same world first
            return folder
        raise
    logger.info("synthetic world written to %s: %s images in %.1f s", folder,
                "/".join(str(counts[s]) for s in ("train", "val", "test")), seconds)
    return folder
