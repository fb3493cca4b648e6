"""Diffusion augmentation of few-shot images (as DiffTPT does at test time, here for training data).

Each source image gets N img2img variations (partially noised, then denoised by the diffusion model); a variation
is kept only when the CLIP image-feature cosine similarity to its source reaches a threshold, so variations that
drifted away from the class are dropped. Every kept image carries its provenance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from PIL import Image

from models.prompting.features import encode_images

AUGMENTATION_COLUMNS = {
    "relative_path": pl.String,
    "source_relative_path": pl.String,
    "label": pl.Int64,
    "variation": pl.Int64,
    "seed": pl.Int64,
    "strength": pl.Float64,
    "similarity": pl.Float64,
    "kept": pl.Boolean,
}


@dataclass(frozen=True)
class AugmentationSettings:
    variations_per_image: int
    strength: float
    similarity_threshold: float
    num_inference_steps: int
    seed: int


def empty_augmentation_table() -> pl.DataFrame:
    return pl.DataFrame(schema=AUGMENTATION_COLUMNS)


def _to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2)


def _to_image(pixels: torch.Tensor) -> Image.Image:
    array = (pixels.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array)


def augment_with_diffusion(
    generate_variations: Callable[..., torch.Tensor],
    diffusion_model,
    clip_model: torch.nn.Module,
    preprocess: Callable[[Image.Image], torch.Tensor],
    images: Sequence[Image.Image],
    relative_paths: Sequence[str],
    labels: Sequence[int],
    settings: AugmentationSettings,
    output_dir: Path,
    device: str | torch.device = "cpu",
) -> pl.DataFrame:
    """Generate, filter and save variations; returns one provenance row per generated variation (kept or not)."""
    if not (0.0 <= settings.strength <= 1.0):
        raise ValueError(f"strength must be in [0, 1], got {settings.strength}")
    sizes = {image.size for image in images}
    if len(sizes) != 1:
        raise ValueError(f"diffusion augmentation needs images of one size, got {sorted(sizes)}")
    sources = _to_tensor(images)
    variations = generate_variations(
        diffusion_model,
        sources,
        strength=settings.strength,
        num_variations=settings.variations_per_image,
        seed=settings.seed,
        num_inference_steps=settings.num_inference_steps,
    )  # (B, V, 3, H, W)
    n_sources, n_variations = variations.shape[:2]
    variation_images = [_to_image(variations[i, v]) for i in range(n_sources) for v in range(n_variations)]
    source_features = F.normalize(encode_images(clip_model, preprocess, list(images), device=device), dim=-1)
    variation_features = F.normalize(encode_images(clip_model, preprocess, variation_images, device=device), dim=-1)
    similarity = (
        variation_features.view(n_sources, n_variations, -1) * source_features.unsqueeze(1)
    ).sum(dim=-1)
    rows = []
    image_dir = output_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n_sources):
        for v in range(n_variations):
            kept = bool(similarity[i, v] >= settings.similarity_threshold)
            stem = Path(relative_paths[i]).with_suffix("").as_posix().replace("/", "__")
            relative_path = f"{stem}__var{v}.png"
            if kept:
                variation_images[i * n_variations + v].save(image_dir / relative_path, format="PNG")
            rows.append(
                {
                    "relative_path": relative_path,
                    "source_relative_path": relative_paths[i],
                    "label": int(labels[i]),
                    "variation": v,
                    "seed": settings.seed,
                    "strength": settings.strength,
                    "similarity": float(similarity[i, v]),
                    "kept": kept,
                }
            )
    return pl.DataFrame(rows, schema=AUGMENTATION_COLUMNS)
