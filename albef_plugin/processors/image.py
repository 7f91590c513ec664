"""Image transforms of the official ALBEF code, as registered processors.

- ``"albef_image_train"``: RandomResizedCrop(size, scale, bicubic) -> RandomHorizontalFlip
  -> RandAugment(N=2, M=7, no colour ops) -> ToTensor -> Normalize.
  Pre-training uses ``scale=(0.2, 1.0)`` at 256 px; fine-tuning ``scale=(0.5, 1.0)`` at 384 px.
- ``"albef_image_eval"``: Resize((size, size), bicubic) -> ToTensor -> Normalize.

Both normalise with the CLIP mean / std, as the official code does. Both take an RGB
``PIL.Image`` (other modes are converted) and return a float tensor ``(3, size, size)``.

Horizontal flipping swaps left and right; set ``hflip: false`` when captions use those
words (the synthetic demo world avoids them instead, so the flip stays on).

``albef_image_train`` has two backends with the same sampled augmentation (crop box,
flip, RandAugment draws, all from torch's global generator in the same order):

- ``backend: pil`` (default): the torchvision transforms above, on the PIL image.
- ``backend: tensor``: the crop-resize and flip run on a uint8 tensor with
  ``torchvision.transforms.v2.functional`` (antialiased bicubic, which matches PIL's
  filter), RandAugment stays in PIL (its tensor versions are slower on a CPU), and the
  normalisation is one fused subtract-multiply. It takes a ``uint8 (3, H, W)`` RGB tensor,
  a file path or encoded bytes as well as a PIL image; the training datasets see
  :attr:`ImageTrainProcessor.takes_uint8_tensor` and hand it the file decoded by
  :func:`decode_rgb_tensor` (``torchvision.io``), so no PIL image is made before the crop.
  Pixels differ from the PIL backend by interpolation rounding only.

:func:`decode_rgb_tensor` gives the pixels ``PIL.Image.open(...).convert("RGB")`` gives:
JPEG and 8-bit PNG through ``torchvision.io.decode_image`` (RGB mode: grey replicated,
alpha dropped, palette expanded; EXIF orientation not applied, as PIL's ``convert`` does not),
every other format, and any file torchvision refuses or warns about (a truncated JPEG),
through PIL, so what is readable is what PIL reads.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F2

from albef_plugin.processors.randaugment import ALBEF_OPS, RandAugment
from albef_plugin.registry import registry

try:  # deprecated in torchvision 0.29 for TorchCodec, still there in the pinned 0.29.1
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # a torchvision without it: every format goes through PIL
    decode_image = None

__all__ = ["CLIP_MEAN", "CLIP_STD", "ImageTrainProcessor", "ImageEvalProcessor",
           "decode_rgb_tensor", "takes_uint8_tensor"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _check_size(image_size: int) -> int:
    if int(image_size) < 8:
        raise ValueError(f"image processor image_size={image_size} is too small; use at least 8 px "
                         f"(ALBEF uses 256 for pre-training and 384 for fine-tuning).")
    return int(image_size)


def _check_stats(mean: Sequence[float], std: Sequence[float]) -> None:
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"image processor mean/std need 3 values (R, G, B), got mean={list(mean)} "
                         f"std={list(std)}.")
    if any(s <= 0 for s in std):
        raise ValueError(f"image processor std={list(std)} must be positive.")


def _to_rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


BACKENDS = ("pil", "tensor")
ImageInput = Union[Image.Image, torch.Tensor, str, os.PathLike, bytes]


def decode_rgb(source: Union[str, os.PathLike, bytes]) -> Image.Image:
    """A file path or encoded bytes -> decoded RGB ``PIL.Image``."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        return img.convert("RGB")


def pil_to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """RGB ``PIL.Image`` -> ``uint8 (3, H, W)`` (one copy)."""
    return torch.from_numpy(np.array(_to_rgb(img), dtype=np.uint8)).permute(2, 0, 1)


# formats torchvision.io decodes without an optional codec library: JPEG and PNG signatures
_TORCHVISION_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
_TORCHVISION_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"


def decode_rgb_tensor(data: bytes) -> torch.Tensor:
    """Encoded image bytes -> ``uint8 (3, H, W)`` RGB, the pixels of :func:`decode_rgb`.

    JPEG and PNG go through ``torchvision.io`` (straight into a tensor: no PIL image, no
    numpy copy). Whatever torchvision refuses, warns about or returns with 16 bits (a
    truncated or corrupt JPEG, a 16-bit PNG), and every other format, is decoded by PIL:
    readable means what PIL reads, as on the PIL path, and PIL's error is the one raised.
    """
    if decode_image is not None and data.startswith(_TORCHVISION_SIGNATURES):
        try:
            with warnings.catch_warnings():
                # a decoder warning (libjpeg's "corrupt data") becomes an error: PIL decides
                # about that file, so readable stays what PIL reads
                warnings.simplefilter("error")
                # torchvision 0.29 warns on every call that its decoders are deprecated
                warnings.filterwarnings("ignore", _TORCHVISION_DEPRECATION, DeprecationWarning)
                image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                     mode=ImageReadMode.RGB)
            if image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3:
                return image
        except Exception:  # RuntimeError: truncated, corrupt; a warning raised as an error
            pass
    return pil_to_uint8_tensor(decode_rgb(data))


def takes_uint8_tensor(transform: Any) -> bool:
    """Whether ``transform`` wants a decoded ``uint8 (3, H, W)`` tensor rather than a PIL
    image (``albef_image_train`` with ``backend: tensor``): what datasets decode to."""
    return bool(getattr(transform, "takes_uint8_tensor", False))


class TensorTrainTransform:
    """The ``backend: tensor`` pipeline (see the module docstring); same RNG draws, in the
    same order, as ``T.Compose([RandomResizedCrop, RandomHorizontalFlip, RandAugment, ...])``."""

    def __init__(self, image_size: int, scale: Sequence[float], hflip: bool,
                 randaugment: Optional[RandAugment], mean: Sequence[float],
                 std: Sequence[float]) -> None:
        self.image_size = image_size
        self.scale = tuple(float(v) for v in scale)
        self.ratio = (3.0 / 4.0, 4.0 / 3.0)  # torchvision's default, as the PIL backend
        self.hflip = hflip
        self.randaugment = randaugment
        # (x / 255 - mean) / std == (x - 255 mean) * 1 / (255 std): one subtract, one multiply
        self.offset = torch.tensor([255.0 * m for m in mean]).view(3, 1, 1)
        self.inv_scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(3, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        top, left, height, width = T.RandomResizedCrop.get_params(image, self.scale, self.ratio)
        image = F2.resized_crop(image, top, left, height, width, [self.image_size] * 2,
                                interpolation=InterpolationMode.BICUBIC, antialias=True)
        if self.hflip and torch.rand(1) < 0.5:
            image = F2.horizontal_flip(image)
        if self.randaugment is not None:
            # PIL wants height-width-channel bytes; make them contiguous in torch (cheaper than
            # letting numpy copy a strided view)
            pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
            image = pil_to_uint8_tensor(self.randaugment(pil))
        # a contiguous (3, H, W) float, as ToTensor gives: stacking in the collate stays a copy
        image = image.to(torch.float32, memory_format=torch.contiguous_format)
        return image.sub_(self.offset).mul_(self.inv_scale)

    def __repr__(self) -> str:
        return (f"TensorTrainTransform(size={self.image_size}, scale={self.scale}, "
                f"hflip={self.hflip}, randaugment={self.randaugment})")


@registry.register_processor("albef_image_train")
class ImageTrainProcessor:
    """Training augmentation: random crop, flip, RandAugment, normalisation.

    Call with a ``PIL.Image`` (with ``backend: tensor`` also a uint8 tensor, a path or bytes);
    returns a float tensor ``(3, image_size, image_size)``.
    """

    @dataclass
    class Config:
        image_size: int = 256
        # RandomResizedCrop area range (official: 0.2-1.0 pre-training, 0.5-1.0 fine-tuning).
        scale: List[float] = field(default_factory=lambda: [0.2, 1.0])
        # Random horizontal flip; turn off if captions say "left" / "right".
        hflip: bool = True
        randaugment: bool = True
        randaugment_n: int = 2          # operations drawn per image (with replacement)
        randaugment_m: float = 7.0      # magnitude, 0-10
        randaugment_ops: List[str] = field(default_factory=lambda: list(ALBEF_OPS))
        # Translation equals the official 7 px at this image side; null: absolute pixels.
        translate_reference_size: Optional[int] = 256
        mean: List[float] = field(default_factory=lambda: list(CLIP_MEAN))
        std: List[float] = field(default_factory=lambda: list(CLIP_STD))
        # "pil" (torchvision transforms on PIL) or "tensor" (crop-resize on uint8 tensors; the
        # datasets then decode with torchvision.io: about 1.3x the images per second per core,
        # same augmentation statistics; README, Speed).
        backend: str = "pil"

    def __init__(self, *, image_size: int = 256, scale: Sequence[float] = (0.2, 1.0),
                 hflip: bool = True, randaugment: bool = True, randaugment_n: int = 2,
                 randaugment_m: float = 7.0, randaugment_ops: Sequence[str] = ALBEF_OPS,
                 translate_reference_size: Optional[int] = 256,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 backend: str = "pil") -> None:
        self.image_size = _check_size(image_size)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"albef_image_train scale={list(scale)} must be [low, high] with "
                             f"0 < low <= high <= 1 (a fraction of the image area).")
        _check_stats(mean, std)
        if backend not in BACKENDS:
            raise ValueError(f"albef_image_train backend={backend!r}: choose one of "
                             f"{', '.join(BACKENDS)}.")
        self.backend = backend
        # read by the datasets (takes_uint8_tensor): decode straight to a tensor for this one
        self.takes_uint8_tensor = backend == "tensor"
        augment = (RandAugment(randaugment_n, randaugment_m, ops=randaugment_ops,
                               translate_reference_size=translate_reference_size)
                   if randaugment else None)
        if backend == "tensor":
            self.transform: Any = TensorTrainTransform(self.image_size, scale, hflip, augment,
                                                       mean, std)
            return
        steps: List[Any] = [T.RandomResizedCrop(self.image_size, scale=tuple(scale),
                                                interpolation=InterpolationMode.BICUBIC)]
        if hflip:
            steps.append(T.RandomHorizontalFlip())
        if augment is not None:
            steps.append(augment)
        steps += [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
        self.transform = T.Compose(steps)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ImageTrainProcessor":
        return cls(**dict(config))

    def __call__(self, img: ImageInput) -> torch.Tensor:
        """A ``PIL.Image`` (any backend), or with ``backend: tensor`` also a ``uint8 (3, H, W)``
        RGB tensor, a file path or encoded bytes."""
        if self.backend == "tensor":
            if isinstance(img, torch.Tensor):
                if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
                    raise TypeError(f"albef_image_train backend=tensor takes a uint8 (3, H, W) "
                                    f"RGB tensor, got {img.dtype} {tuple(img.shape)}.")
                return self.transform(img)
            if isinstance(img, Image.Image):
                return self.transform(pil_to_uint8_tensor(img))
            if not isinstance(img, bytes):
                with open(img, "rb") as handle:
                    img = handle.read()
            return self.transform(decode_rgb_tensor(img))
        if not isinstance(img, Image.Image):
            raise TypeError(f"albef_image_train backend=pil takes a PIL.Image, got "
                            f"{type(img).__name__}; use backend: tensor to pass tensors, paths or bytes.")
        return self.transform(_to_rgb(img))

    def __repr__(self) -> str:
        return f"ImageTrainProcessor({self.transform})"


@registry.register_processor("albef_image_eval")
class ImageEvalProcessor:
    """Evaluation transform: bicubic resize to a square, normalisation.

    Call with a ``PIL.Image``; returns a float tensor ``(3, image_size, image_size)``.
    """

    @dataclass
    class Config:
        image_size: int = 256
        mean: List[float] = field(default_factory=lambda: list(CLIP_MEAN))
        std: List[float] = field(default_factory=lambda: list(CLIP_STD))

    def __init__(self, *, image_size: int = 256, mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD) -> None:
        self.image_size = _check_size(image_size)
        _check_stats(mean, std)
        self.transform = T.Compose([
            T.Resize((self.image_size, self.image_size), interpolation=InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(tuple(mean), tuple(std)),
        ])

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ImageEvalProcessor":
        return cls(**dict(config))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.transform(_to_rgb(img))

    def __repr__(self) -> str:
        return f"ImageEvalProcessor({self.transform})"
