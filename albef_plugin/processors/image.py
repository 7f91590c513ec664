"""Image transforms of the official ALBEF code, as registered processors.

- ``"albef_image_train"``: RandomResizedCrop(size, scale, bicubic) -> RandomHorizontalFlip
  -> RandAugment(N=2, M=7, no colour ops) -> ToTensor -> Normalize.
  Pre-training uses ``scale=(0.2, 1.0)`` at 256 px; fine-tuning ``scale=(0.5, 1.0)`` at 384 px.
- ``"albef_image_eval"``: Resize((size, size), bicubic) -> ToTensor -> Normalize.

Both normalise with the CLIP mean / std, as the official code does. Both take an RGB
``PIL.Image`` (other modes are converted) and return a float tensor ``(3, size, size)``.

Horizontal flipping swaps left and right; set ``hflip: false`` when captions use those
words (the synthetic demo world avoids them instead, so the flip stays on).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Sequence

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from albef_plugin.processors.randaugment import ALBEF_OPS, RandAugment
from albef_plugin.registry import registry

__all__ = ["CLIP_MEAN", "CLIP_STD", "ImageTrainProcessor", "ImageEvalProcessor"]

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


@registry.register_processor("albef_image_train")
class ImageTrainProcessor:
    """Training augmentation: random crop, flip, RandAugment, normalisation.

    Call with a ``PIL.Image``; returns a float tensor ``(3, image_size, image_size)``.
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

    def __init__(self, *, image_size: int = 256, scale: Sequence[float] = (0.2, 1.0),
                 hflip: bool = True, randaugment: bool = True, randaugment_n: int = 2,
                 randaugment_m: float = 7.0, randaugment_ops: Sequence[str] = ALBEF_OPS,
                 translate_reference_size: Optional[int] = 256,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> None:
        self.image_size = _check_size(image_size)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"albef_image_train scale={list(scale)} must be [low, high] with "
                             f"0 < low <= high <= 1 (a fraction of the image area).")
        _check_stats(mean, std)
        steps: List[Any] = [T.RandomResizedCrop(self.image_size, scale=tuple(scale),
                                                interpolation=InterpolationMode.BICUBIC)]
        if hflip:
            steps.append(T.RandomHorizontalFlip())
        if randaugment:
            steps.append(RandAugment(randaugment_n, randaugment_m, ops=randaugment_ops,
                                     translate_reference_size=translate_reference_size))
        steps += [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
        self.transform = T.Compose(steps)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ImageTrainProcessor":
        return cls(**dict(config))

    def __call__(self, img: Image.Image) -> torch.Tensor:
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
