"""The views test-time tuning scores: the original image and its random augmentations (TPT, Shu et al. 2022).

As the authors' code builds them (azshue/TPT data/datautils.py, AugMixAugmenter; ../shared/METHODS-2.md section 1):

- v0, the original: the backbone's eval transform (resize + centre crop), the view the final prediction is made on.
- v1 .. v{n-1}, from the raw image: a random resized crop (scale 0.08-1, ratio 3/4-4/3, bilinear) and a horizontal
  flip with probability 1/2 (both settings of ViewRecipe: crop_scale_min, horizontal_flip), then
  - `random_resized_crop`: nothing more (the authors' choice for ImageNet and its shifted variants), or
  - `augmix`: AugMix on top (the authors' choice for the fine-grained datasets): 3 chains of 1-3 operations drawn
    from {autocontrast, equalize, posterize, rotate, solarize, shear_x, shear_y, translate_x, translate_y} at
    severity 1, chain weights w ~ Dirichlet(1, 1, 1), mix m ~ Beta(1, 1), view = m * x + (1 - m) * sum_i w_i chain_i(x)
    on normalised tensors.

Unlike the authors' code (global NumPy/torch RNG, one stream over the shuffled test set), every draw comes from a
generator seeded by the run seed and the image's content hash (`view_generator`), so an image's views are the same
on a rerun, in any order, and whichever other images are evaluated with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageOps

from models.augmentation.generation import per_image_seed
from models.catalog.testtime_settings import CROP_SCALE, ViewRecipe

CROP_RATIO = (3 / 4, 4 / 3)
AUGMIX_CHAINS = 3
AUGMIX_SEVERITY = 1


def view_generator(seed: int, content_sha256: str) -> np.random.Generator:
    return np.random.default_rng(per_image_seed(seed, content_sha256))


def random_resized_crop(image: Image.Image, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = CROP_SCALE) -> Image.Image:
    """torchvision's RandomResizedCrop.get_params (10 tries, then a centre crop of the clamped ratio), from rng."""
    width, height = image.size
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    box = None
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            box = (left, top, left + crop_w, top + crop_h)
            break
    if box is None:
        in_ratio = width / height
        if in_ratio < CROP_RATIO[0]:
            crop_w, crop_h = width, int(round(width / CROP_RATIO[0]))
        elif in_ratio > CROP_RATIO[1]:
            crop_h, crop_w = height, int(round(height * CROP_RATIO[1]))
        else:
            crop_w, crop_h = width, height
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        box = (left, top, left + crop_w, top + crop_h)
    return image.crop(box).resize((size, size), Image.Resampling.BILINEAR)


# AugMix's operations (Hendrycks et al.; the list TPT uses: no colour, contrast, brightness or sharpness).
def _level(rng: np.random.Generator, severity: int) -> float:
    return float(rng.uniform(0.1, severity))


def _signed(rng: np.random.Generator, value: float) -> float:
    return -value if rng.uniform() > 0.5 else value


def _autocontrast(image, rng, severity):
    return ImageOps.autocontrast(image)


def _equalize(image, rng, severity):
    return ImageOps.equalize(image)


def _posterize(image, rng, severity):
    return ImageOps.posterize(image, 4 - int(_level(rng, severity) * 4 / 10))


def _rotate(image, rng, severity):
    degrees = _signed(rng, int(_level(rng, severity) * 30 / 10))
    return image.rotate(degrees, resample=Image.Resampling.BILINEAR)


def _solarize(image, rng, severity):
    return ImageOps.solarize(image, 256 - int(_level(rng, severity) * 256 / 10))


def _affine(coefficients):
    def operation(image, rng, severity):
        level = coefficients(image, rng, severity)
        return image.transform(image.size, Image.Transform.AFFINE, level, resample=Image.Resampling.BILINEAR)
    return operation


_shear_x = _affine(lambda im, rng, s: (1, _signed(rng, _level(rng, s) * 0.3 / 10), 0, 0, 1, 0))
_shear_y = _affine(lambda im, rng, s: (1, 0, 0, _signed(rng, _level(rng, s) * 0.3 / 10), 1, 0))
_translate_x = _affine(lambda im, rng, s: (1, 0, _signed(rng, int(_level(rng, s) * (im.size[0] / 3) / 10)), 0, 1, 0))
_translate_y = _affine(lambda im, rng, s: (1, 0, 0, 0, 1, _signed(rng, int(_level(rng, s) * (im.size[1] / 3) / 10))))

AUGMIX_OPERATIONS = (_autocontrast, _equalize, _posterize, _rotate, _solarize, _shear_x, _shear_y, _translate_x,
                     _translate_y)


def augmix(crop: Image.Image, preprocess: Callable[[Image.Image], torch.Tensor],
           rng: np.random.Generator) -> torch.Tensor:
    weights = rng.dirichlet([1.0] * AUGMIX_CHAINS).astype(np.float32)
    mix_weight = np.float32(rng.beta(1.0, 1.0))
    original = preprocess(crop)
    mixed = torch.zeros_like(original)
    for chain in range(AUGMIX_CHAINS):
        augmented = crop.copy()
        for _ in range(int(rng.integers(1, 4))):
            operation = AUGMIX_OPERATIONS[int(rng.integers(len(AUGMIX_OPERATIONS)))]
            augmented = operation(augmented, rng, AUGMIX_SEVERITY)
        mixed += float(weights[chain]) * preprocess(augmented)
    return float(mix_weight) * original + (1 - float(mix_weight)) * mixed


def conventional_views(image: Image.Image, preprocess: Callable[[Image.Image], torch.Tensor], image_size: int,
                       recipe: ViewRecipe, rng: np.random.Generator) -> torch.Tensor:
    """(n_views, 3, S, S): v0 = preprocess(image), then n_views - 1 augmented views drawn from rng."""
    image = image.convert("RGB")
    views = [preprocess(image)]
    for _ in range(recipe.n_views - 1):
        crop = random_resized_crop(image, image_size, rng, (recipe.crop_scale_min, CROP_SCALE[1]))
        if recipe.horizontal_flip and rng.uniform() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        views.append(augmix(crop, preprocess, rng) if recipe.augmentation == "augmix" else preprocess(crop))
    return torch.stack(views)


def generated_views(images: list[Image.Image], preprocess: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """Diffusion-generated images as views: the eval transform only (resize + centre crop), as DiffTPT feeds them."""
    if not images:
        raise ValueError("no generated images to turn into views")
    return torch.stack([preprocess(image.convert("RGB")) for image in images])


def input_size(preprocess) -> int:
    """The square size the backbone's eval transform produces (its CenterCrop), from a probe image."""
    probe = preprocess(Image.new("RGB", (8, 8)))
    return int(probe.shape[-1])
