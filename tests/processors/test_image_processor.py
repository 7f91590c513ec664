import pickle

import pytest
import torch
from PIL import Image

from albef_plugin.processors import (CLIP_MEAN, CLIP_STD, ImageEvalProcessor, ImageTrainProcessor,
                                     build_processor)
from albef_plugin.registry import registry


def _two_halves(width: int = 40, height: int = 30) -> Image.Image:
    """Red left half, blue right half."""
    img = Image.new("RGB", (width, height), (220, 30, 30))
    img.paste((30, 30, 220), (width // 2, 0, width, height))
    return img


def test_registered_names():
    assert registry.get_processor_class("albef_image_train") is ImageTrainProcessor
    assert registry.get_processor_class("albef_image_eval") is ImageEvalProcessor


@pytest.mark.parametrize("cls", [ImageTrainProcessor, ImageEvalProcessor])
def test_output_is_square_float_tensor_of_image_size(cls):
    out = cls(image_size=24)(_two_halves(50, 30))
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32


def test_grayscale_and_rgba_inputs_are_converted():
    proc = ImageEvalProcessor(image_size=8)
    assert proc(Image.new("L", (10, 10), 128)).shape == (3, 8, 8)
    assert proc(Image.new("RGBA", (10, 10), (1, 2, 3, 4))).shape == (3, 8, 8)


def test_eval_normalises_with_clip_statistics():
    proc = ImageEvalProcessor(image_size=8)
    mean_colour = tuple(round(m * 255) for m in CLIP_MEAN)
    assert proc(Image.new("RGB", (10, 10), mean_colour)).abs().max() < 0.01
    white = proc(Image.new("RGB", (10, 10), (255, 255, 255)))
    expected = torch.tensor([(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)])
    assert torch.allclose(white[:, 0, 0], expected, atol=1e-4)


def test_train_transform_is_deterministic_under_a_seed():
    proc = ImageTrainProcessor(image_size=16)
    img = _two_halves()
    torch.manual_seed(0)
    first = [proc(img) for _ in range(4)]
    torch.manual_seed(0)
    second = [proc(img) for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(first[0], other) for other in first[1:])  # it is random


def _red_on_left(tensor: torch.Tensor) -> bool:
    width = tensor.shape[-1]
    left, right = tensor[:, :, : width // 2], tensor[:, :, width // 2:]
    return bool(left[0].mean() - left[2].mean() > right[0].mean() - right[2].mean())


def test_hflip_switch():
    img = _two_halves(40, 40)
    kwargs = dict(image_size=16, scale=(0.9, 1.0), randaugment=False)
    torch.manual_seed(0)
    no_flip = ImageTrainProcessor(hflip=False, **kwargs)
    assert all(_red_on_left(no_flip(img)) for _ in range(20))
    flip = ImageTrainProcessor(hflip=True, **kwargs)
    sides = [_red_on_left(flip(img)) for _ in range(20)]
    assert any(sides) and not all(sides)


def test_bad_parameters_name_the_key():
    with pytest.raises(ValueError, match="scale"):
        ImageTrainProcessor(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="image_size=4"):
        ImageEvalProcessor(image_size=4)
    with pytest.raises(ValueError, match="mean/std need 3 values"):
        ImageEvalProcessor(mean=(0.5, 0.5))


def test_build_processor_injects_image_size_and_refuses_a_clash():
    proc = build_processor({"type": "albef_image_train", "params": {"scale": [0.5, 1.0]}}, image_size=20)
    assert proc(_two_halves()).shape == (3, 20, 20)
    with pytest.raises(ValueError, match=r"x\.params sets \['image_size'\]"):
        build_processor({"type": "albef_image_eval", "params": {"image_size": 8}}, where="x",
                        image_size=20)


def test_train_processor_pickles():
    proc = ImageTrainProcessor(image_size=12)
    clone = pickle.loads(pickle.dumps(proc))
    torch.manual_seed(1)
    a = proc(_two_halves())
    torch.manual_seed(1)
    assert torch.equal(a, clone(_two_halves()))
