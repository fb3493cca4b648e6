"""The embedded benchmark: small classification datasets written to disk in CoOp's layout.

Layout of one dataset (``dataset_dir``)::

    images/<class_folder>/<split>_<nnnnn>.png      32 px RGB PNG, no metadata
    split_zhou_<Name>.json                          {"train"|"val"|"test": [[relative_path, label, classname], ...]}
    embedded_dataset.json                           name, seed, class names, template, images per class

``relative_path`` is relative to ``images/``; a class folder is its class name with spaces as underscores.
Labels are positions in ``embedded_classnames(name)``: alphabetical class names for every dataset except
``Digits``, whose labels are the digit values (zero = 0 ... nine = 9).

All datasets but ``Digits`` are rendered with ``models.embedded.corpus`` from a random stream disjoint from the
corpus stream. ``Digits`` holds the real handwritten digits bundled with scikit-learn (8x8 grey, drawn here as
white ink on black and upscaled to 32 px).
"""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from models.atomic import atomic_directory
from models.embedded.corpus import COLOURS, DIGIT_WORDS, SHAPES, TEXTURES, render_concept, sample_concept

SPLITS: tuple[str, ...] = ("train", "val", "test")
BENCHMARK_IMAGE_SIZE = 32
DEFAULT_IMAGES_PER_CLASS: dict[str, int] = {"train": 48, "val": 12, "test": 40}
# Digits has ~180 real images per class; test takes whatever train and val leave (None = the rest).
DEFAULT_DIGIT_IMAGES_PER_CLASS: dict[str, int | None] = {"train": 80, "val": 20, "test": None}

# Spawn-key tag of the benchmark random stream (the corpus uses a different one).
BENCHMARK_STREAM_TAG = 0x62656E63  # "benc"

# Backgrounds the in-domain datasets use; "noisy" is kept for the ShapesNoisy domain shift.
_CLEAN_BACKGROUNDS: tuple[str, ...] = ("white", "black", "grey", "shaded")
# Every shape and every colour word of the corpus: 20 classes each, so that base and new halves hold 10.
_SHAPE_CLASSES: tuple[str, ...] = tuple(sorted(SHAPES))
_COLOUR_CLASSES: tuple[str, ...] = tuple(sorted(COLOURS))
# Shapes with room for a pattern to show.
_TEXTURE_CARRIERS: tuple[str, ...] = ("circle", "square", "hexagon", "heart", "diamond", "triangle")
# ColourShapes, the fine-grained dataset: 24 classes that share their colour with 3 others and their shape with 5,
# among them close neighbours (red/orange, blue/purple; circle/oval/hexagon/octagon).
_FINE_GRAINED_COLOURS: tuple[str, ...] = ("blue", "green", "orange", "purple", "red", "yellow")
_FINE_GRAINED_SHAPES: tuple[str, ...] = ("circle", "hexagon", "octagon", "oval")


@dataclass(frozen=True)
class _RenderedDataset:
    """A dataset drawn by the corpus renderer: each class is a set of fixed concept attributes."""

    classnames: tuple[str, ...]
    template: str
    attributes_of_class: Callable[[str], dict[str, str | tuple[str, ...]]]
    noise_std: float = 0.0  # extra per-pixel Gaussian noise on the final image (a domain shift)
    shared_attributes: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)


def _colour_shape_attributes(classname: str) -> dict[str, str]:
    colour, shape = classname.split(" ")
    return {"colour": colour, "shape": shape}


_RENDERED_DATASETS: dict[str, _RenderedDataset] = {
    "Shapes": _RenderedDataset(
        classnames=_SHAPE_CLASSES,
        template="a photo of a {}.",
        attributes_of_class=lambda name: {"shape": name},
        shared_attributes={"style": "photo", "background": _CLEAN_BACKGROUNDS},
    ),
    "ShapesSketch": _RenderedDataset(
        classnames=_SHAPE_CLASSES,
        template="a sketch of a {}.",
        attributes_of_class=lambda name: {"shape": name},
        shared_attributes={"style": "sketch", "background": _CLEAN_BACKGROUNDS},
    ),
    "ShapesNoisy": _RenderedDataset(
        classnames=_SHAPE_CLASSES,
        template="a blurry photo of a {}.",
        attributes_of_class=lambda name: {"shape": name},
        noise_std=20.0,
        # Small shapes would drown in the noise; the shift is in appearance, not in visibility.
        shared_attributes={"style": "painting", "background": "noisy", "size": ("medium", "large")},
    ),
    "Colours": _RenderedDataset(
        classnames=_COLOUR_CLASSES,
        template="a photo of a {} object.",
        attributes_of_class=lambda name: {"colour": name},
        shared_attributes={"shape": SHAPES, "style": "photo", "background": _CLEAN_BACKGROUNDS},
    ),
    "Textures": _RenderedDataset(
        classnames=tuple(sorted(TEXTURES)),
        template="a photo of a {} shape.",
        attributes_of_class=lambda name: {"texture": name},
        shared_attributes={
            "shape": _TEXTURE_CARRIERS,
            "size": ("medium", "large"),
            "style": "photo",
            "background": _CLEAN_BACKGROUNDS,
        },
    ),
    "ColourShapes": _RenderedDataset(
        classnames=tuple(sorted(f"{colour} {shape}" for colour in _FINE_GRAINED_COLOURS for shape in _FINE_GRAINED_SHAPES)),
        template="a photo of a {}.",
        attributes_of_class=_colour_shape_attributes,
        shared_attributes={"style": "photo", "background": _CLEAN_BACKGROUNDS},
    ),
}
_DIGITS_TEMPLATE = "a photo of the digit {}."

EMBEDDED_DATASET_NAMES: tuple[str, ...] = (
    "Shapes", "ShapesSketch", "ShapesNoisy", "Colours", "Textures", "ColourShapes", "Digits",
)


def _check_name(name: str) -> None:
    if name not in EMBEDDED_DATASET_NAMES:
        raise ValueError(f"unknown embedded dataset {name!r}; known datasets: {', '.join(EMBEDDED_DATASET_NAMES)}")


def embedded_classnames(name: str) -> tuple[str, ...]:
    """Class names of a dataset; a class's label is its position here."""
    _check_name(name)
    if name == "Digits":
        return DIGIT_WORDS
    return _RENDERED_DATASETS[name].classnames


def suggested_templates() -> dict[str, str]:
    """A zero-shot prompt template per dataset, phrased the way the corpus captions speak."""
    templates = {name: dataset.template for name, dataset in _RENDERED_DATASETS.items()}
    templates["Digits"] = _DIGITS_TEMPLATE
    return {name: templates[name] for name in EMBEDDED_DATASET_NAMES}


def class_folder(classname: str) -> str:
    return classname.replace(" ", "_")


def benchmark_rng(seed: int, name: str, class_index: int, split_index: int) -> np.random.Generator:
    """Random stream of one (dataset, class, split); disjoint from the corpus stream for any seed."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    dataset_key = zlib.crc32(name.encode("utf-8"))  # stable across runs, unlike hash()
    spawn_key = (BENCHMARK_STREAM_TAG, dataset_key, class_index, split_index)
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=spawn_key))


def _resolve_counts(name: str, images_per_class: Mapping[str, int] | None) -> dict[str, int | None]:
    defaults = DEFAULT_DIGIT_IMAGES_PER_CLASS if name == "Digits" else DEFAULT_IMAGES_PER_CLASS
    counts: dict[str, int | None] = dict(defaults)
    for split, count in (images_per_class or {}).items():
        if split not in SPLITS:
            raise ValueError(f"images_per_class: unknown split {split!r}; expected some of {list(SPLITS)}")
        if not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"images_per_class[{split!r}] must be a positive integer, got {count!r}")
        counts[split] = int(count)
    return counts


def _png_bytes(image: Image.Image) -> bytes:
    # PIL writes no timestamp or other varying chunk, so equal pixels give equal bytes.
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _save_png(path: Path, image: Image.Image) -> None:
    path.write_bytes(_png_bytes(image))


def _with_noise(image: Image.Image, rng: np.random.Generator, noise_std: float) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, noise_std, size=(image.height, image.width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), mode="RGB")


def _rendered_images(
    name: str, seed: int, counts: Mapping[str, int | None], image_size: int
) -> dict[tuple[int, str], list[Image.Image]]:
    """Images per (class index, split); an image equal to one drawn before is redrawn, so splits never share one."""
    dataset = _RENDERED_DATASETS[name]
    seen_pixels: set[bytes] = set()
    images: dict[tuple[int, str], list[Image.Image]] = {}
    for class_index, classname in enumerate(dataset.classnames):
        attributes = {**dataset.shared_attributes, **dataset.attributes_of_class(classname)}
        for split_index, split in enumerate(SPLITS):
            rng = benchmark_rng(seed, name, class_index, split_index)
            drawn: list[Image.Image] = []
            count = counts[split]
            assert count is not None
            while len(drawn) < count:
                image = render_concept(sample_concept(rng, **attributes), rng, image_size)
                if dataset.noise_std > 0:
                    image = _with_noise(image, rng, dataset.noise_std)
                digest = hashlib.sha256(image.tobytes()).digest()
                if digest in seen_pixels:
                    continue
                seen_pixels.add(digest)
                drawn.append(image)
            images[(class_index, split)] = drawn
    return images


def digit_image_from_sklearn(pixels: np.ndarray, image_size: int = BENCHMARK_IMAGE_SIZE) -> Image.Image:
    """One scikit-learn digit (8x8, values 0..16 = ink) as white ink on black, upscaled to RGB ``image_size``."""
    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.shape != (8, 8):
        raise ValueError(f"expected an 8x8 scikit-learn digit, got shape {pixels.shape}")
    grey = Image.fromarray(np.clip(pixels * (255.0 / 16.0), 0, 255).round().astype(np.uint8), mode="L")
    return grey.resize((image_size, image_size), Image.Resampling.BILINEAR).convert("RGB")


def _digit_images(
    seed: int, counts: Mapping[str, int | None], image_size: int
) -> dict[tuple[int, str], list[Image.Image]]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    seen_pixels: set[bytes] = set()
    unique_by_label: dict[int, list[Image.Image]] = {label: [] for label in range(len(DIGIT_WORDS))}
    for pixels, label in zip(bunch.images, bunch.target):
        image = digit_image_from_sklearn(pixels, image_size)
        digest = hashlib.sha256(image.tobytes()).digest()
        if digest in seen_pixels:  # a repeated scrawl would otherwise land in two splits
            continue
        seen_pixels.add(digest)
        unique_by_label[int(label)].append(image)

    images: dict[tuple[int, str], list[Image.Image]] = {}
    for label, candidates in unique_by_label.items():
        order = benchmark_rng(seed, "Digits", label, 0).permutation(len(candidates))
        fixed_total = sum(count for count in counts.values() if count is not None)
        if fixed_total > len(candidates) or (counts["test"] is None and fixed_total >= len(candidates)):
            raise ValueError(
                f"Digits: class {DIGIT_WORDS[label]!r} has {len(candidates)} distinct images, "
                f"too few for images_per_class {dict(counts)}"
            )
        start = 0
        for split in SPLITS:
            count = counts[split]
            stop = len(candidates) if count is None else start + count
            images[(label, split)] = [candidates[index] for index in order[start:stop]]
            start = stop
    return images


def build_embedded_dataset(
    name: str,
    dataset_dir: Path,
    seed: int,
    images_per_class: dict[str, int] | None = None,
    image_size: int = BENCHMARK_IMAGE_SIZE,
) -> Path:
    """Write dataset ``name`` to ``dataset_dir`` (replaced atomically) and return its split file.

    ``images_per_class`` overrides the per-split counts, e.g. ``{"train": 4, "val": 2, "test": 3}``; defaults
    are ``DEFAULT_IMAGES_PER_CLASS`` (Digits: ``DEFAULT_DIGIT_IMAGES_PER_CLASS``). Same arguments => identical
    files. Unknown ``name`` raises ``ValueError`` listing the known datasets.
    """
    _check_name(name)
    counts = _resolve_counts(name, images_per_class)
    if name == "Digits":
        images = _digit_images(seed, counts, image_size)
    else:
        images = _rendered_images(name, seed, counts, image_size)
    classnames = embedded_classnames(name)

    dataset_dir = Path(dataset_dir)
    split_file_name = f"split_zhou_{name}.json"
    split_rows: dict[str, list[list[str | int]]] = {split: [] for split in SPLITS}
    with atomic_directory(dataset_dir) as staging:
        for label, classname in enumerate(classnames):
            folder = class_folder(classname)
            (staging / "images" / folder).mkdir(parents=True)
            for split in SPLITS:
                for index, image in enumerate(images[(label, split)]):
                    relative_path = f"{folder}/{split}_{index:05d}.png"
                    _save_png(staging / "images" / relative_path, image)
                    split_rows[split].append([relative_path, label, classname])
        (staging / split_file_name).write_text(json.dumps(split_rows, indent=4) + "\n", encoding="utf-8")
        info = {
            "name": name,
            "seed": int(seed),
            "image_size": image_size,
            "classnames": list(classnames),
            "template": suggested_templates()[name],
            "images_per_class": {split: "rest" if count is None else count for split, count in counts.items()},
            "source": "scikit-learn load_digits" if name == "Digits" else "models.embedded.corpus renderer",
        }
        (staging / "embedded_dataset.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return dataset_dir / split_file_name


def build_embedded_benchmark(
    root: Path, seed: int, images_per_class: dict[str, int] | None = None, names: Sequence[str] = EMBEDDED_DATASET_NAMES
) -> dict[str, Path]:
    """Build several datasets under ``root/<Name>``; returns each dataset's split file."""
    return {name: build_embedded_dataset(name, Path(root) / name, seed, images_per_class) for name in names}
