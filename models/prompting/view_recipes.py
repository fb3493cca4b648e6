"""Augmented view sets: a recipe of random resized crops and flips, drawn once per image and pass, cached like any view.

The feature-space baselines train on augmented views of their few-shot images, each with its own count: Tip-Adapter
averages 10 augmented passes into its cache keys, CLAP keeps 20 views of every image, LP++ takes one pass. Encoding
those views at every epoch (as the authors' code does) costs a pass through the image tower per view; here a view is
a pure function of (recipe, image content, pass index), so its features are computed once and cached
(`models.prompting.feature_cache`, namespace view "augmented" keyed by the recipe and pass), and shared by every
method, shot count and seed that asks for the same recipe.

A view: RandomResizedCrop at the backbone's input size (area fraction in `crop_scale`, aspect ratio 3/4 to 4/3,
bicubic, torchvision's sampling with its 10 attempts and centre-crop fallback), then a horizontal flip with
probability 1/2 when `flip`. Its randomness comes from a generator seeded by sha256(seed, image content hash, pass
index), not from a global stream, so a view does not depend on which images were encoded first or together. The
backbone's eval transform then only resizes (a no-op at the input size) and normalises.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image

from models.provenance import stable_hash

RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
RECIPE_FIELDS = ("passes", "crop_scale", "flip", "seed")


@dataclass(frozen=True)
class ViewRecipe:
    passes: int
    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip: bool = True
    seed: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.passes, int) and not isinstance(self.passes, bool)) or self.passes < 1:
            raise ValueError(f"views.passes must be an integer >= 1, got {self.passes!r}")
        scale = tuple(self.crop_scale) if isinstance(self.crop_scale, (list, tuple)) else None
        if (scale is None or len(scale) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in scale)
                or not 0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"views.crop_scale must be [low, high] with 0 < low <= high <= 1 (fractions of the "
                             f"image area), got {self.crop_scale!r}")
        object.__setattr__(self, "crop_scale", (float(scale[0]), float(scale[1])))
        if not isinstance(self.flip, bool):
            raise ValueError(f"views.flip must be true or false, got {self.flip!r}")
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool)) or self.seed < 0:
            raise ValueError(f"views.seed must be an integer >= 0, got {self.seed!r}")

    @classmethod
    def from_mapping(cls, raw: Any) -> "ViewRecipe":
        """From a catalog mapping ({passes, crop_scale, flip, seed}); ValueError names the field."""
        if not isinstance(raw, dict):
            raise ValueError(f"views must be a mapping with {list(RECIPE_FIELDS)}, got {raw!r}")
        unknown = sorted(set(raw) - set(RECIPE_FIELDS))
        if unknown:
            raise ValueError(f"views has unknown field(s) {unknown}; known: {list(RECIPE_FIELDS)}")
        if "passes" not in raw:
            raise ValueError("views.passes is required (the number of augmented views per image)")
        values = dict(raw)
        if isinstance(values.get("crop_scale"), list):
            values["crop_scale"] = tuple(values["crop_scale"])
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        described = asdict(self)
        described["crop_scale"] = list(self.crop_scale)
        return described

    @property
    def key(self) -> str:
        return stable_hash(self.as_dict(), length=12)

    def describe(self) -> str:
        low, high = self.crop_scale
        flip = " + flip" if self.flip else ""
        return f"{self.passes} x crop {low:g}-{high:g}{flip} (seed {self.seed})"

    def pass_view(self, pass_index: int, size: tuple[int, int]) -> "AugmentedView":
        if not 0 <= pass_index < self.passes:
            raise ValueError(f"pass {pass_index} outside the recipe's {self.passes} passes")
        return AugmentedView(self, pass_index, (int(size[0]), int(size[1])))

    def cache_view_name(self, pass_index: int) -> str:
        """What distinguishes this pass's features in the feature cache (FeatureNamespace.recipe): the crop range,
        flip and seed, not the number of passes, so that a recipe of 10 passes shares its first pass with the same
        recipe of 1 (a view depends only on those, the image and the pass index)."""
        view = {key: value for key, value in self.as_dict().items() if key != "passes"}
        return f"{stable_hash(view, length=12)}-pass{pass_index}"


@dataclass(frozen=True)
class AugmentedView:
    """One pass of a recipe: a picklable callable (image, content hash) -> augmented image, for DataLoader workers."""

    recipe: ViewRecipe
    pass_index: int
    size: tuple[int, int]  # (height, width) of the backbone's input

    def generator(self, content_hash: str) -> torch.Generator:
        material = f"{self.recipe.seed}:{content_hash}:{self.pass_index}".encode()
        return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(material).digest()[:8], "little"))

    def crop_box(self, width: int, height: int, generator: torch.Generator) -> tuple[int, int, int, int]:
        """(left, top, right, bottom): torchvision's RandomResizedCrop.get_params with this generator."""
        area = width * height
        low, high = self.recipe.crop_scale
        log_ratio = (math.log(RATIO_RANGE[0]), math.log(RATIO_RANGE[1]))
        for _ in range(10):
            target_area = area * float(torch.empty(1).uniform_(low, high, generator=generator))
            aspect = math.exp(float(torch.empty(1).uniform_(*log_ratio, generator=generator)))
            crop_width = int(round(math.sqrt(target_area * aspect)))
            crop_height = int(round(math.sqrt(target_area / aspect)))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                top = int(torch.randint(0, height - crop_height + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - crop_width + 1, (1,), generator=generator))
                return left, top, left + crop_width, top + crop_height
        # fallback: the centre crop at the nearest allowed aspect ratio
        in_ratio = width / height
        if in_ratio < RATIO_RANGE[0]:
            crop_width, crop_height = width, int(round(width / RATIO_RANGE[0]))
        elif in_ratio > RATIO_RANGE[1]:
            crop_width, crop_height = int(round(height * RATIO_RANGE[1])), height
        else:
            crop_width, crop_height = width, height
        top, left = (height - crop_height) // 2, (width - crop_width) // 2
        return left, top, left + crop_width, top + crop_height

    def __call__(self, image: Image.Image, content_hash: str) -> Image.Image:
        generator = self.generator(content_hash)
        box = self.crop_box(image.width, image.height, generator)
        height, width = self.size
        view = image.resize((width, height), resample=Image.Resampling.BICUBIC, box=box)
        if self.recipe.flip and float(torch.rand(1, generator=generator)) < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return view


def backbone_input_size(backbone) -> tuple[int, int]:
    """(height, width) the backbone's image tower takes (open_clip: model.visual.image_size)."""
    size = getattr(getattr(backbone.model, "visual", None), "image_size", None)
    if size is None:
        raise ValueError(f"backbone {backbone.spec.name!r}: its image tower declares no image_size, so augmented "
                         "views cannot be cropped to its input size")
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
