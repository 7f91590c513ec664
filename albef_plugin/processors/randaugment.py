"""ALBEF's RandAugment: geometric and tone operations only, never colour.

The official ALBEF augmentation (``dataset/randaugment.py``, used by every task)
draws ``N = 2`` operations *with replacement* from the list below and applies each
with probability 0.5, all at the fixed magnitude ``M = 7`` of 10. Operations that
change hue or saturation (Color, Solarize, Posterize, Invert, Contrast on single
channels, ...) are left out on purpose: captions name colours, and recolouring an
image would make its caption wrong.

Magnitudes at level ``M`` (official ``*_level_to_args``)::

    Brightness, Sharpness  factor = M/10 * 1.8 + 0.1   (1.36 at M = 7; always this
                                                        value, as in the official code:
                                                        brighter / sharper, no sign flip)
    ShearX, ShearY         +-M/10 * 0.3                (+-0.21), sign drawn at random
    TranslateX, TranslateY +-M/10 * 10 pixels          (+-7 px), sign drawn at random
    Rotate                 +-M/10 * 30 degrees         (+-21 deg), sign drawn at random

Geometric operations fill the uncovered area with gray (128, 128, 128).

AutoContrast and Equalize work per colour channel (as in the official code). On photos
the colour shift is mild, but on flat synthetic images they visibly recolour objects
(pink turns purple, a beige background cyan); the demo dataset configs therefore drop
them through ``ops``.

Translation: the official code shifts by 7 px whatever the image size (256 px in
pre-training, 384 px in fine-tuning). Here the shift is ``7 px * size / 256`` when
``translate_reference_size=256`` (the default): identical to the official value for
256-px pre-training and the same *fraction* of the image at other sizes, so a 64-px
demo image moves by 1.75 px rather than by 11% of its width. Set
``translate_reference_size=None`` for the official absolute pixels.

Randomness comes from torch's global generator (like torchvision's transforms), so
``torch.manual_seed`` and DataLoader worker seeding make it reproducible.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from PIL import Image, ImageEnhance, ImageOps

__all__ = ["RandAugment", "ALBEF_OPS", "MAX_LEVEL"]

MAX_LEVEL = 10
# The official list for ALBEF (every task script passes exactly these names).
ALBEF_OPS: Tuple[str, ...] = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
                              "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_FILL = (128, 128, 128)

Fill = Tuple[int, int, int]


def _random_sign(value: float) -> float:
    return -value if torch.rand(()) < 0.5 else value


def _affine(img: Image.Image, matrix: Tuple[float, ...], fill: Fill) -> Image.Image:
    # PIL's AFFINE data maps output pixels to input pixels (an inverse map).
    return img.transform(img.size, Image.Transform.AFFINE, matrix,
                         resample=Image.Resampling.BILINEAR, fillcolor=fill)


class RandAugment:
    """Apply ``num_ops`` operations drawn with replacement, each with probability ``prob``.

    Args:
        num_ops: N, operations drawn per image (official 2).
        magnitude: M in [0, 10] (official 7).
        prob: chance that a drawn operation is actually applied (official 0.5).
        ops: operation names, a subset of :data:`ALBEF_OPS`.
        fill: RGB value for pixels uncovered by shear / translate / rotate.
        translate_reference_size: image side at which the translation equals the
            official pixel count; None keeps absolute pixels (see the module docstring).

    Call with an RGB ``PIL.Image``; returns a ``PIL.Image`` of the same size.
    """

    def __init__(self, num_ops: int = 2, magnitude: float = 7, prob: float = 0.5,
                 ops: Sequence[str] = ALBEF_OPS, fill: Fill = _FILL,
                 translate_reference_size: Optional[int] = 256) -> None:
        if not 0 <= magnitude <= MAX_LEVEL:
            raise ValueError(f"RandAugment magnitude={magnitude} must lie in [0, {MAX_LEVEL}].")
        if not 0 <= prob <= 1:
            raise ValueError(f"RandAugment prob={prob} must lie in [0, 1].")
        if num_ops < 0:
            raise ValueError(f"RandAugment num_ops={num_ops} must be >= 0.")
        unknown = [name for name in ops if name not in ALBEF_OPS]
        if unknown:
            raise ValueError(f"RandAugment ops {unknown} are not available; choose from "
                             f"{list(ALBEF_OPS)} (colour operations are excluded on purpose: "
                             f"captions mention colours).")
        if not ops:
            raise ValueError("RandAugment needs at least one operation in `ops`.")
        self.num_ops = int(num_ops)
        self.magnitude = float(magnitude)
        self.prob = float(prob)
        self.ops: Tuple[str, ...] = tuple(ops)
        self.fill = tuple(int(v) for v in fill)
        self.translate_reference_size = translate_reference_size
        level = self.magnitude / MAX_LEVEL
        self.enhance_factor = level * 1.8 + 0.1
        self.shear = level * 0.3
        self.translate_px = level * 10.0
        self.rotate_deg = level * 30.0

    # One method per operation (not lambdas) so the transform pickles for spawned workers.
    def _op_Identity(self, img: Image.Image) -> Image.Image:
        return img

    def _op_AutoContrast(self, img: Image.Image) -> Image.Image:
        return ImageOps.autocontrast(img)  # per channel, like the official version

    def _op_Equalize(self, img: Image.Image) -> Image.Image:
        return ImageOps.equalize(img)

    def _op_Brightness(self, img: Image.Image) -> Image.Image:
        return ImageEnhance.Brightness(img).enhance(self.enhance_factor)

    def _op_Sharpness(self, img: Image.Image) -> Image.Image:
        return ImageEnhance.Sharpness(img).enhance(self.enhance_factor)

    def _op_ShearX(self, img: Image.Image) -> Image.Image:
        return _affine(img, (1, _random_sign(self.shear), 0, 0, 1, 0), self.fill)

    def _op_ShearY(self, img: Image.Image) -> Image.Image:
        return _affine(img, (1, 0, 0, _random_sign(self.shear), 1, 0), self.fill)

    def _op_TranslateX(self, img: Image.Image) -> Image.Image:
        return _affine(img, (1, 0, _random_sign(self._shift(img.width)), 0, 1, 0), self.fill)

    def _op_TranslateY(self, img: Image.Image) -> Image.Image:
        return _affine(img, (1, 0, 0, 0, 1, _random_sign(self._shift(img.height))), self.fill)

    def _op_Rotate(self, img: Image.Image) -> Image.Image:
        return img.rotate(_random_sign(self.rotate_deg), resample=Image.Resampling.BILINEAR,
                          fillcolor=self.fill)

    def _shift(self, side: int) -> float:
        if self.translate_reference_size is None:
            return self.translate_px
        return self.translate_px * side / self.translate_reference_size

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.mode != "RGB":
            img = img.convert("RGB")
        if self.num_ops == 0:
            return img
        choices = torch.randint(len(self.ops), (self.num_ops,)).tolist()
        for index in choices:
            if torch.rand(()) < self.prob:
                img = getattr(self, f"_op_{self.ops[index]}")(img)
        return img

    def __repr__(self) -> str:
        return (f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, prob={self.prob}, "
                f"ops={list(self.ops)}, translate_reference_size={self.translate_reference_size})")
