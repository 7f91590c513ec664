"""``albef_image_train`` with ``backend: tensor`` through the datasets: files decoded by
torchvision.io straight to a tensor, with the image-loading policy of the PIL path."""
import io
import logging
import os

import pytest
import torch
from PIL import Image

from albef_plugin.datasets import PretrainDataset
from albef_plugin.datasets.images import (UnreadableImageError, read_image_for, read_rgb,
                                          read_rgb_tensor)
from albef_plugin.datasets.shards import decode_pair
from albef_plugin.processors import ImageEvalProcessor, ImageTrainProcessor
from albef_plugin.processors.image import pil_to_uint8_tensor
from albef_plugin.trainers.data import SeededSamples


def _photo(width: int = 96, height: int = 80) -> Image.Image:
    """Detail at every scale (unlike flat test colours), so a wrong crop or a decode
    difference shows in the pixels."""
    return Image.effect_mandelbrot((width, height), (-2.0, -1.2, 1.0, 1.2), 60).convert("RGB")


def _write_photos(folder):
    folder.mkdir(exist_ok=True)
    _photo().save(folder / "a.jpg", "JPEG", quality=90)
    _photo(70, 100).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "b.png")
    _photo(64, 64).convert("L").save(folder / "c.jpg", "JPEG", quality=90)
    return ["a.jpg", "b.png", "c.jpg"]


def _dataset(write_json, folder, names, backend, **params):
    entries = [{"image": name, "caption": f"caption {i}"} for i, name in enumerate(names)]
    transform = ImageTrainProcessor(backend=backend, **params)
    return PretrainDataset([write_json("p.json", entries)], str(folder), transform)


@pytest.mark.parametrize("randaugment", [False, True])
def test_both_backends_give_the_same_sampled_crop_from_real_files(write_json, tmp_path, randaugment):
    """Seeded per sample as in training (SeededSamples): the same crop, flip and RandAugment
    draws, so the images differ by interpolation rounding only."""
    names = _write_photos(tmp_path / "photos")
    params = dict(image_size=32, randaugment=randaugment)
    pil = SeededSamples(_dataset(write_json, tmp_path / "photos", names, "pil", **params), seed=5)
    fast = SeededSamples(_dataset(write_json, tmp_path / "photos", names, "tensor", **params), seed=5)
    assert fast.dataset.transform.takes_uint8_tensor and not pil.dataset.transform.takes_uint8_tensor
    for epoch in range(4):
        for index in range(len(names)):
            a, b = pil[(epoch, index)]["image"], fast[(epoch, index)]["image"]
            assert a.shape == b.shape == (3, 32, 32) and b.dtype == torch.float32
            # one grey level is 1 / (0.27 * 255) = 0.015 normalised; another crop of this
            # image differs by about 1
            assert (a - b).abs().mean() < 0.05, (epoch, index)
    other_seed = SeededSamples(fast.dataset, seed=6)
    assert (other_seed[(0, 0)]["image"] - fast[(0, 0)]["image"]).abs().mean() > 0.2


def _encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _image_variants():
    """(name, encoded bytes, max grey-level difference allowed) of every mode the PIL path
    converts to RGB. Lossless formats must match exactly."""
    photo = _photo(40, 30)
    palette = photo.quantize(16)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90; PIL's convert() ignores it, so must we
    return [
        ("rgb.png", _encoded(photo, "PNG"), 0),
        ("grey.png", _encoded(photo.convert("L"), "PNG"), 0),
        ("grey_alpha.png", _encoded(photo.convert("LA"), "PNG"), 0),
        ("rgba.png", _encoded(photo.convert("RGBA"), "PNG"), 0),
        ("palette_transparent.png", _encoded(palette, "PNG", transparency=3), 0),
        ("16bit.png", _encoded(photo.convert("I;16"), "PNG"), 0),
        ("rgb.jpg", _encoded(photo, "JPEG", quality=90), 1),
        ("grey.jpg", _encoded(photo.convert("L"), "JPEG", quality=90), 1),
        ("exif_rotated.jpg", _encoded(photo, "JPEG", quality=90, exif=exif), 1),
        ("cmyk.jpg", _encoded(photo.convert("CMYK"), "JPEG", quality=90), 1),
        ("rgb.bmp", _encoded(photo, "BMP"), 0),
        ("palette.gif", _encoded(palette, "GIF"), 0),
        ("rgb.webp", _encoded(photo, "WEBP", lossless=True), 0),
    ]


@pytest.mark.parametrize("name,data,tolerance", _image_variants(), ids=lambda v: str(v)[:24])
def test_every_image_mode_decodes_to_the_pil_paths_rgb(tmp_path, name, data, tolerance):
    path = tmp_path / name
    path.write_bytes(data)
    expected = pil_to_uint8_tensor(read_rgb(str(path)))
    got = read_rgb_tensor(str(path))
    assert got.dtype == torch.uint8 and got.shape == expected.shape  # (3, H, W): not rotated
    assert (got.int() - expected.int()).abs().max() <= tolerance


def test_read_image_for_follows_the_transform(tmp_path):
    path = tmp_path / "a.jpg"
    _photo().save(path, "JPEG")
    assert isinstance(read_image_for(ImageTrainProcessor(backend="tensor"), str(path)), torch.Tensor)
    assert isinstance(read_image_for(ImageTrainProcessor(), str(path)), Image.Image)
    assert isinstance(read_image_for(ImageEvalProcessor(), str(path)), Image.Image)
    assert isinstance(read_image_for(lambda img: img, str(path)), Image.Image)


def _truncated_jpeg(path):
    data = _encoded(_photo(), "JPEG", quality=90)
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("backend", ["pil", "tensor"])
def test_unreadable_files_are_substituted_named_and_counted_under_both_backends(
        write_json, image_dir, corrupt, caplog, backend):
    """Missing, corrupt, truncated (libjpeg would fill it with grey; PIL refuses it) and a
    FIFO (never opened: it would block): the same four are skipped by both backends."""
    (image_dir / "img1.jpg").unlink()
    corrupt(image_dir / "img2.jpg")
    _truncated_jpeg(image_dir / "img3.jpg")
    os.remove(image_dir / "img4.jpg")
    os.mkfifo(image_dir / "img4.jpg")
    ds = _dataset(write_json, image_dir, [f"img{i}.jpg" for i in range(6)], backend,
                  image_size=8, randaugment=False)
    with caplog.at_level(logging.WARNING, logger="albef_plugin.datasets.images"):
        item = ds[1]
    assert item["num_skipped"] == 4 and item["text"] == "caption 5"
    assert item["image"].shape == (3, 8, 8)
    warned = " ".join(r.getMessage() for r in caplog.records)
    for name in ("img1.jpg", "img2.jpg", "img3.jpg", "img4.jpg: is not a regular file"):
        assert name in warned
    with pytest.raises(UnreadableImageError, match="img3.jpg"):
        read_rgb_tensor(str(image_dir / "img3.jpg"))


def test_shard_samples_decode_with_either_backend():
    jpeg = _encoded(_photo(), "JPEG", quality=90)
    raw = {"__key__": "7", "__url__": "s/0.tar", "jpg": jpeg, "txt": b"a caption"}
    images = []
    for backend in ("pil", "tensor"):
        torch.manual_seed(0)
        sample = decode_pair(raw, ImageTrainProcessor(image_size=24, backend=backend), lambda n: 0)
        images.append(sample["image"])
        assert sample["text"] == "a caption" and sample["image_id"] == 7
    assert images[0].shape == images[1].shape == (3, 24, 24)
    assert (images[0] - images[1]).abs().mean() < 0.05
    with pytest.raises(OSError):  # counted and skipped by the stream, as with PIL
        decode_pair({**raw, "jpg": jpeg[:200]}, ImageTrainProcessor(backend="tensor"), lambda n: 0)


def test_jpeg_and_png_are_decoded_by_torchvision_not_pil(tmp_path, monkeypatch):
    """The fast path is taken: with PIL's decoder broken, JPEG and PNG files still decode
    (torchvision.io); other formats go to PIL."""
    import albef_plugin.processors.image as image_module

    def no_pil(source):
        raise AssertionError("decoded by PIL")

    for name, fmt in (("a.jpg", "JPEG"), ("b.png", "PNG"), ("c.bmp", "BMP")):
        _photo().save(tmp_path / name, fmt)
    monkeypatch.setattr(image_module, "decode_rgb", no_pil)
    for name in ("a.jpg", "b.png"):
        assert read_rgb_tensor(str(tmp_path / name)).shape == (3, 80, 96)
    with pytest.raises(UnreadableImageError, match="c.bmp: AssertionError: decoded by PIL"):
        read_rgb_tensor(str(tmp_path / "c.bmp"))


def test_image_pairs_decode_for_the_tensor_backend_and_count_a_bad_one(tmp_path, corrupt):
    """NLVR2-style entries (two images each) take the same switch."""
    from albef_plugin.datasets.classification import LabelledImagesDataset

    names = _write_photos(tmp_path / "photos")
    paths = [str(tmp_path / "photos" / n) for n in names]
    corrupt(tmp_path / "photos" / "c.jpg")
    entries = [((paths[0], paths[1]), "left", 1), ((paths[1], paths[2]), "right", 0)]
    ds = LabelledImagesDataset(entries, ("image0", "image1"),
                               ImageTrainProcessor(image_size=16, backend="tensor"))
    item = ds[1]  # c.jpg is corrupt: the next entry (wrapping round) replaces it
    assert item["num_skipped"] == 1 and item["label"] == 1
    assert item["image0"].shape == item["image1"].shape == (3, 16, 16)
