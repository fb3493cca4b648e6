"""One generation interface for every diffusion model the workbench drives.

A `VariationGenerator` turns source images into variations. Three kinds implement it:

    embedded_img2img     the embedded DDPM (models/backbones/tiny_diffusion.py): partial noising + DDIM denoising
    sd_image_variation   diffusers StableDiffusionImageVariationPipeline (CLIP-image-conditioned; DiffTPT's choice)
    sd_img2img           diffusers StableDiffusionImg2ImgPipeline (text-conditioned img2img)

Seeding is per source image: `generate(images, seeds, num_variations)` takes one seed per image (callers derive it
from the run seed and the image's content hash with `per_image_seed`), so an image's variations never depend on
which other images were generated with it, and a cache can key them by (generator, seed, source image).

The implementations and `load_variation_generator` (catalog entry -> generator) live in generators.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from PIL import Image

GENERATOR_KINDS = ("embedded_img2img", "sd_image_variation", "sd_img2img")
# Where a diffusion backbone's weights come from: the workspace's pretrained embedded DDPM, the Hugging Face hub
# cache (offline), or a folder written by `save_pretrained`.
DIFFUSION_SOURCES = ("embedded", "hub", "local_dir")
DIFFUSION_DTYPES = ("float32", "float16", "bfloat16")
# The generation settings each kind takes, with their defaults (a catalog entry may set only these). None: decided
# by the model (the embedded DDPM's output size is its sample_size). The Stable Diffusion defaults are diffusers'
# own, except the image-variation guidance of 3, which DiffTPT and the model card use.
GENERATOR_SETTINGS: dict[str, dict[str, Any]] = {
    "embedded_img2img": {"num_inference_steps": 20, "strength": 0.4, "output_size": None},
    "sd_image_variation": {"num_inference_steps": 50, "guidance_scale": 3.0, "output_size": 512},
    "sd_img2img": {"num_inference_steps": 50, "strength": 0.8, "guidance_scale": 7.5, "output_size": 512,
                   "prompt": ""},
}
# Stable Diffusion's VAE halves the resolution three times: images are generated at multiples of 8 pixels.
SD_SIZE_MULTIPLE = 8


@dataclass(frozen=True)
class GenerationProvenance:
    """What a generated image depends on, besides its source image and seed (stored with every image)."""

    generator: str  # the catalog name of the diffusion backbone
    kind: str  # one of GENERATOR_KINDS
    model_id: str  # hub id (with revision) or local folder
    weights_sha256: str  # hash of the denoiser's weights file(s)
    num_inference_steps: int
    strength: float | None  # img2img kinds: how far the source is noised (0 = unchanged, 1 = pure noise)
    guidance_scale: float | None  # Stable Diffusion kinds: classifier-free guidance
    output_size: int  # pixels (square) of the returned images
    dtype: str = "float32"
    prompt: str | None = None  # sd_img2img: the text prompt
    scheduler: str | None = None  # the denoising scheduler's class (it changes the samples, the weights do not)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class VariationGenerator(Protocol):
    provenance: GenerationProvenance

    def generate(self, images: Sequence[Image.Image], seeds: Sequence[int],
                 num_variations: int) -> list[list[Image.Image]]:
        """num_variations RGB images per source image (same order), each source with its own seed."""
        ...


def per_image_seed(seed: int, content_sha256: str) -> int:
    """A 63-bit seed for one source image: a function of the run seed and the image's content only."""
    digest = hashlib.sha256(f"{int(seed)}:{content_sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def check_variation_counts(made: Sequence[Sequence[Image.Image]], n_images: int, num_variations: int,
                           generator: str = "the generator") -> None:
    """A generator must return num_variations images for each of n_images sources; anything else is an error."""
    counts = [len(variations) for variations in made]
    if len(made) != n_images or any(count != num_variations for count in counts):
        raise ValueError(f"{generator} returned {counts} variations for {n_images} source images; expected "
                         f"{num_variations} for each")
