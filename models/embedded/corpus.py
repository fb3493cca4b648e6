"""Procedural image-caption corpus: the pretraining data of the embedded world.

Every image shows one concept: a shape or a digit glyph, with a colour, a texture, a size, a background and a
rendering style. Every caption names a random subset of those attributes in plain English, so a CLIP trained on
the corpus sees each attribute word on its own and in combination. The attribute words are the class names of
the embedded benchmark (``models.embedded.benchmark``), so the pretrained model has zero-shot ability there.

Images are drawn at twice the output size (at least 64 px) and downsampled with an antialiasing filter.
Everything is drawn from a ``numpy.random.Generator``: the same seed gives the same bytes.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter

from models.atomic import atomic_directory

# ----------------------------------------------------------------------------------------------------------------
# Vocabulary. Every word here is a caption word and (for most) a benchmark class name.

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "heart", "hexagon", "ring", "diamond", "crescent",
    "pentagon", "octagon", "arrow", "oval", "semicircle", "trapezoid", "teardrop", "lightning", "hourglass", "flower",
)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 135, 0),
    "yellow": (250, 220, 20),
    "green": (30, 160, 50),
    "cyan": (0, 200, 220),
    "blue": (30, 60, 220),
    "purple": (130, 40, 180),
    "pink": (255, 120, 190),
    "brown": (130, 80, 35),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    # Neighbours of the basic colours: naming them apart is the fine-grained part of the Colours dataset.
    "grey": (128, 128, 128),
    "navy": (15, 25, 110),
    "teal": (0, 128, 128),
    "lime": (150, 240, 30),
    "olive": (120, 120, 20),
    "maroon": (120, 10, 30),
    "magenta": (230, 0, 230),
    "gold": (215, 170, 20),
    "beige": (225, 205, 160),
}
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "zigzag", "gradient")
SIZES: tuple[str, ...] = ("small", "medium", "large")
# Backgrounds are greyscale so that a colour word always refers to the object. "shaded" is a grey gradient; it is
# not called "gradient" because that word is a texture.
BACKGROUNDS: tuple[str, ...] = ("white", "black", "grey", "noisy", "shaded")
STYLES: tuple[str, ...] = ("photo", "cartoon", "sketch", "painting", "pixelated")
DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Share of corpus pairs that show a digit glyph rather than a shape.
DIGIT_FRACTION = 0.2

# Radius of the drawn object as a fraction of the canvas side, per size word.
# Even a small object spans a few 4-pixel patches at 32 px, so its outline can still be read.
_SIZE_RADIUS_FRACTION: dict[str, tuple[float, float]] = {
    "small": (0.20, 0.25),
    "medium": (0.28, 0.34),
    "large": (0.38, 0.44),
}
# How far from the centre an object may sit (share of the room the canvas leaves) and how far it may turn.
POSITION_JITTER = 0.35
MAX_ROTATION_DEGREES = 12.0
# A colour invisible on a background is not a concept worth drawing.
_CLASHING_COLOUR_BACKGROUND: frozenset[tuple[str, str]] = frozenset(
    {("black", "black"), ("white", "white"), ("grey", "grey"), ("navy", "black"), ("beige", "white")})

_VOCABULARY: dict[str, tuple[str, ...]] = {
    "shape": SHAPES + DIGIT_WORDS,
    "colour": tuple(COLOURS),
    "texture": TEXTURES,
    "size": SIZES,
    "background": BACKGROUNDS,
    "style": STYLES,
}


@dataclass(frozen=True)
class Concept:
    """What one image shows. ``shape`` is a ``SHAPES`` name, or a ``DIGIT_WORDS`` name for a digit glyph."""

    shape: str
    colour: str
    texture: str
    size: str
    background: str
    style: str

    def __post_init__(self) -> None:
        for field_name, allowed in _VOCABULARY.items():
            value = getattr(self, field_name)
            if value not in allowed:
                raise ValueError(f"Concept.{field_name}: unknown value {value!r}; expected one of {list(allowed)}")
        problem = _combination_problem(self)
        if problem is not None:
            raise ValueError(f"Concept {self}: {problem}")

    @property
    def is_digit(self) -> bool:
        return self.shape in DIGIT_WORDS


CONCEPT_FIELDS: tuple[str, ...] = tuple(field.name for field in fields(Concept))


def _combination_problem(concept: Concept) -> str | None:
    if (concept.colour, concept.background) in _CLASHING_COLOUR_BACKGROUND:
        return f"a {concept.colour} object is invisible on a {concept.background} background"
    # Thin strokes and outlines have no room for a pattern, so digits and sketches are always plain.
    if concept.texture != "plain" and concept.is_digit:
        return f"digits are drawn as strokes and cannot be {concept.texture}"
    if concept.texture != "plain" and concept.style == "sketch":
        return f"sketches are outlines and cannot be {concept.texture}"
    return None


# ----------------------------------------------------------------------------------------------------------------
# Sampling


def _allowed_values(field_name: str, requested: str | Sequence[str] | None) -> tuple[str, ...]:
    vocabulary = _VOCABULARY[field_name]
    if requested is None:
        return vocabulary
    values = (requested,) if isinstance(requested, str) else tuple(requested)
    if not values:
        raise ValueError(f"sample_concept: {field_name} was given an empty list of values")
    for value in values:
        if value not in vocabulary:
            raise ValueError(f"sample_concept: unknown {field_name} {value!r}; expected one of {list(vocabulary)}")
    return values


def _choose(rng: np.random.Generator, values: Sequence[str]) -> str:
    return values[int(rng.integers(len(values)))]


def sample_concept(rng: np.random.Generator, **fixed: str | Sequence[str]) -> Concept:
    """Draw a random valid concept.

    Each keyword names a ``Concept`` field and either forces it (``shape="star"``) or restricts it to a list
    (``style=("photo", "cartoon")``). Free attributes are uniform over valid combinations, except that
    ``DIGIT_FRACTION`` of free shapes are digits and digits are often white on black or black on white (as
    handwritten digits are). Raises ``ValueError`` for unknown fields or values, or constraints no concept meets.
    """
    unknown = sorted(set(fixed) - set(CONCEPT_FIELDS))
    if unknown:
        raise ValueError(f"sample_concept: unknown attributes {unknown}; expected some of {list(CONCEPT_FIELDS)}")
    allowed = {name: _allowed_values(name, fixed.get(name)) for name in CONCEPT_FIELDS}
    allowed_shapes = [value for value in allowed["shape"] if value in SHAPES]
    allowed_digits = [value for value in allowed["shape"] if value in DIGIT_WORDS]

    for _attempt in range(200):
        if allowed_shapes and allowed_digits:
            draw_digit = rng.random() < DIGIT_FRACTION
        else:
            draw_digit = bool(allowed_digits)
        shape = _choose(rng, allowed_digits if draw_digit else allowed_shapes)
        style = _choose(rng, allowed["style"])
        if "texture" not in fixed and (draw_digit or style == "sketch"):
            texture = "plain"
        else:
            texture = _choose(rng, allowed["texture"])
        size = _choose(rng, allowed["size"])
        colour = _choose(rng, allowed["colour"])
        background = _choose(rng, allowed["background"])
        if draw_digit and "colour" not in fixed and "background" not in fixed:
            ink_draw = rng.random()
            if ink_draw < 0.35:
                colour, background = "white", "black"
            elif ink_draw < 0.5:
                colour, background = "black", "white"
        candidate = dict(shape=shape, colour=colour, texture=texture, size=size, background=background, style=style)
        try:
            return Concept(**candidate)
        except ValueError:
            continue
    raise ValueError(f"sample_concept: no valid concept satisfies {fixed} (checked 200 random draws)")


# Families: pairs written next to each other that share every attribute but one. The pretraining batches keep a
# family together, so a batch holds the same colour, size, background and style with several shapes (or the same
# shape in several colours, ...): there, only the attribute that varies tells the captions apart, and the model
# has to read it from the pixels. Most families vary the shape, the attribute hardest to learn.
FAMILY_VARYING_WEIGHTS: dict[str, float] = {
    "shape": 0.55, "colour": 0.2, "texture": 0.1, "size": 0.05, "background": 0.05, "style": 0.05,
}


def sample_family(rng: np.random.Generator, size: int) -> tuple[str, list[Concept]]:
    """``size`` concepts that differ only in one attribute (drawn by ``FAMILY_VARYING_WEIGHTS``); returns its name.

    Values of the varying attribute are distinct while the vocabulary allows; a digit family varies the digit. A
    member whose value clashes with the shared attributes (white on white) is drawn with the others free.
    """
    if size < 1:
        raise ValueError(f"sample_family: size must be positive, got {size}")
    names = list(FAMILY_VARYING_WEIGHTS)
    weights = np.array([FAMILY_VARYING_WEIGHTS[name] for name in names])
    varying = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    if varying == "texture":  # digits and sketches carry no pattern
        base = sample_concept(rng, shape=SHAPES, style=tuple(style for style in STYLES if style != "sketch"))
    else:
        base = sample_concept(rng)
    if varying == "shape":
        vocabulary = DIGIT_WORDS if base.is_digit else SHAPES
    elif varying == "texture" or (varying == "style" and base.texture != "plain"):
        vocabulary = tuple(value for value in _VOCABULARY[varying] if value != "sketch")
    else:
        vocabulary = _VOCABULARY[varying]
    order = rng.permutation(len(vocabulary))
    values = [vocabulary[int(order[index % len(order)])] for index in range(size)]
    shared = {name: getattr(base, name) for name in CONCEPT_FIELDS if name != varying}
    members = []
    for value in values:
        try:
            members.append(sample_concept(rng, **shared, **{varying: value}))
        except ValueError:
            members.append(sample_concept(rng, **{varying: value}))
    return varying, members


# ----------------------------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class _Layout:
    centre_x: float
    centre_y: float
    radius: float
    rotation: float  # radians


@lru_cache(maxsize=8)
def _pixel_grid(canvas: int) -> tuple[np.ndarray, np.ndarray]:
    coordinates = np.arange(canvas, dtype=np.float32) + 0.5
    return np.meshgrid(coordinates, coordinates)  # x varies along columns, y along rows


def _jittered_rgb(colour: str, rng: np.random.Generator) -> np.ndarray:
    base = np.asarray(COLOURS[colour], dtype=np.float32)
    brightness = rng.uniform(0.88, 1.08)
    return np.clip(base * brightness + rng.normal(0.0, 7.0, size=3), 0, 255).astype(np.float32)


def _shade_of(rgb: np.ndarray) -> np.ndarray:
    """A darker (or, for dark colours, lighter) tone of the same hue: the second colour of a pattern."""
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    if luminance > 110:
        return rgb * 0.6  # not darker: a yellow pattern must still read as yellow
    return rgb + (255.0 - rgb) * 0.55


def _background_pixels(background: str, rng: np.random.Generator, canvas: int) -> np.ndarray:
    if background == "white":
        grey = np.full((canvas, canvas), rng.uniform(232, 255), dtype=np.float32)
    elif background == "black":
        grey = np.full((canvas, canvas), rng.uniform(0, 28), dtype=np.float32)
    elif background == "grey":
        grey = np.full((canvas, canvas), rng.uniform(105, 155), dtype=np.float32)
    elif background == "noisy":
        coarse_side = canvas // 8
        # Mid-range blotches, so that both white and black objects stay visible on them.
        coarse = rng.uniform(50, 205, size=(coarse_side, coarse_side)).astype(np.uint8)
        blotches = np.asarray(Image.fromarray(coarse).resize((canvas, canvas), Image.Resampling.BILINEAR))
        grain = rng.normal(0.0, 22.0, size=(canvas, canvas))
        grey = np.clip(blotches.astype(np.float32) + grain, 0, 255).astype(np.float32)
    elif background == "shaded":
        x_grid, y_grid = _pixel_grid(canvas)
        angle = rng.uniform(0, 2 * math.pi)
        position = ((x_grid - canvas / 2) * math.cos(angle) + (y_grid - canvas / 2) * math.sin(angle)) / canvas
        start = rng.uniform(20, 90)
        end = rng.uniform(170, 250)
        grey = start + (end - start) * np.clip(position + 0.5, 0, 1)
    else:
        raise ValueError(f"unknown background {background!r}")
    return np.repeat(grey[:, :, None], 3, axis=2)


def _pattern(texture: str, rng: np.random.Generator, canvas: int, layout: _Layout) -> np.ndarray:
    """Where the second tone goes (0 = base colour, 1 = shade), in the object's own frame."""
    if texture == "plain":
        return np.zeros((canvas, canvas), dtype=np.float32)
    x_grid, y_grid = _pixel_grid(canvas)
    angle = rng.uniform(0, math.pi)
    along = (x_grid - layout.centre_x) * math.cos(angle) + (y_grid - layout.centre_y) * math.sin(angle)
    across = -(x_grid - layout.centre_x) * math.sin(angle) + (y_grid - layout.centre_y) * math.cos(angle)
    # Pattern scale follows the object so a small shape still shows several stripes or dots.
    period = max(4.0, layout.radius * rng.uniform(0.42, 0.6))
    phase_along, phase_across = rng.uniform(0, period, size=2)
    if texture == "striped":
        pattern = np.mod(along + phase_along, period) < period / 2
    elif texture == "dotted":
        offset_along = np.mod(along + phase_along, period) - period / 2
        offset_across = np.mod(across + phase_across, period) - period / 2
        pattern = offset_along**2 + offset_across**2 < (0.3 * period) ** 2
    elif texture == "checkered":
        cell = period * 0.75
        pattern = (np.floor((along + phase_along) / cell) + np.floor((across + phase_across) / cell)) % 2 == 1
    elif texture == "zigzag":
        wavelength = period * 1.1
        triangle_wave = np.abs(np.mod(along / wavelength, 2.0) - 1.0)
        pattern = np.mod(across + triangle_wave * period * 1.2 + phase_across, period) < period / 2
    elif texture == "gradient":
        return np.clip(along / (2 * layout.radius) + 0.5, 0, 1).astype(np.float32) * 0.85
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return pattern.astype(np.float32)


def _rotated(points: np.ndarray, layout: _Layout) -> list[tuple[float, float]]:
    """Unit-radius outline points placed at the layout's centre, radius and rotation."""
    cosine, sine = math.cos(layout.rotation), math.sin(layout.rotation)
    x = points[:, 0] * cosine - points[:, 1] * sine
    y = points[:, 0] * sine + points[:, 1] * cosine
    return list(zip((x * layout.radius + layout.centre_x).tolist(), (y * layout.radius + layout.centre_y).tolist()))


def _regular_polygon(corners: int, start_degrees: float, radius: float = 1.0) -> np.ndarray:
    angles = np.deg2rad(start_degrees + np.arange(corners) * 360.0 / corners)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius


def _star_points() -> np.ndarray:
    outer = _regular_polygon(5, -90.0)
    inner = _regular_polygon(5, -90.0 + 36.0, radius=0.42)
    return np.stack([outer, inner], axis=1).reshape(-1, 2)


def _heart_points() -> np.ndarray:
    angles = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(angles) ** 3
    y = -(13 * np.cos(angles) - 5 * np.cos(2 * angles) - 2 * np.cos(3 * angles) - np.cos(4 * angles))
    return np.stack([x, y + 2.5], axis=1) / 16.5


_CROSS_POINTS = np.array(
    [(-0.3, -0.95), (0.3, -0.95), (0.3, -0.3), (0.95, -0.3), (0.95, 0.3), (0.3, 0.3),
     (0.3, 0.95), (-0.3, 0.95), (-0.3, 0.3), (-0.95, 0.3), (-0.95, -0.3), (-0.3, -0.3)]
)
def _polar_points(radius_of_angle, count: int = 72) -> np.ndarray:
    angles = np.linspace(0, 2 * math.pi, count, endpoint=False)
    radii = radius_of_angle(angles)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _semicircle_points() -> np.ndarray:
    angles = np.linspace(math.pi, 2 * math.pi, 25)  # the upper half (y grows downwards)
    arc = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return arc + np.array([0.0, 0.45])  # centred on the half disc's box


def _teardrop_points() -> np.ndarray:
    # A round bottom and a point at the top: x = sin(t) * sin(t/2)^m, y = -cos(t).
    t = np.linspace(0, 2 * math.pi, 60, endpoint=False)
    return np.stack([0.75 * np.sin(t) * np.sin(t / 2) ** 1.5, np.cos(t)], axis=1) * np.array([1.0, -1.0])


_POLYGONS: dict[str, np.ndarray] = {
    "pentagon": _regular_polygon(5, -90.0) + np.array([0.0, 0.09]),
    "octagon": _regular_polygon(8, 22.5),
    "arrow": np.array([(-0.95, -0.28), (0.05, -0.28), (0.05, -0.7), (0.95, 0.0), (0.05, 0.7), (0.05, 0.28),
                       (-0.95, 0.28)]),
    "oval": _polar_points(lambda a: 1.0 / np.sqrt(np.cos(a) ** 2 + (np.sin(a) / 0.55) ** 2)),
    "semicircle": _semicircle_points(),
    "trapezoid": np.array([(-0.95, 0.6), (0.95, 0.6), (0.45, -0.6), (-0.45, -0.6)]),
    "teardrop": _teardrop_points(),
    "lightning": np.array([(0.25, -1.0), (-0.55, 0.12), (-0.02, 0.12), (-0.3, 1.0), (0.55, -0.18), (0.05, -0.18),
                           (0.35, -1.0)]),
    "hourglass": np.array([(-0.72, -0.92), (0.72, -0.92), (0.12, 0.0), (0.72, 0.92), (-0.72, 0.92), (-0.12, 0.0)]),
    "flower": _polar_points(lambda a: 0.55 + 0.45 * np.abs(np.cos(2.5 * a)), count=120),
    "square": np.array([(-0.82, -0.82), (0.82, -0.82), (0.82, 0.82), (-0.82, 0.82)]),
    # Centred on its centroid, nudged down so it looks centred.
    "triangle": _regular_polygon(3, -90.0) + np.array([0.0, 0.12]),
    "star": _star_points(),
    "cross": _CROSS_POINTS,
    "heart": _heart_points(),
    "hexagon": _regular_polygon(6, 0.0),
    "diamond": np.array([(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]),
}


def _circle_box(centre_x: float, centre_y: float, radius: float) -> tuple[float, float, float, float]:
    return (centre_x - radius, centre_y - radius, centre_x + radius, centre_y + radius)


def _shape_mask(shape: str, layout: _Layout, canvas: int) -> Image.Image:
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse(_circle_box(layout.centre_x, layout.centre_y, layout.radius), fill=255)
    elif shape == "ring":
        draw.ellipse(_circle_box(layout.centre_x, layout.centre_y, layout.radius), fill=255)
        draw.ellipse(_circle_box(layout.centre_x, layout.centre_y, layout.radius * 0.55), fill=0)
    elif shape == "crescent":
        draw.ellipse(_circle_box(layout.centre_x, layout.centre_y, layout.radius), fill=255)
        bite_x, bite_y = _rotated(np.array([(0.45, -0.2)]), layout)[0]
        draw.ellipse(_circle_box(bite_x, bite_y, layout.radius * 0.85), fill=0)
    elif shape in _POLYGONS:
        draw.polygon(_rotated(_POLYGONS[shape], layout), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def _arc(centre_x: float, centre_y: float, radius_x: float, radius_y: float, start: float, end: float) -> np.ndarray:
    """Points along an elliptic arc in the glyph's unit box; angles in degrees, 0 = right, 90 = down."""
    count = max(4, int(abs(end - start) / 15))
    angles = np.deg2rad(np.linspace(start, end, count))
    return np.stack([centre_x + radius_x * np.cos(angles), centre_y + radius_y * np.sin(angles)], axis=1)


def _polyline(*points: tuple[float, float]) -> np.ndarray:
    return np.array(points, dtype=np.float64)


# Stroke skeletons of the ten digits in a unit box (x right, y down), written the way people handwrite them.
_DIGIT_STROKES: dict[str, list[np.ndarray]] = {
    "zero": [_arc(0.5, 0.5, 0.32, 0.45, 0, 360)],
    "one": [_polyline((0.3, 0.22), (0.55, 0.04), (0.55, 0.96))],
    "two": [np.concatenate([_arc(0.5, 0.3, 0.3, 0.25, 185, 390), _polyline((0.15, 0.95), (0.88, 0.95))])],
    "three": [_arc(0.5, 0.28, 0.28, 0.23, 200, 450), _arc(0.5, 0.72, 0.32, 0.23, 270, 520)],
    "four": [_polyline((0.68, 0.96), (0.68, 0.04), (0.12, 0.66), (0.9, 0.66))],
    "five": [np.concatenate([_polyline((0.82, 0.05), (0.3, 0.05), (0.25, 0.46)), _arc(0.5, 0.67, 0.3, 0.27, 220, 500)])],
    "six": [_arc(0.75, 0.68, 0.55, 0.63, 260, 180), _arc(0.5, 0.68, 0.3, 0.27, 0, 360)],
    "seven": [_polyline((0.12, 0.05), (0.88, 0.05), (0.4, 0.96))],
    "eight": [_arc(0.5, 0.27, 0.23, 0.22, 0, 360), _arc(0.5, 0.72, 0.28, 0.24, 0, 360)],
    "nine": [_arc(0.5, 0.32, 0.28, 0.26, 0, 360), _arc(0.25, 0.32, 0.55, 0.63, 0, 80)],
}


def _digit_mask(digit: str, layout: _Layout, rng: np.random.Generator, canvas: int) -> Image.Image:
    """A handwritten-looking glyph: the skeleton slanted, rotated, wobbled and drawn with a thick pen."""
    height = 2 * layout.radius * rng.uniform(1.0, 1.15)
    width = height * rng.uniform(0.55, 0.75)
    slant = rng.uniform(-0.25, 0.25)
    thickness = max(2, int(round(canvas * rng.uniform(0.07, 0.13))))
    cosine, sine = math.cos(layout.rotation), math.sin(layout.rotation)
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    for stroke in _DIGIT_STROKES[digit]:
        x = (stroke[:, 0] - 0.5) * width
        y = (stroke[:, 1] - 0.5) * height
        x = x - slant * y
        wobble = rng.normal(0.0, 0.012 * height, size=(2, len(stroke)))
        placed_x = x * cosine - y * sine + layout.centre_x + wobble[0]
        placed_y = x * sine + y * cosine + layout.centre_y + wobble[1]
        points = list(zip(placed_x.tolist(), placed_y.tolist()))
        draw.line(points, fill=255, width=thickness, joint="curve")
        for end_x, end_y in (points[0], points[-1]):  # round pen ends
            draw.ellipse(_circle_box(end_x, end_y, thickness / 2 - 0.5), fill=255)
    return mask


def _outline(mask: Image.Image, thickness: int) -> Image.Image:
    """The band of ``mask`` within ``thickness`` pixels of its edge."""
    eroded = mask.filter(ImageFilter.MinFilter(2 * thickness + 1))
    return Image.fromarray(np.subtract(np.asarray(mask), np.asarray(eroded), dtype=np.int16).clip(0, 255).astype(np.uint8))


def _sample_layout(concept: Concept, rng: np.random.Generator, canvas: int) -> _Layout:
    low, high = _SIZE_RADIUS_FRACTION[concept.size]
    radius = canvas * rng.uniform(low, high)
    # Digits are taller than wide (their box is about 1.1 radius from the centre vertically).
    margin = radius * (1.2 if concept.is_digit else 1.0) + canvas * 0.03
    margin = min(margin, canvas / 2)
    # Objects sit near the centre, as in a photo of one object: a fraction POSITION_JITTER of the free room.
    free = canvas / 2 - margin
    centre_x, centre_y = canvas / 2 + rng.uniform(-1.0, 1.0, size=2) * free * POSITION_JITTER
    # Small turns only: a square turned 45 degrees is a diamond, a cross turned 45 degrees an x.
    rotation = math.radians(rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES))
    return _Layout(float(centre_x), float(centre_y), float(radius), rotation)


def render_concept(concept: Concept, rng: np.random.Generator, image_size: int = 32) -> Image.Image:
    """Draw ``concept`` as an ``image_size`` square RGB image, with random position, turn and colour jitter."""
    if image_size < 8:
        raise ValueError(f"render_concept: image_size must be at least 8 pixels, got {image_size}")
    canvas = max(64, 2 * image_size)
    layout = _sample_layout(concept, rng, canvas)
    background = _background_pixels(concept.background, rng, canvas)

    if concept.is_digit:
        mask_image = _digit_mask(concept.shape, layout, rng, canvas)
    else:
        mask_image = _shape_mask(concept.shape, layout, canvas)
    line_width = max(1, int(round(canvas * rng.uniform(0.03, 0.05))))
    if concept.style == "sketch":
        mask_image = _outline(mask_image, line_width)
    mask = np.asarray(mask_image, dtype=np.float32)[:, :, None] / 255.0

    base_rgb = _jittered_rgb(concept.colour, rng)
    shade_rgb = _shade_of(base_rgb)
    pattern = _pattern(concept.texture, rng, canvas, layout)[:, :, None]
    fill = base_rgb * (1.0 - pattern) + shade_rgb * pattern
    pixels = background * (1.0 - mask) + fill * mask

    if concept.style == "cartoon":
        ink = np.asarray(_outline(mask_image, line_width), dtype=np.float32)[:, :, None] / 255.0
        pixels = pixels * (1.0 - ink) + 10.0 * ink
    elif concept.style == "photo":
        pixels = pixels + rng.normal(0.0, 3.0, size=pixels.shape)  # faint sensor grain
    image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), mode="RGB")

    if concept.style == "painting":
        image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(1.0, 2.0) * canvas / 64))
    elif concept.style == "pixelated" and concept.is_digit:
        # A scanned digit at 8 x 8 grey levels, smoothed back up: how low-resolution handwriting looks.
        image = image.resize((8, 8), Image.Resampling.BOX).resize((canvas, canvas), Image.Resampling.BILINEAR)
    elif concept.style == "pixelated":
        blocks = int(rng.integers(10, 17))
        image = image.resize((blocks, blocks), Image.Resampling.BOX).resize((canvas, canvas), Image.Resampling.NEAREST)
    return image.resize((image_size, image_size), Image.Resampling.LANCZOS)


# ----------------------------------------------------------------------------------------------------------------
# Captions

_STYLE_PHRASES: dict[str, tuple[str, ...]] = {
    "photo": ("a photo of", "a photo of", "a picture of", "an image of", "a close-up photo of"),
    "cartoon": ("a cartoon of", "a drawing of", "a cartoon drawing of"),
    "sketch": ("a sketch of", "an outline of", "a line drawing of", "a pencil sketch of"),
    "painting": ("a painting of", "a blurry photo of", "a watercolour painting of"),
    "pixelated": ("a pixelated image of", "a low resolution photo of", "a pixelated photo of"),
}
# Texture as a trailing phrase ("a red circle with stripes"), the alternative to the adjective ("a striped ...").
_TEXTURE_PHRASES: dict[str, str] = {
    "plain": "with no pattern",
    "striped": "with stripes",
    "dotted": "with dots",
    "checkered": "with a checkered pattern",
    "zigzag": "with a zigzag pattern",
    "gradient": "with a colour gradient",
}
_GENERIC_NOUNS: tuple[str, ...] = ("shape", "object")


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _style_prefix(style: str, rng: np.random.Generator, named: frozenset[str]) -> str:
    if "style" in named:
        return _choose(rng, _STYLE_PHRASES[style]) + " "
    keep_probability = 0.75 if style == "photo" else 0.85
    if rng.random() < keep_probability:
        return _choose(rng, _STYLE_PHRASES[style]) + " "
    return ""


def _background_suffix(background: str, rng: np.random.Generator, probability: float) -> str:
    return f" on a {background} background" if rng.random() < probability else ""


def _shape_caption(concept: Concept, rng: np.random.Generator, named: frozenset[str]) -> str:
    prefix = _style_prefix(concept.style, rng, named)
    adjectives: list[str] = []
    if "size" in named or rng.random() < 0.4:
        adjectives.append(concept.size)
    mention_colour = "colour" in named or rng.random() < 0.6
    if mention_colour:
        adjectives.append(concept.colour)
    texture_suffix = ""
    if concept.texture == "plain":
        texture_probability = 0.1
    elif concept.style in ("painting", "pixelated"):
        texture_probability = 0.35  # blur and big pixels wash patterns out; say so less often
    else:
        texture_probability = 0.75
    mention_texture = "texture" in named or rng.random() < texture_probability
    if mention_texture:
        if rng.random() < 0.5:
            adjectives.append(concept.texture)
        else:
            texture_suffix = " " + _TEXTURE_PHRASES[concept.texture]
    noun = concept.shape if "shape" in named or rng.random() < 0.92 else _choose(rng, _GENERIC_NOUNS)
    if noun in _GENERIC_NOUNS and not mention_colour and not mention_texture:
        adjectives.append(concept.colour)  # "a photo of an object" would teach nothing
    background_probability = 1.0 if "background" in named else 0.4
    phrase = " ".join([*adjectives, noun]) + texture_suffix + _background_suffix(concept.background, rng,
                                                                                 background_probability)
    return prefix + _with_article(phrase)


def _digit_caption(concept: Concept, rng: np.random.Generator, named: frozenset[str]) -> str:
    prefix = _style_prefix(concept.style, rng, named)
    word = concept.shape
    form = rng.random()
    if "colour" in named or "size" in named:
        form = 0.7  # the form that names both
    if form < 0.45:
        subject = f"the digit {word}"
    elif form < 0.65:
        subject = _with_article(f"{concept.colour} digit {word}")
    elif form < 0.75:
        subject = _with_article(f"{concept.size} {concept.colour} digit {word}")
    elif form < 0.87:
        subject = f"the number {word}"
    else:
        subject = f"a handwritten digit {word}"
    return prefix + subject + _background_suffix(concept.background, rng, 1.0 if "background" in named else 0.35)


def caption_for(concept: Concept, rng: np.random.Generator, named: Sequence[str] = ()) -> str:
    """A natural-language caption naming a random subset of the concept's attributes (never a wrong one).

    ``named`` lists attributes the caption must name (the attribute that tells the images of a family apart).
    """
    unknown = sorted(set(named) - set(CONCEPT_FIELDS))
    if unknown:
        raise ValueError(f"caption_for: unknown attributes {unknown}; expected some of {list(CONCEPT_FIELDS)}")
    named = frozenset(named)
    caption = _digit_caption(concept, rng, named) if concept.is_digit else _shape_caption(concept, rng, named)
    return caption + "." if rng.random() < 0.5 else caption


# ----------------------------------------------------------------------------------------------------------------
# Corpus files

IMAGES_FILE = "images.npy"
CAPTIONS_FILE = "captions.parquet"
CONFIG_FILE = "corpus.json"

# Spawn-key tag of the corpus random stream; the benchmark uses a different tag, so corpus and benchmark
# images come from disjoint streams even when they are given the same seed.
CORPUS_STREAM_TAG = 0x636F7270  # "corp"


@dataclass(frozen=True)
class CorpusSummary:
    """Where a corpus was written and what it holds."""

    output_dir: Path
    num_pairs: int
    image_size: int
    seed: int
    attribute_counts: dict[str, dict[str, int]]

    @property
    def images_path(self) -> Path:
        return self.output_dir / IMAGES_FILE

    @property
    def captions_path(self) -> Path:
        return self.output_dir / CAPTIONS_FILE


def corpus_rng(seed: int) -> np.random.Generator:
    """The random stream of the corpus for ``seed``."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(CORPUS_STREAM_TAG,)))


def _write_captions(path: Path, captions: list[str], concepts: list[Concept], families: list[int]) -> None:
    columns: dict[str, pa.Array] = {
        "row": pa.array(np.arange(len(captions), dtype=np.int64)),
        "caption": pa.array(captions, type=pa.string()),
        "family": pa.array(np.asarray(families, dtype=np.int64)),
    }
    for field_name in CONCEPT_FIELDS:
        columns[field_name] = pa.array([getattr(concept, field_name) for concept in concepts], type=pa.string())
    pq.write_table(pa.table(columns), path)


def write_corpus(output_dir: Path, num_pairs: int, seed: int, image_size: int = 32,
                 family_size: int = 1) -> CorpusSummary:
    """Generate ``num_pairs`` image-caption pairs into ``output_dir`` (replaced atomically).

    ``family_size`` > 1 writes families (``sample_family``) on consecutive rows, each caption naming the attribute
    its family varies; 1 draws every pair on its own. Writes ``images.npy`` (uint8, N x H x W x 3),
    ``captions.parquet`` (row, caption, family and one column per concept attribute) and ``corpus.json`` (the
    generation settings). Same arguments => identical bytes.
    """
    if num_pairs < 1:
        raise ValueError(f"write_corpus: num_pairs must be positive, got {num_pairs}")
    if not isinstance(family_size, (int, np.integer)) or family_size < 1:
        raise ValueError(f"write_corpus: family_size must be a positive integer, got {family_size!r}")
    output_dir = Path(output_dir)
    rng = corpus_rng(seed)
    images = np.empty((num_pairs, image_size, image_size, 3), dtype=np.uint8)
    concepts: list[Concept] = []
    captions: list[str] = []
    families: list[int] = []
    family = 0
    while len(concepts) < num_pairs:
        if family_size == 1:
            named, members = (), [sample_concept(rng)]
        else:
            varying, members = sample_family(rng, min(family_size, num_pairs - len(concepts)))
            named = (varying,)
        for concept in members:
            images[len(concepts)] = np.asarray(render_concept(concept, rng, image_size))
            concepts.append(concept)
            captions.append(caption_for(concept, rng, named))
            families.append(family)
        family += 1

    attribute_counts = {
        field_name: dict(sorted(Counter(getattr(concept, field_name) for concept in concepts).items()))
        for field_name in CONCEPT_FIELDS
    }
    config = {
        "num_pairs": num_pairs,
        "seed": int(seed),
        "image_size": image_size,
        "vocabulary": {name: list(values) for name, values in _VOCABULARY.items()},
        "colours_rgb": {name: list(rgb) for name, rgb in COLOURS.items()},
        "digit_fraction": DIGIT_FRACTION,
        "family_size": int(family_size),
        "family_varying_weights": FAMILY_VARYING_WEIGHTS if family_size > 1 else None,
    }
    with atomic_directory(output_dir) as staging:
        np.save(staging / IMAGES_FILE, images)
        _write_captions(staging / CAPTIONS_FILE, captions, concepts, families)
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return CorpusSummary(output_dir, num_pairs, image_size, int(seed), attribute_counts)


def load_corpus(output_dir: Path) -> tuple[np.ndarray, list[str]]:
    """Images (uint8, N x H x W x 3) and captions of a corpus written by ``write_corpus``."""
    output_dir = Path(output_dir)
    images_path, captions_path = output_dir / IMAGES_FILE, output_dir / CAPTIONS_FILE
    for path in (images_path, captions_path):
        if not path.is_file():
            raise FileNotFoundError(f"corpus file missing: {path} (write it with write_corpus)")
    images = np.load(images_path, allow_pickle=False)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"{images_path}: expected uint8 N x H x W x 3 images, got {images.dtype} {images.shape}")
    table = pq.read_table(captions_path, columns=["row", "caption"])
    rows = table.column("row").to_pylist()
    if rows != list(range(len(rows))):
        raise ValueError(f"{captions_path}: column 'row' must be 0..N-1 in order")
    captions = table.column("caption").to_pylist()
    if len(captions) != len(images):
        raise ValueError(f"{captions_path}: {len(captions)} captions but {images_path.name} holds {len(images)} images")
    for row, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{captions_path}: row {row}: caption is empty")
    return images, captions


def load_corpus_families(output_dir: Path) -> np.ndarray:
    """The family of every pair (int64, N); a corpus written before families existed is one family per pair."""
    path = Path(output_dir) / CAPTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"corpus file missing: {path} (write it with write_corpus)")
    metadata = pq.read_metadata(path)
    if "family" not in metadata.schema.names:
        return np.arange(metadata.num_rows, dtype=np.int64)
    return pq.read_table(path, columns=["family"]).column("family").to_numpy().astype(np.int64)


def subject_caption(concept: Concept) -> str:
    """The caption that names what the object is, not how it is coloured: "a circle", "a striped circle", "the digit
    three" (a pretraining curriculum). Texture is named because, like shape, raw pixels do not give it away."""
    if concept.is_digit:
        return f"the digit {concept.shape}"
    if concept.texture == "plain":
        return _with_article(concept.shape)
    if concept.texture == "gradient":
        return _with_article(f"{concept.shape} {_TEXTURE_PHRASES['gradient']}")
    return _with_article(f"{concept.texture} {concept.shape}")


def load_subject_captions(output_dir: Path) -> list[str]:
    """``subject_caption`` of every pair of a corpus, from its concept columns."""
    table = concept_table(output_dir).to_pydict()
    return [subject_caption(Concept(**{name: table[name][row] for name in CONCEPT_FIELDS}))
            for row in range(len(table["row"]))]


def concept_table(output_dir: Path) -> pa.Table:
    """The full ``captions.parquet`` table (row, caption and the concept attributes of each pair)."""
    path = Path(output_dir) / CAPTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"corpus file missing: {path} (write it with write_corpus)")
    return pq.read_table(path)
