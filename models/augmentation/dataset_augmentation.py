"""Diffusion augmentation of few-shot images (as DiffTPT does at test time, here for training data).

Each source image gets N variations from a VariationGenerator (generation.py), seeded per image from the run seed
and the image's content hash; a variation is kept only when the CLIP image-feature cosine to its source reaches a
threshold (filtering.py), so variations that drifted away from the class are dropped. Kept images are saved at
their source's size, and every generated variation (kept or not) is one provenance row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import polars as pl
import torch
from PIL import Image

from models.augmentation.filtering import cosine_to_source, keep_above
from models.augmentation.generation import VariationGenerator, check_variation_counts, per_image_seed
from models.prompting.features import encode_images

AUGMENTATION_COLUMNS = {
    "relative_path": pl.String,
    "source_relative_path": pl.String,
    "label": pl.Int64,
    "variation": pl.Int64,
    "seed": pl.Int64,  # the source image's own seed (per_image_seed of the run seed and its content hash)
    "strength": pl.Float64,  # null for kinds without one (sd_image_variation)
    "similarity": pl.Float64,
    "kept": pl.Boolean,
    "generator": pl.String,  # the diffusion backbone's catalog name
    "kind": pl.String,
    "model_id": pl.String,
    "weights_sha256": pl.String,
    "guidance_scale": pl.Float64,  # null for the embedded DDPM
    "num_inference_steps": pl.Int64,
    "output_size": pl.Int64,  # what the generator made; kept images are resized back to their source's size
}


@dataclass(frozen=True)
class AugmentationSettings:
    variations_per_image: int
    similarity_threshold: float
    seed: int  # the run seed; each source image's seed derives from it and the image's content


def empty_augmentation_table() -> pl.DataFrame:
    return pl.DataFrame(schema=AUGMENTATION_COLUMNS)


def generation_overrides(kind: str, options: Any) -> dict[str, Any]:
    """The generator settings an experiment's `augmentation:` options replace: strength and num_inference_steps for
    the embedded DDPM (as before generators existed, so configurations and their hashes keep their meaning). The
    Stable Diffusion kinds keep their catalog entry's settings (DiffTPT's 50 steps, not the DDPM's 20)."""
    if kind != "embedded_img2img":
        return {}
    return {"strength": options.strength, "num_inference_steps": options.num_inference_steps}


def augment_with_diffusion(
    generator: VariationGenerator,
    clip_model: torch.nn.Module,
    preprocess: Callable[[Image.Image], torch.Tensor],
    images: Sequence[Image.Image],
    relative_paths: Sequence[str],
    labels: Sequence[int],
    content_hashes: Sequence[str],
    settings: AugmentationSettings,
    output_dir: Path,
    device: str | torch.device = "cpu",
) -> pl.DataFrame:
    """Generate, filter and save variations (PNG under output_dir/images); returns one provenance row per generated
    variation, kept or not."""
    if not (len(images) == len(relative_paths) == len(labels) == len(content_hashes)):
        raise ValueError(f"{len(images)} images, {len(relative_paths)} paths, {len(labels)} labels and "
                         f"{len(content_hashes)} content hashes; give one of each per image")
    if settings.variations_per_image < 1:
        raise ValueError(f"variations_per_image must be at least 1, got {settings.variations_per_image}")
    unhashed = [path for path, digest in zip(relative_paths, content_hashes) if not digest]
    if unhashed:
        raise ValueError(f"images without a content hash (it seeds their variations): {unhashed[:5]}")
    image_dir = Path(output_dir) / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    if not images:
        return empty_augmentation_table()
    count = settings.variations_per_image
    seeds = [per_image_seed(settings.seed, digest) for digest in content_hashes]
    generated = generator.generate(list(images), seeds, count)
    check_variation_counts(generated, len(images), count, f"generator {generator.provenance.generator!r}")
    variations = [[_at_size(variation, source.size) for variation in per_source]
                  for source, per_source in zip(images, generated)]
    source_features = encode_images(clip_model, preprocess, list(images), device=device)
    variation_features = encode_images(clip_model, preprocess, [v for per in variations for v in per], device=device)
    similarity = cosine_to_source(source_features, variation_features.view(len(images), count, -1))
    kept = keep_above(similarity, settings.similarity_threshold)
    provenance = generator.provenance
    rows = []
    for i, (source_path, label, seed) in enumerate(zip(relative_paths, labels, seeds)):
        stem = Path(source_path).with_suffix("").as_posix().replace("/", "__")
        for v in range(count):
            relative_path = f"{stem}__var{v}.png"
            if kept[i, v]:
                variations[i][v].save(image_dir / relative_path, format="PNG")
            rows.append({
                "relative_path": relative_path,
                "source_relative_path": source_path,
                "label": int(label),
                "variation": v,
                "seed": seed,
                "strength": provenance.strength,
                "similarity": float(similarity[i, v]),
                "kept": bool(kept[i, v]),
                "generator": provenance.generator,
                "kind": provenance.kind,
                "model_id": provenance.model_id,
                "weights_sha256": provenance.weights_sha256,
                "guidance_scale": provenance.guidance_scale,
                "num_inference_steps": provenance.num_inference_steps,
                "output_size": provenance.output_size,
            })
    return pl.DataFrame(rows, schema=AUGMENTATION_COLUMNS)


def _at_size(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    image = image.convert("RGB")
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)
