"""Fixtures for dataset tests: tiny image folders, annotation writers, a tiny world."""
import json
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image

from albef_plugin.datasets.synthetic import WorldSpec, generate_world
from albef_plugin.processors import ImageEvalProcessor, TextProcessor

# Small enough to generate in well under a second.
TINY_WORLD = WorldSpec(num_train=12, num_val=6, num_test=4, seed=3, image_size=64)


@pytest.fixture(scope="session")
def text_processor() -> TextProcessor:
    return TextProcessor(max_length=30)


@pytest.fixture
def eval_transform() -> ImageEvalProcessor:
    return ImageEvalProcessor(image_size=16)


@pytest.fixture
def write_json(tmp_path: Path) -> Callable[[str, Any], Path]:
    def write(name: str, data: Any) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(data))
        return path
    return write


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """Six readable 20x20 JPEGs img0.jpg .. img5.jpg, each a different flat colour."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (20, 20), (40 * i, 200 - 30 * i, 90)).save(folder / f"img{i}.jpg")
    return folder


@pytest.fixture
def corrupt() -> Callable[[Path], Path]:
    """Overwrite a file with bytes that start like a JPEG but do not decode."""
    def write(path: Path) -> Path:
        path.write_bytes(b"\xff\xd8\xff this is not a JPEG")
        return path
    return write


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world") / "tiny", TINY_WORLD)

