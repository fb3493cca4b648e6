"""The three VariationGenerators (generation.py), and `load_variation_generator`, which builds one from a catalog entry.

    EmbeddedImg2ImgGenerator                 the embedded DDPM: partial noising + DDIM (eta 0) in pixel space
    StableDiffusionImageVariationGenerator   diffusers StableDiffusionImageVariationPipeline (CLIP-image-conditioned)
    StableDiffusionImg2ImgGenerator          diffusers StableDiffusionImg2ImgPipeline (text prompt + strength)

Every source image draws all its randomness from a torch.Generator seeded with its own seed, and is denoised in
batches whose shape does not depend on the other sources, so its variations are the same bytes whether it is
generated alone or with others. Loading never touches the network: hub entries are read from the Hugging Face cache
(`local_files_only`), and a missing model fails at once with the folder searched and how to fill it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from models.augmentation.generation import (DIFFUSION_DTYPES, SD_SIZE_MULTIPLE, GenerationProvenance,
                                            VariationGenerator, check_variation_counts)
from models.provenance import sha256_file

if TYPE_CHECKING:
    from models.backbones.tiny_diffusion import DiffusionModel
    from models.catalog import DiffusionBackboneEntry

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
UNET_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
UNET_SHARD_INDEXES = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")
_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")


class DiffusionBackboneUnavailableError(FileNotFoundError):
    """The weights a diffusion backbone names are not on this machine (never downloaded, or a file is missing)."""


def _check_request(images: Sequence[Image.Image], seeds: Sequence[int], num_variations: int) -> None:
    if len(images) != len(seeds):
        raise ValueError(f"{len(images)} source images but {len(seeds)} seeds; give one seed per image")
    if not isinstance(num_variations, int) or num_variations < 1:
        raise ValueError(f"num_variations must be an integer >= 1, got {num_variations!r}")


class EmbeddedImg2ImgGenerator:
    """img2img with the embedded DDPM (as tiny_diffusion.generate_variations): each source is noised to the timestep
    `strength` selects, then denoised with DDIM (eta 0); strength 0 returns copies of the sources.

    Sources must be the model's sample_size. The UNet runs on batches of exactly `batch_size` rows (variations of
    several sources, the last batch padded), because a convolution's rounding depends on the batch shape."""

    kind = "embedded_img2img"

    def __init__(self, model: "DiffusionModel", name: str = "embedded-ddpm", strength: float = 0.4,
                 num_inference_steps: int = 20, dtype: str = "float32", batch_size: int = 64):
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"diffusion backbone {name!r}: strength must be in [0, 1], got {strength}")
        if num_inference_steps < 1 or batch_size < 1:
            raise ValueError(f"diffusion backbone {name!r}: num_inference_steps and batch_size must be at least 1")
        self.model = model
        self.strength = float(strength)
        self.num_inference_steps = int(num_inference_steps)
        self.batch_size = int(batch_size)
        self.dtype = TORCH_DTYPES[dtype]
        if model.unet.dtype != self.dtype:
            model.unet.to(self.dtype)
        self.provenance = GenerationProvenance(
            generator=name, kind=self.kind, model_id=f"embedded:{model.directory.name}",
            weights_sha256=model.weights_sha256, num_inference_steps=self.num_inference_steps,
            strength=self.strength, guidance_scale=None, output_size=model.sample_size, dtype=dtype,
            scheduler=type(model.scheduler).__name__)

    @property
    def output_size(self) -> int:
        return self.model.sample_size

    @torch.no_grad()
    def generate(self, images: Sequence[Image.Image], seeds: Sequence[int],
                 num_variations: int) -> list[list[Image.Image]]:
        _check_request(images, seeds, num_variations)
        size = self.model.sample_size
        for index, image in enumerate(images):
            if image.size != (size, size):
                raise ValueError(
                    f"source image {index} is {image.size[0]}x{image.size[1]} pixels, but the embedded diffusion "
                    f"model ({self.model.directory}) generates {size}x{size} images (its sample_size); resize the "
                    "sources, or use a diffusion backbone that takes this size")
        if not images:
            return []
        steps = self.num_inference_steps
        denoise_steps = min(int(round(steps * self.strength)), steps)
        if denoise_steps == 0:
            return [[image.convert("RGB") for _ in range(num_variations)] for image in images]
        sources = torch.stack([_to_tensor(image) for image in images]) * 2 - 1  # diffusers' [-1, 1]
        rows = sources.repeat_interleave(num_variations, dim=0)
        noise = torch.cat([torch.randn((num_variations, *sources.shape[1:]),
                                       generator=torch.Generator().manual_seed(int(seed))) for seed in seeds])
        scheduler = self.model.scheduler
        scheduler.set_timesteps(steps)
        timesteps = scheduler.timesteps[steps - denoise_steps:]
        outputs = []
        for start in range(0, len(rows), self.batch_size):
            clean, chunk_noise = rows[start:start + self.batch_size], noise[start:start + self.batch_size]
            count = len(clean)
            if count < self.batch_size:  # pad to the fixed batch shape with copies of the last row
                padding = self.batch_size - count
                clean = torch.cat([clean, clean[-1:].expand(padding, *clean.shape[1:])])
                chunk_noise = torch.cat([chunk_noise, chunk_noise[-1:].expand(padding, *chunk_noise.shape[1:])])
            sample = scheduler.add_noise(clean, chunk_noise, timesteps[:1].repeat(len(clean)))
            sample = sample.to(self.model.device, self.dtype)
            for timestep in timesteps:
                predicted_noise = self.model.unet(sample, timestep).sample
                sample = scheduler.step(predicted_noise, timestep, sample, eta=0.0).prev_sample
            outputs.append(sample[:count].float().cpu())
        pixels = (torch.cat(outputs) + 1) / 2
        made = [_to_image(row) for row in pixels]
        return [made[i * num_variations:(i + 1) * num_variations] for i in range(len(images))]


class _StableDiffusionGenerator:
    """What both Stable Diffusion kinds share: one pipeline call per source image (its num_variations images in one
    batch, from a generator seeded with the image's seed), RGB outputs of output_size pixels."""

    kind = ""

    def __init__(self, pipeline, name: str, model_id: str, weights_sha256: str, num_inference_steps: int,
                 guidance_scale: float, output_size: int, dtype: str = "float32", strength: float | None = None,
                 prompt: str | None = None):
        factor = math.lcm(SD_SIZE_MULTIPLE, int(pipeline.vae_scale_factor))
        if not isinstance(output_size, int) or output_size < factor or output_size % factor:
            raise ValueError(f"diffusion backbone {name!r}: output_size {output_size!r} must be a multiple of "
                             f"{factor} (the pipeline's VAE scale factor {pipeline.vae_scale_factor}; the "
                             "Stable Diffusion pipelines also require multiples of 8)")
        if num_inference_steps < 1:
            raise ValueError(f"diffusion backbone {name!r}: num_inference_steps must be at least 1")
        pipeline.set_progress_bar_config(disable=True)
        # The VAE encodes and decodes one image at a time: DiffTPT's 63 views at 512 px would not fit one batch.
        pipeline.vae.enable_slicing()
        self.pipeline = pipeline
        self.name = name
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.output_size = int(output_size)
        self.strength = strength
        self.prompt = prompt
        self.provenance = GenerationProvenance(
            generator=name, kind=self.kind, model_id=model_id, weights_sha256=weights_sha256,
            num_inference_steps=self.num_inference_steps, strength=strength, guidance_scale=self.guidance_scale,
            output_size=self.output_size, dtype=dtype, prompt=prompt, scheduler=type(pipeline.scheduler).__name__)

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    def generate(self, images: Sequence[Image.Image], seeds: Sequence[int],
                 num_variations: int) -> list[list[Image.Image]]:
        _check_request(images, seeds, num_variations)
        made = []
        for image, seed in zip(images, seeds):
            generator = torch.Generator(self.device).manual_seed(int(seed))
            variations = [output.convert("RGB") for output in
                          self._variations(image.convert("RGB"), generator, num_variations)]
            wrong = sorted({output.size for output in variations if output.size != (self.output_size,) * 2})
            if wrong:
                raise ValueError(f"diffusion backbone {self.name!r}: the pipeline returned images of {wrong} pixels, "
                                 f"not output_size {self.output_size}")
            made.append(variations)
        check_variation_counts(made, len(images), num_variations, f"diffusion backbone {self.name!r}")
        return made

    def _variations(self, source: Image.Image, generator: torch.Generator, count: int) -> list[Image.Image]:
        raise NotImplementedError


class StableDiffusionImageVariationGenerator(_StableDiffusionGenerator):
    """DiffTPT's generator: Stable Diffusion conditioned on the CLIP image embedding of the source (the pipeline's
    CLIPImageProcessor resizes and crops the source to the image encoder's input, so any source size works)."""

    kind = "sd_image_variation"

    def _variations(self, source: Image.Image, generator: torch.Generator, count: int) -> list[Image.Image]:
        return self.pipeline(image=source, height=self.output_size, width=self.output_size,
                             num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                             num_images_per_prompt=count, generator=generator, output_type="pil").images


class StableDiffusionImg2ImgGenerator(_StableDiffusionGenerator):
    """Text-conditioned img2img: the source (resized to output_size, since the pipeline keeps the input's size) is
    encoded, noised by `strength` and denoised towards the prompt."""

    kind = "sd_img2img"

    def __init__(self, pipeline, name: str, model_id: str, weights_sha256: str, num_inference_steps: int,
                 guidance_scale: float, output_size: int, dtype: str = "float32", strength: float = 0.8,
                 prompt: str = ""):
        if not 0.0 < strength <= 1.0 or int(num_inference_steps * strength) < 1:
            raise ValueError(f"diffusion backbone {name!r}: strength {strength} x num_inference_steps "
                             f"{num_inference_steps} must leave at least one denoising step (strength in (0, 1])")
        super().__init__(pipeline, name, model_id, weights_sha256, num_inference_steps, guidance_scale, output_size,
                         dtype, float(strength), str(prompt))

    def _variations(self, source: Image.Image, generator: torch.Generator, count: int) -> list[Image.Image]:
        if source.size != (self.output_size, self.output_size):
            source = source.resize((self.output_size, self.output_size), Image.Resampling.BICUBIC)
        # One prompt and one copy of the source per variation: each copy gets its own VAE sample and noise.
        return self.pipeline(prompt=[self.prompt] * count, image=[source] * count, strength=self.strength,
                             num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                             generator=generator, output_type="pil").images


STABLE_DIFFUSION_GENERATORS = {"sd_image_variation": StableDiffusionImageVariationGenerator,
                               "sd_img2img": StableDiffusionImg2ImgGenerator}


def load_variation_generator(entry: "DiffusionBackboneEntry", workspace_diffusion_dir: Path | str | None = None,
                             device: str | torch.device = "cpu", dtype: str | None = None) -> VariationGenerator:
    """The generator a catalog entry describes, on `device` in `dtype` (None: the entry's). Never downloads.

    workspace_diffusion_dir: the workspace's pretrained DDPM folder (Workspace.diffusion_dir), read by source
    'embedded'."""
    dtype = dtype or entry.dtype
    if dtype not in DIFFUSION_DTYPES:
        raise ValueError(f"diffusion backbone {entry.name!r}: dtype must be one of {DIFFUSION_DTYPES}, got {dtype!r}")
    device = torch.device(device)
    if dtype == "float16" and device.type == "cpu":
        raise ValueError(f"diffusion backbone {entry.name!r}: dtype float16 is meant for CUDA; on CPU many float16 "
                         "kernels are missing or slow. Use float32 (or bfloat16) on CPU, or run on a CUDA device")
    folder = _weights_folder(entry, workspace_diffusion_dir)
    if entry.kind == "embedded_img2img":
        from models.backbones.tiny_diffusion import load_diffusion

        model = load_diffusion(folder, device)
        if entry.output_size is not None and entry.output_size != model.sample_size:
            raise ValueError(f"diffusion backbone {entry.name!r}: output_size {entry.output_size} differs from the "
                             f"sample_size {model.sample_size} of the DDPM in {folder}; leave output_size unset")
        return EmbeddedImg2ImgGenerator(model, entry.name, entry.strength, entry.num_inference_steps, dtype)
    if entry.kind not in STABLE_DIFFUSION_GENERATORS:
        raise ValueError(f"diffusion backbone {entry.name!r}: unknown kind {entry.kind!r}")
    generator_class = STABLE_DIFFUSION_GENERATORS[entry.kind]
    pipeline = _load_pipeline(entry, folder, dtype).to(device)
    model_id = (f"{entry.model_id}@{entry.revision or 'main'}" if entry.source == "hub" else str(folder))
    settings = {"strength": entry.strength, "prompt": entry.prompt} if entry.kind == "sd_img2img" else {}
    return generator_class(pipeline, entry.name, model_id, unet_weights_sha256(folder / "unet"),
                           entry.num_inference_steps, entry.guidance_scale, entry.output_size, dtype, **settings)


def unet_weights_sha256(unet_folder: Path) -> str:
    """sha256 of the UNet's weight file (or, for sharded weights, of its shards' bytes in name order)."""
    for name in UNET_WEIGHT_FILES:
        if (unet_folder / name).is_file():
            return sha256_file(unet_folder / name)
    for name in UNET_SHARD_INDEXES:
        if (unet_folder / name).is_file():
            shards = sorted(set(json.loads((unet_folder / name).read_text())["weight_map"].values()))
            digest = hashlib.sha256()
            for shard in shards:
                digest.update(bytes.fromhex(sha256_file(unet_folder / shard)))
            return digest.hexdigest()
    raise DiffusionBackboneUnavailableError(f"no UNet weights ({', '.join(UNET_WEIGHT_FILES)}) in {unet_folder}")


def hub_cache_folder(model_id: str, cache_dir: str | None = None) -> Path:
    """Where the Hugging Face cache keeps a model repository (models--<org>--<name>)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    return Path(cache_dir or HF_HUB_CACHE) / f"models--{model_id.replace('/', '--')}"


def _weights_folder(entry: "DiffusionBackboneEntry", workspace_diffusion_dir: Path | str | None) -> Path:
    """The folder holding the entry's model on this machine, checked for the files its kind loads."""
    if entry.source == "embedded":
        if workspace_diffusion_dir is None:
            raise ValueError(f"diffusion backbone {entry.name!r} is the embedded DDPM: pass the workspace's "
                             "diffusion folder (Workspace.diffusion_dir)")
        folder = Path(workspace_diffusion_dir)
        missing = _missing_files(entry, folder)
        if missing:
            raise DiffusionBackboneUnavailableError(
                f"diffusion backbone {entry.name!r} is the embedded DDPM, which is not pretrained yet ({folder} "
                f"lacks {missing}): materialize the tiny_diffusion_model asset first (embedded_world_job, or "
                "`promptlab run`)")
        return folder
    if entry.source == "local_dir":
        folder = Path(entry.path)
        if not folder.is_dir():
            raise DiffusionBackboneUnavailableError(
                f"diffusion backbone {entry.name!r}: model folder not found: {folder} (source local_dir expects a "
                "folder written by save_pretrained)")
        missing = _missing_files(entry, folder)
        if missing:
            raise DiffusionBackboneUnavailableError(
                f"diffusion backbone {entry.name!r}: the model folder {folder} is incomplete; missing: {missing}")
        return folder
    repo = hub_cache_folder(entry.model_id, entry.cache_dir)
    revision = entry.revision or "main"
    commit = revision if _COMMIT_HASH.match(revision) else None
    if commit is None and (repo / "refs" / revision).is_file():
        commit = (repo / "refs" / revision).read_text().strip()
    snapshot = repo / "snapshots" / (commit or "<commit>")
    how = (f"This project never downloads. On a machine with internet, run `hf download {entry.model_id} --revision "
           f"{revision} --cache-dir <dir>` and copy <dir>/{repo.name} (refs/, snapshots/ and blobs/) to "
           f"{repo.parent} (or set cache_dir in the catalog entry, or $HF_HUB_CACHE, to where it lies); or save the "
           "pipeline with save_pretrained and point the entry at that folder (source: local_dir, path: ...).")
    if commit is None or not snapshot.is_dir():
        raise DiffusionBackboneUnavailableError(
            f"diffusion backbone {entry.name!r}: hub model {entry.model_id!r} at revision {revision!r} is not in the "
            f"Hugging Face cache {repo.parent} (looked for {repo / 'refs' / revision} and {snapshot}). {how}")
    missing = _missing_files(entry, snapshot)
    if missing:
        raise DiffusionBackboneUnavailableError(
            f"diffusion backbone {entry.name!r}: the cached snapshot of {entry.model_id!r} at revision {revision!r} "
            f"({snapshot}) is incomplete; missing: {missing}. {how}")
    return snapshot


def _missing_files(entry: "DiffusionBackboneEntry", folder: Path) -> list[str]:
    """The files (relative to folder) a kind needs that are absent; the components of model_index.json for SD."""
    if entry.kind == "embedded_img2img":
        from models.backbones.tiny_diffusion import SCHEDULER_FOLDER, UNET_FOLDER, UNET_WEIGHTS_FILENAME

        needed = [f"{UNET_FOLDER}/config.json", f"{UNET_FOLDER}/{UNET_WEIGHTS_FILENAME}",
                  f"{SCHEDULER_FOLDER}/scheduler_config.json"]
        return [name for name in needed if not (folder / name).is_file()]
    if not (folder / "model_index.json").is_file():
        return ["model_index.json"]
    missing = []
    index = json.loads((folder / "model_index.json").read_text())
    for component, value in index.items():
        skipped = component.startswith("_") or component == "safety_checker"
        if not skipped and isinstance(value, list) and value[0] is not None and not (folder / component).is_dir():
            missing.append(f"{component}/")
    unet_files = (*UNET_WEIGHT_FILES, *UNET_SHARD_INDEXES)
    if (folder / "unet").is_dir() and not any((folder / "unet" / name).is_file() for name in unet_files):
        missing.append(f"unet/{UNET_WEIGHT_FILES[0]}")
    return missing


def _load_pipeline(entry: "DiffusionBackboneEntry", folder: Path, dtype: str):
    from diffusers import StableDiffusionImageVariationPipeline, StableDiffusionImg2ImgPipeline

    pipeline_class = {"sd_image_variation": StableDiffusionImageVariationPipeline,
                      "sd_img2img": StableDiffusionImg2ImgPipeline}[entry.kind]
    # low_cpu_mem_usage=False: the default path needs the `accelerate` package. No safety checker: the outputs are
    # training and test-time views, never shown to anyone.
    options = dict(safety_checker=None, requires_safety_checker=False, local_files_only=True,
                   low_cpu_mem_usage=False, dtype=TORCH_DTYPES[dtype])
    try:
        if entry.source == "hub":
            return pipeline_class.from_pretrained(entry.model_id, revision=entry.revision, cache_dir=entry.cache_dir,
                                                  **options)
        return pipeline_class.from_pretrained(folder, **options)
    except OSError as error:
        raise DiffusionBackboneUnavailableError(f"diffusion backbone {entry.name!r}: cannot load "
                                                f"{pipeline_class.__name__} from {folder}: {error}") from error


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def _to_image(pixels: torch.Tensor) -> Image.Image:
    array = (pixels.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array)
