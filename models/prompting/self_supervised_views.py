"""Augmented views of preprocessed image tensors for self-supervised terms in a training loss (GOPro): MoCo v3's view
and AugMix, each drawn per image from its own seed.

The training loop hands a method preprocessed images (the backbone's eval transform: resized, centre-cropped and
normalised with the backbone's mean and std), not raw images, so a view starts from that tensor: it is mapped back to
8-bit pixels (x * std + mean, clamped to [0, 1], rounded to 1/255: the images were 8-bit before preprocessing), the
augmentation runs on the pixels, and the view is normalised again with the same mean and std, at the input size.

- MoCo v3 (Chen et al. 2021, facebookresearch/moco-v3 main_moco.py, its first view): RandomResizedCrop (area 8-100 %),
  ColorJitter(0.4, 0.4, 0.2, 0.1) with probability 0.8, grayscale with probability 0.2, Gaussian blur (sigma 0.1-2
  pixels) always, horizontal flip with probability 1/2: torchvision.transforms.v2 on the uint8 tensor. MoCo v3 blurs
  with PIL's radius (no kernel size); here torchvision's kernel of 13 pixels holds 3 sigma of the largest sigma.
- AugMix, as TPT and GOPro's code build it (models/testtime/views.py, whose operations this reuses): a random
  resized crop (8-100 %) and flip, then 3 chains of 1-3 operations from {autocontrast, equalize, posterize, rotate,
  solarize, shear, translate} at the authors' severity 1, mixed as m * x + (1 - m) * sum_i w_i chain_i(x).
  torchvision.transforms.v2.AugMix would serve on uint8 tensors too, but its severity counts bins of an 11-step
  scale whose first bin is magnitude 0: its severity 1 leaves every geometric operation the identity, and no setting
  reproduces the authors' continuous levels (a fraction of 0.01-0.1 of each operation's range).

Randomness: each image's view comes from a generator seeded by (seed, view kind, position in the batch), torch's for
MoCo v3 (torchvision draws from torch's global generator, so it runs under a forked and seeded one) and NumPy's for
AugMix; the same seed gives the same views, on any device (the augmentations run on the CPU), and a view depends on
no other image of the batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

MOCO_CROP_SCALE = (0.08, 1.0)
MOCO_BLUR_SIGMA = (0.1, 2.0)
MOCO_BLUR_KERNEL = 13  # odd, 2 * ceil(3 * 2.0) + 1: three standard deviations of the largest sigma on each side
AUGMIX_CROP_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop default, as GOPro's (and TPT's) pre-augmentation


def view_seed(seed: int, kind: str, index: int) -> int:
    """A 63-bit seed for the view of kind `kind` of image `index` of a batch drawn with `seed`."""
    digest = hashlib.sha256(f"{int(seed)}:{kind}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def to_pixels(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 pixels (B, 3, H, W) on the CPU of normalised images (B, 3, H, W)."""
    mean_, std_ = _channel_statistics(mean, std)
    pixels = images.detach().float().cpu() * std_ + mean_
    return pixels.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def normalise(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised float images of uint8 pixels (..., 3, H, W)."""
    mean_, std_ = _channel_statistics(mean, std)
    return (pixels.float() / 255.0 - mean_) / std_


def _channel_statistics(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(list(mean)).view(3, 1, 1), torch.tensor(list(std)).view(3, 1, 1)


def moco_v3_transform(size: tuple[int, int]) -> v2.Compose:
    kernel = min(MOCO_BLUR_KERNEL, 2 * min(size) - 1)  # reflection padding must stay inside the image
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=MOCO_CROP_SCALE, antialias=True),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.GaussianBlur(kernel, sigma=MOCO_BLUR_SIGMA),
        v2.RandomHorizontalFlip(),
    ])


def moco_v3_view(pixels: torch.Tensor, seed: int) -> torch.Tensor:
    """MoCo v3's view (uint8, 3 x H x W) of one image's uint8 pixels, drawn from `seed`."""
    transform = moco_v3_transform((int(pixels.shape[-2]), int(pixels.shape[-1])))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(pixels)


def augmix_view(pixels: torch.Tensor, seed: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The AugMix view (normalised float, 3 x H x W) of one image's uint8 pixels, drawn from `seed`."""
    from models.testtime.views import augmix, random_resized_crop  # lazily: models.testtime imports the catalog

    rng = np.random.default_rng(seed)
    height, width = int(pixels.shape[-2]), int(pixels.shape[-1])
    image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    crop = random_resized_crop(image, height, rng, AUGMIX_CROP_SCALE)
    if (height, width) != crop.size[::-1]:
        crop = crop.resize((width, height), Image.Resampling.BILINEAR)
    if rng.uniform() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)

    def preprocess(view: Image.Image) -> torch.Tensor:
        return normalise(torch.from_numpy(np.asarray(view, dtype=np.uint8).copy()).permute(2, 0, 1), mean, std)

    return augmix(crop, preprocess, rng)


def self_supervised_views(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                          seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(MoCo v3 views, AugMix views) of normalised images (B, 3, H, W), one of each per image, normalised like them,
    on their device and in their dtype."""
    pixels = to_pixels(images, mean, std)
    moco = torch.stack([normalise(moco_v3_view(image, view_seed(seed, "moco_v3", index)), mean, std)
                        for index, image in enumerate(pixels)])
    mixed = torch.stack([augmix_view(image, view_seed(seed, "augmix", index), mean, std)
                         for index, image in enumerate(pixels)])
    return moco.to(images.device, images.dtype), mixed.to(images.device, images.dtype)
