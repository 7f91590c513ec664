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


# ------------------------------------------------------------------ backend: tensor
import io  # noqa: E402

import numpy as np  # noqa: E402

from torchvision.transforms import functional as F  # noqa: E402
from torchvision.transforms.v2 import functional as F2  # noqa: E402


def _jpeg_bytes(width: int = 120, height: int = 90) -> bytes:
    buffer = io.BytesIO()
    _two_halves(width, height).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_tensor_backend_matches_pil_shape_and_takes_paths_and_bytes(tmp_path):
    proc = ImageTrainProcessor(image_size=24, backend="tensor")
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg_bytes())
    decoded = torch.from_numpy(np.array(_two_halves(50, 30))).permute(2, 0, 1)
    for source in (_two_halves(50, 30), str(path), path.read_bytes(), decoded):
        out = proc(source)
        assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    with pytest.raises(TypeError, match=r"uint8 \(3, H, W\) RGB tensor, got torch.float32"):
        proc(decoded.float())
    with pytest.raises(ValueError, match="backend='gpu'"):
        ImageTrainProcessor(backend="gpu")
    with pytest.raises(TypeError, match="backend=pil takes a PIL.Image"):
        ImageTrainProcessor(image_size=24)(str(path))


def test_tensor_backend_pixels_close_to_pil_backend():
    """Same seed, same draws: the two backends give the same crop and flip; pixels differ
    by interpolation rounding only (RandAugment off: its ops are shared code)."""
    img = Image.effect_mandelbrot((96, 80), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    kwargs = dict(image_size=32, randaugment=False)
    torch.manual_seed(3)
    pil = torch.stack([ImageTrainProcessor(**kwargs)(img) for _ in range(8)])
    torch.manual_seed(3)
    tensor = torch.stack([ImageTrainProcessor(backend="tensor", **kwargs)(img) for _ in range(8)])
    # one normalised unit is ~ 1 / (0.27 * 255) per grey level: allow a few levels
    assert (pil - tensor).abs().mean() < 0.1
    torch.manual_seed(3)
    with_augment = ImageTrainProcessor(image_size=32, backend="tensor")
    assert with_augment(img).shape == (3, 32, 32)


def _yaml_configured_train_set(folder, switch_yaml: str):
    """The ``albef_pretrain_json`` training set of one 120x90 JPEG, built by its builder from
    the YAML defaults plus ``switch_yaml`` (how a user sets the backend)."""
    import json

    from omegaconf import OmegaConf

    from albef_plugin.datasets import PretrainJsonBuilder

    (folder / "photo.jpg").write_bytes(_jpeg_bytes(120, 90))
    (folder / "pretrain.json").write_text(json.dumps([{"image": "photo.jpg", "caption": "c"}]))
    user_yaml = OmegaConf.create(f"""
data_dir: {folder}
image_size: 16
annotations: {{train: [pretrain.json]}}
{switch_yaml}
""")
    return PretrainJsonBuilder(PretrainJsonBuilder.make_config(user_yaml)).build("train")


def _sampled_parameters(dataset, seed: int, samples: int):
    """(area fraction, aspect ratio, flipped) of every crop the dataset's pipeline applies,
    spied at the functions that apply them (not at the sampler), for either backend."""
    crops, flips = [], [0]
    mp = pytest.MonkeyPatch()
    for module, crop_name, flip_name in ((F, "resized_crop", "hflip"),
                                         (F2, "resized_crop", "horizontal_flip")):
        real_crop, real_flip = getattr(module, crop_name), getattr(module, flip_name)

        def crop_spy(img, top, left, height, width, *args, _real=real_crop, **kwargs):
            crops.append((height * width / (120 * 90), width / height))
            return _real(img, top, left, height, width, *args, **kwargs)

        def flip_spy(img, *args, _real=real_flip, **kwargs):
            flips[0] += 1
            return _real(img, *args, **kwargs)

        mp.setattr(module, crop_name, crop_spy)
        mp.setattr(module, flip_name, flip_spy)
    try:
        torch.manual_seed(seed)
        for _ in range(samples):
            dataset[0]
    finally:
        mp.undo()
    area = torch.tensor([c[0] for c in crops])
    ratio = torch.tensor([c[1] for c in crops])
    return area, ratio, flips[0] / samples


def test_tensor_backend_keeps_the_augmentation_statistics(tmp_path):
    """The switch as a user sets it in YAML, through the dataset (file decoded by
    torchvision.io, RandAugment on as configured): over 10,000 samples (different seeds),
    crop-area and aspect-ratio histograms within 2 percentage points per bin, means within
    2%, flip rates within 2 points of today's PIL pipeline."""
    (tmp_path / "pil").mkdir()
    (tmp_path / "tensor").mkdir()
    pil = _yaml_configured_train_set(tmp_path / "pil", "")  # the default
    fast = _yaml_configured_train_set(tmp_path / "tensor",
                                      "processors: {train_image: {params: {backend: tensor}}}")
    assert pil.transform.backend == "pil" and fast.transform.takes_uint8_tensor
    assert fast.transform.transform.randaugment is not None  # the YAML default: on
    n = 10_000
    area_pil, ratio_pil, flip_pil = _sampled_parameters(pil, seed=0, samples=n)
    area_t, ratio_t, flip_t = _sampled_parameters(fast, seed=1, samples=n)
    assert len(area_pil) == len(area_t) == n
    assert area_pil.min() >= 0.19 and area_pil.max() <= 1.0  # scale (0.2, 1.0), rounding aside
    for ours, theirs, low, high in ((area_t, area_pil, 0.2, 1.0),
                                    (ratio_t.log(), ratio_pil.log(), -0.3, 0.3)):
        hist_ours = torch.histc(ours, bins=10, min=low, max=high) / n
        hist_theirs = torch.histc(theirs, bins=10, min=low, max=high) / n
        assert (hist_ours - hist_theirs).abs().max() < 0.02
        assert abs(ours.mean() - theirs.mean()) <= 0.02 * abs(theirs.mean()) + 1e-3
    assert abs(flip_t - flip_pil) < 0.02 and abs(flip_pil - 0.5) < 0.02
