"""The synthetic demo world: seeded scenes of coloured shapes, their captions and pixels.

A scene holds 1-3 objects on a light background. Each object has a kind (circle,
square, ...), a colour, a size (small / large), a vertical position (top / middle /
bottom) and a pixel bounding box. Captions name the colour and kind of every object,
so an image can be told apart from a few hundred others by its caption, which makes
retrieval learnable in minutes on a CPU.

Choices that keep the captions true under ALBEF's training augmentation:

- no "left" / "right": the random horizontal flip would make them false (vertical
  words survive flipping);
- no colour operations in RandAugment (see ``processors/randaugment.py``), and object
  colours far apart from each other and from the light backgrounds;
- objects are large (about 1/6 and 1/3 of the image side) and drawn with 4x
  super-sampling, so they stay recognisable after a crop and a resize to 64 px.

Everything derives from ``numpy.random.default_rng([seed, split, index])``: one scene
does not depend on how many others are generated, or in which order or process.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPES", "COLOURS", "BACKGROUNDS", "SIZES", "SceneObject", "Scene", "sample_scene",
           "write_captions", "render_scene", "SPLIT_CODES"]

RGB = Tuple[int, int, int]

SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "diamond")
_PLURALS = {"cross": "crosses"}
# Saturated, mutually distinct colours; none close to the light backgrounds.
COLOURS: Dict[str, RGB] = {
    "red": (214, 39, 40), "orange": (250, 140, 20), "yellow": (235, 200, 20),
    "green": (34, 150, 50), "blue": (31, 90, 220), "purple": (128, 50, 170),
    "pink": (240, 110, 190), "black": (25, 25, 25),
}
# name -> (colour at the top, colour at the bottom) of a soft vertical gradient
BACKGROUNDS: Dict[str, Tuple[RGB, RGB]] = {
    "white": ((252, 252, 250), (228, 228, 226)),
    "gray": ((200, 200, 204), (172, 172, 176)),
    "beige": ((242, 232, 208), (222, 206, 176)),
}
# object extent as a fraction of the image side, drawn uniformly from the range
SIZES: Dict[str, Tuple[float, float]] = {"small": (0.17, 0.22), "large": (0.32, 0.40)}
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

_MARGIN = 0.03          # free border, fraction of the side
_GAP = 0.04             # minimum free space between two objects' boxes
_SUPERSAMPLE = 4        # draw at 4x and box-filter down: smooth, recognisable edges
_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}


@dataclass
class SceneObject:
    kind: str
    colour: str
    size: str                  # "small" | "large"
    position: str              # vertical: "top" | "middle" | "bottom"
    bbox: List[int]            # [x, y, w, h] in pixels of the rendered image, tight
    center: List[float]        # [cx, cy] in pixels (drawing geometry)
    extent: float              # side of the square the shape is drawn in, pixels


@dataclass
class Scene:
    image: str                 # path relative to the world folder
    split: str
    index: int
    width: int
    height: int
    background: str
    objects: List[SceneObject] = field(default_factory=list)
    captions: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ geometry
def _shape_geometry(kind: str, cx: float, cy: float, d: float) -> Tuple[str, list]:
    """How to draw ``kind`` in a ``d``-sided square around (cx, cy): (primitive, points)."""
    r = d / 2
    if kind == "circle" or kind == "ring":
        return "ellipse", [(cx - r, cy - r), (cx + r, cy + r)]
    if kind == "square":
        s = 0.86 * r  # a bit smaller than the box so squares do not look bigger than circles
        return "polygon", [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if kind == "diamond":
        return "polygon", [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if kind == "triangle":
        h = math.sqrt(3) / 2 * d
        return "polygon", [(cx, cy - h / 2), (cx + r, cy + h / 2), (cx - r, cy + h / 2)]
    if kind == "star":
        inner = 0.45 * r
        shift = (r - r * math.cos(math.pi / 5)) / 2  # centre the star's extent vertically
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else inner
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + shift + radius * math.sin(angle)))
        return "polygon", points
    if kind == "cross":
        t = 0.19 * d  # half the arm thickness
        return "polygon", [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t),
                           (cx + r, cy + t), (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r),
                           (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t)]
    raise ValueError(f"unknown shape kind {kind!r}; known: {SHAPES}")


def _tight_bbox(points: Sequence[Tuple[float, float]], side: int) -> List[int]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, y0 = max(0, math.floor(min(xs))), max(0, math.floor(min(ys)))
    x1, y1 = min(side, math.ceil(max(xs))), min(side, math.ceil(max(ys)))
    return [x0, y0, x1 - x0, y1 - y0]


def _vertical_word(cy: float, side: int) -> str:
    if cy < 0.36 * side:
        return "top"
    if cy > 0.64 * side:
        return "bottom"
    return "middle"


# ------------------------------------------------------------------ sampling
def _place(rng: np.random.Generator, extents: Sequence[float], image_size: int,
           tries_per_object: int = 50) -> List[Tuple[float, float]]:
    """Centres for squares of the given sides, inside the margin and apart by the gap.

    Returns fewer centres than ``extents`` when an object found no room.
    """
    margin, gap = _MARGIN * image_size, _GAP * image_size
    centres: List[Tuple[float, float]] = []
    for d in extents:
        for _attempt in range(tries_per_object):
            low, high = margin + d / 2, image_size - margin - d / 2
            cx, cy = (float(v) for v in rng.uniform(low, high, size=2))
            if all(abs(cx - px) >= (d + pd) / 2 + gap or abs(cy - py) >= (d + pd) / 2 + gap
                   for (px, py), pd in zip(centres, extents)):
                centres.append((cx, cy))
                break
        else:
            break
    return centres


def sample_scene(rng: np.random.Generator, image_size: int, min_objects: int = 1,
                 max_objects: int = 3) -> Tuple[str, List[SceneObject]]:
    """Draw a background name and non-overlapping objects for one image.

    The object count is drawn with probability proportional to the count (1 of 1-3
    objects in 1/6 of the scenes): single-object scenes are the least distinctive for
    retrieval. Objects are laid out largest first; a layout that does not fit is
    redrawn up to 20 times before the scene keeps fewer objects (never fewer than one).

    Returns:
        (background name, objects).
    """
    background = str(rng.choice(list(BACKGROUNDS)))
    counts = np.arange(min_objects, max_objects + 1)
    wanted = int(rng.choice(counts, p=counts / counts.sum()))
    attributes = []
    for _ in range(wanted):
        kind, colour = str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS)))
        size = "large" if rng.random() < 0.5 else "small"
        attributes.append((kind, colour, size, float(rng.uniform(*SIZES[size])) * image_size))
    attributes.sort(key=lambda a: -a[3])  # largest first: they are the hardest to fit
    extents = [a[3] for a in attributes]
    centres: List[Tuple[float, float]] = []
    for _layout in range(20):
        centres = _place(rng, extents, image_size)
        if len(centres) == len(extents):
            break
    objects = []
    for (kind, colour, size, d), (cx, cy) in zip(attributes, centres):
        _, points = _shape_geometry(kind, cx, cy, d)
        objects.append(SceneObject(kind=kind, colour=colour, size=size,
                                   position=_vertical_word(cy, image_size),
                                   bbox=_tight_bbox(points, image_size),
                                   center=[round(cx, 3), round(cy, 3)], extent=round(d, 3)))
    return background, objects


# ------------------------------------------------------------------ captions
def _with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _plural(kind: str) -> str:
    return _PLURALS.get(kind, kind + "s")


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _position_phrase(position: str) -> str:
    return "in the middle" if position == "middle" else f"at the {position}"


def write_captions(objects: Sequence[SceneObject], background: str,
                   rng: np.random.Generator) -> List[str]:
    """Six captions, each naming the colour and kind of every object (orders shuffled).

    Forms: full list with sizes; "N shapes: ..."; with vertical positions; grouped
    counts ("there are two red circles and a blue star"); with the background; "a
    picture of ...". Never "left" or "right" (see the module docstring).
    """
    def shuffled() -> List[SceneObject]:
        return [objects[i] for i in rng.permutation(len(objects))]

    def full(o: SceneObject) -> str:
        return _with_article(f"{o.size} {o.colour} {o.kind}")

    def plain(o: SceneObject) -> str:
        return _with_article(f"{o.colour} {o.kind}")

    n = len(objects)
    counts: Dict[Tuple[str, str], int] = {}
    for o in shuffled():
        counts[(o.colour, o.kind)] = counts.get((o.colour, o.kind), 0) + 1
    grouped = [_with_article(f"{colour} {kind}") if k == 1
               else f"{_NUMBERS[k]} {colour} {_plural(kind)}"
               for (colour, kind), k in counts.items()]
    first_count = next(iter(counts.values()))
    return [
        _join([full(o) for o in shuffled()]),
        f"{_NUMBERS[n]} {'shape' if n == 1 else 'shapes'}: " + _join([plain(o) for o in shuffled()]),
        _join([f"{plain(o)} {_position_phrase(o.position)}" for o in shuffled()]),
        f"there {'is' if first_count == 1 else 'are'} " + _join(grouped),
        _join([plain(o) for o in shuffled()]) + f" on a {background} background",
        "a picture of " + _join([full(o) for o in shuffled()]),
    ]


# ------------------------------------------------------------------ rendering
@functools.lru_cache(maxsize=16)
def _background(name: str, side: int) -> Image.Image:
    """The gradient background (cached: building it costs more than drawing the shapes)."""
    top, bottom = (np.array(c, dtype=np.float32) for c in BACKGROUNDS[name])
    ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)[:, None, None]
    rows = (top + (bottom - top) * ramp).round().astype(np.uint8)  # (side, 1, 3)
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(rows, (side, side, 3))), "RGB")


def render_scene(background: str, objects: Sequence[SceneObject], image_size: int) -> Image.Image:
    """Draw the scene as an RGB image of side ``image_size``."""
    k = _SUPERSAMPLE
    canvas = _background(background, image_size * k).copy()
    draw = ImageDraw.Draw(canvas)
    for o in objects:
        cx, cy = o.center
        primitive, points = _shape_geometry(o.kind, cx * k, cy * k, o.extent * k)
        colour = COLOURS[o.colour]
        if o.kind == "ring":
            draw.ellipse(points, outline=colour, width=max(1, round(0.24 * o.extent * k)))
        elif primitive == "ellipse":
            draw.ellipse(points, fill=colour)
        else:
            draw.polygon(points, fill=colour)
    return canvas.reduce(k)
