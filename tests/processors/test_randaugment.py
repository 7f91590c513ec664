import colorsys

import pytest
import torch
from PIL import Image

from albef_plugin.processors.randaugment import ALBEF_OPS, RandAugment

# Operations that change hue / saturation or invert colours: never allowed (captions name colours).
COLOUR_OPS = {"Color", "Solarize", "SolarizeAdd", "Posterize", "Invert", "Hue", "Saturation",
              "ColorJitter", "Contrast"}


def _scene() -> Image.Image:
    """A red square on a light gray background."""
    img = Image.new("RGB", (32, 32), (200, 200, 200))
    img.paste((210, 40, 40), (8, 8, 24, 24))
    return img


def test_official_operation_list_has_no_colour_operation():
    assert ALBEF_OPS == ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
                         "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
    assert not COLOUR_OPS & set(ALBEF_OPS)
    assert not COLOUR_OPS & set(RandAugment().ops)
    with pytest.raises(ValueError, match="colour operations are excluded"):
        RandAugment(ops=["Color"])


def test_magnitudes_at_m7_match_the_official_values():
    aug = RandAugment(2, 7)
    assert aug.enhance_factor == pytest.approx(1.36)
    assert aug.shear == pytest.approx(0.21)
    assert aug.translate_px == pytest.approx(7.0)
    assert aug.rotate_deg == pytest.approx(21.0)
    # translation scales with the image side, official pixels at the 256-px reference
    assert aug._shift(256) == pytest.approx(7.0) and aug._shift(64) == pytest.approx(1.75)
    assert RandAugment(translate_reference_size=None)._shift(64) == pytest.approx(7.0)


@pytest.mark.parametrize("op", ALBEF_OPS)
def test_every_operation_keeps_size_and_the_object_colour(op):
    torch.manual_seed(0)
    aug = RandAugment(num_ops=1, magnitude=7, prob=1.0, ops=[op])
    out = aug(_scene())
    assert out.size == (32, 32) and out.mode == "RGB"
    r, g, b = out.getpixel((16, 16))  # the centre stays inside the square under every op
    hue = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)[0]
    assert r > g + 60 and r > b + 60 and (hue < 0.05 or hue > 0.95), (op, (r, g, b))


def test_geometric_operations_fill_with_gray():
    torch.manual_seed(0)
    out = RandAugment(num_ops=1, prob=1.0, ops=["Rotate"])(Image.new("RGB", (32, 32), (0, 0, 0)))
    assert out.getpixel((0, 0)) == (128, 128, 128)


def test_prob_zero_changes_nothing_and_seed_makes_it_reproducible():
    img = _scene()
    assert RandAugment(prob=0.0)(img).tobytes() == img.tobytes()
    aug = RandAugment(num_ops=2, prob=0.5)
    torch.manual_seed(5)
    first = [aug(img).tobytes() for _ in range(5)]
    torch.manual_seed(5)
    assert first == [aug(img).tobytes() for _ in range(5)]


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="magnitude=11"):
        RandAugment(magnitude=11)
    with pytest.raises(ValueError, match="prob=2"):
        RandAugment(prob=2)
