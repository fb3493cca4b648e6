"""The embedded diffusion model: a small diffusers UNet2DModel trained as a DDPM, used for img2img variations.

`pretrain_diffusion` writes a folder that diffusers loads like any local model (`DDPMPipeline.from_pretrained`):

    <folder>/model_index.json
    <folder>/unet/config.json
    <folder>/unet/diffusion_pytorch_model.safetensors
    <folder>/scheduler/scheduler_config.json
    <folder>/training_summary.json      config, per-epoch losses, seconds, date, threads, versions, weights hash

`install_shipped_diffusion` copies such a folder (the weights shipped in the catalog) into place after checking the
weights' SHA-256 and that the folder's UNet is the recipe's architecture (models/backbones/shipped_weights.py, shared
with tiny-clip), so the default graph need not spend minutes pretraining.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from models.atomic import atomic_directory
from models.backbones.shipped_weights import ShippedLayout, ShippedWeightsError, install_shipped_folder, read_json_field
from models.backbones.training_support import (
    ProgressReport, TrainingProgress, count_parameters, reproducible_torch, warmup_cosine_learning_rate)
from models.provenance import sha256_file

UNET_FOLDER = "unet"
SCHEDULER_FOLDER = "scheduler"
UNET_WEIGHTS_FILENAME = "diffusion_pytorch_model.safetensors"
SUMMARY_FILENAME = "training_summary.json"
UNET_CONFIG = f"{UNET_FOLDER}/config.json"
SCHEDULER_CONFIG = f"{SCHEDULER_FOLDER}/scheduler_config.json"
DIFFUSION_FOLDER = ShippedLayout(
    model="tiny diffusion model", catalog_field="diffusion_weights", weights=f"{UNET_FOLDER}/{UNET_WEIGHTS_FILENAME}",
    files=("model_index.json", UNET_CONFIG, f"{UNET_FOLDER}/{UNET_WEIGHTS_FILENAME}", SCHEDULER_CONFIG,
           SUMMARY_FILENAME))


@dataclass
class DiffusionPretrainConfig:
    sample_size: int = 32
    # Channels per resolution (32, 16, 8 px). (16, 32, 64) trains ~90 s per epoch of 20k images on 2 CPU cores;
    # (32, 64, 64) takes ~2.7x longer.
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    # No attention in the resolution blocks: on CPU it costs more than it gives at 32 px; the mid block keeps one.
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "DownBlock2D")
    up_block_types: tuple[str, ...] = ("UpBlock2D", "UpBlock2D", "UpBlock2D")
    norm_num_groups: int = 8  # must divide every entry of block_out_channels
    epochs: int = 2
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    seed: int = 0
    num_train_timesteps: int = 1000
    # Both cores of the target machine; use 1 where other jobs share the cores (two threads then stall badly).
    num_threads: int = 2
    attention_head_dim: int = 8  # the mid block's self-attention at the lowest resolution
    horizontal_flip: bool = False  # off by default: class identity may depend on orientation

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(self.block_out_channels)
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)
        levels = len(self.block_out_channels)
        if len(self.down_block_types) != levels or len(self.up_block_types) != levels:
            raise ValueError(
                f"DiffusionPretrainConfig: {levels} block_out_channels but {len(self.down_block_types)} "
                f"down_block_types and {len(self.up_block_types)} up_block_types")
        if any(channels % self.norm_num_groups for channels in self.block_out_channels):
            raise ValueError(
                f"DiffusionPretrainConfig: norm_num_groups {self.norm_num_groups} must divide every entry of "
                f"block_out_channels {self.block_out_channels}")


@dataclass
class PretrainedDiffusion:
    directory: Path
    epoch_losses: list[float]
    weights_sha256: str
    seconds: float


@dataclass
class DiffusionModel:
    unet: UNet2DModel  # eval mode, frozen
    scheduler: DDIMScheduler  # DDIM over the trained DDPM noise schedule: few steps, deterministic (eta 0)
    directory: Path
    weights_sha256: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def sample_size(self) -> int:
        return int(self.unet.config.sample_size)


def pretrain_diffusion(
    images: np.ndarray,
    output_dir: Path,
    config: DiffusionPretrainConfig,
    on_epoch: Callable[[int, float], None] | None = None,
    on_progress: Callable[[ProgressReport], None] | None = None,
) -> PretrainedDiffusion:
    """Train a UNet to predict the noise added to images (DDPM, MSE on epsilon) and save it as a diffusers folder.

    images: (N, sample_size, sample_size, 3) uint8. on_epoch(epoch, mean_loss) runs after every epoch, from 1;
    on_progress(ProgressReport) after every epoch and every 30 s within one (epoch i/N, elapsed, time left).
    """
    started = time.perf_counter()
    _check_images(images, config.sample_size)
    if config.epochs < 1 or config.batch_size < 1:
        raise ValueError(f"DiffusionPretrainConfig: epochs and batch_size must be at least 1, got {config}")

    with reproducible_torch(config.num_threads):
        threads_used = torch.get_num_threads()  # the recipe's count, capped by the cores: the bits depend on it
        torch.manual_seed(config.seed)
        unet = UNet2DModel(**unet_architecture(config))
        scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps)
        unet.train()
        optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate, weight_decay=0.0)
        generator = torch.Generator().manual_seed(config.seed)
        pixels_uint8 = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        num_images = len(pixels_uint8)
        batch_size = min(config.batch_size, num_images)
        steps_per_epoch = math.ceil(num_images / batch_size)
        total_steps = steps_per_epoch * config.epochs

        epoch_losses: list[float] = []
        step = 0
        progress = TrainingProgress(config.epochs, steps_per_epoch, on_progress)
        for epoch in range(1, config.epochs + 1):
            order = torch.randperm(num_images, generator=generator)
            batch_losses = []
            for batch_index in range(steps_per_epoch):
                indices = order[batch_index * batch_size:(batch_index + 1) * batch_size]
                clean = pixels_uint8[indices].float().div_(127.5).sub_(1.0)  # diffusers' [-1, 1] convention
                if config.horizontal_flip:
                    flip = torch.rand(len(indices), generator=generator) < 0.5
                    clean[flip] = clean[flip].flip(-1)
                noise = torch.randn(clean.shape, generator=generator)
                timesteps = torch.randint(0, config.num_train_timesteps, (len(indices),), generator=generator)
                noisy = scheduler.add_noise(clean, noise, timesteps)
                learning_rate = warmup_cosine_learning_rate(
                    config.learning_rate, config.warmup_steps, total_steps, step)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate
                loss = torch.nn.functional.mse_loss(unet(noisy, timesteps).sample, noise)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
                optimizer.step()
                batch_losses.append(loss.item())
                step += 1
                progress.after_step(epoch, batch_losses[-1])
            epoch_losses.append(float(np.mean(batch_losses)))
            progress.after_epoch(epoch, epoch_losses[-1])
            if on_epoch is not None:
                on_epoch(epoch, epoch_losses[-1])

    unet.eval()
    with atomic_directory(output_dir) as staging:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(staging)
        weights_sha256 = sha256_file(staging / UNET_FOLDER / UNET_WEIGHTS_FILENAME)
        seconds = time.perf_counter() - started
        summary = {
            "config": asdict(config),
            "epoch_losses": epoch_losses,
            "seconds": seconds,
            # how the bits were made, for whoever retrains and compares: float sums depend on all three
            "date": datetime.now(timezone.utc).date().isoformat(),
            "torch_threads": threads_used,
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
            "num_images": num_images,
            "num_parameters": count_parameters(unet),
            "weights_sha256": weights_sha256,
        }
        (staging / SUMMARY_FILENAME).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return PretrainedDiffusion(Path(output_dir), epoch_losses, weights_sha256, seconds)


def unet_architecture(config: DiffusionPretrainConfig) -> dict:
    """The UNet2DModel arguments a recipe builds (and that its saved unet/config.json repeats)."""
    return {"sample_size": config.sample_size, "in_channels": 3, "out_channels": 3,
            "block_out_channels": config.block_out_channels, "layers_per_block": config.layers_per_block,
            "down_block_types": config.down_block_types, "up_block_types": config.up_block_types,
            "norm_num_groups": config.norm_num_groups, "attention_head_dim": config.attention_head_dim}


def install_shipped_diffusion(source_dir: Path, expected_sha256: str, output_dir: Path,
                              config: DiffusionPretrainConfig) -> PretrainedDiffusion:
    """Copy a shipped diffusion folder to `output_dir` (atomically) once its weights hash is `expected_sha256` and
    its UNet and noise schedule are the ones `config` builds.

    Raises ShippedWeightsError naming the file when a file is missing, the weights' SHA-256 differs (altered,
    truncated or a Git LFS pointer) or the architecture is another; `output_dir` is then left as it was.
    """
    def check_architecture(folder: Path) -> None:
        shipped = {key: read_json_field(folder / UNET_CONFIG, key) for key in unet_architecture(config)}
        expected = {key: list(value) if isinstance(value, tuple) else value
                    for key, value in unet_architecture(config).items()}
        timesteps = read_json_field(folder / SCHEDULER_CONFIG, "num_train_timesteps")
        if shipped != expected or timesteps != config.num_train_timesteps:
            differing = sorted(key for key in expected if shipped[key] != expected[key])
            differing += ["num_train_timesteps"] * (timesteps != config.num_train_timesteps)
            raise ShippedWeightsError(
                f"{folder / UNET_FOLDER} describes another architecture than the catalog's diffusion recipe "
                f"(world.yaml diffusion; differing: {differing}); the shipped weights do not fit it")

    summary = install_shipped_folder(source_dir, DIFFUSION_FOLDER, expected_sha256, output_dir, check_architecture)
    return PretrainedDiffusion(Path(output_dir), list(summary["epoch_losses"]), expected_sha256,
                               float(summary["seconds"]))


def load_diffusion(directory: str | Path, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a folder written by `pretrain_diffusion` (or any DDPM-style diffusers folder with unet/ and scheduler/)."""
    directory = Path(directory)
    required = [
        directory / UNET_FOLDER / "config.json",
        directory / UNET_FOLDER / UNET_WEIGHTS_FILENAME,
        directory / SCHEDULER_FOLDER / "scheduler_config.json",
    ]
    if not directory.is_dir():
        raise FileNotFoundError(f"diffusion model folder not found: {directory}")
    missing = [str(path) for path in required if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"diffusion model folder {directory} is incomplete; missing: {missing}")
    device = torch.device(device)
    # low_cpu_mem_usage=False: the default path needs the `accelerate` package and only warns without it.
    unet = UNet2DModel.from_pretrained(
        directory, subfolder=UNET_FOLDER, local_files_only=True, low_cpu_mem_usage=False).to(device).eval()
    unet.requires_grad_(False)
    scheduler = DDIMScheduler.from_pretrained(directory, subfolder=SCHEDULER_FOLDER, local_files_only=True)
    return DiffusionModel(unet, scheduler, directory, sha256_file(required[1]), device)


@torch.no_grad()
def generate_variations(
    model: DiffusionModel,
    images: torch.Tensor,
    strength: float,
    num_variations: int,
    seed: int,
    num_inference_steps: int = 20,
    batch_size: int = 64,
) -> torch.Tensor:
    """img2img: noise each image to the timestep `strength` selects, then denoise with DDIM (eta 0).

    images: (B, 3, H, W) in [0, 1]. Returns (B, num_variations, 3, H, W) in [0, 1]. strength 0 returns the inputs;
    strength 1 starts from (almost) pure noise. The same seed and batch_size give identical bytes; the noise is drawn
    once for all images from `seed`, so another batch_size changes the result only by float rounding.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if num_variations < 1 or num_inference_steps < 1 or batch_size < 1:
        raise ValueError("num_variations, num_inference_steps and batch_size must be at least 1")
    num_images = images.shape[0]
    sources = images.detach().float().cpu().clamp(0, 1)
    repeated = sources.unsqueeze(1).expand(num_images, num_variations, *sources.shape[1:])
    denoise_steps = min(int(round(num_inference_steps * strength)), num_inference_steps)
    if denoise_steps == 0:
        return repeated.clone()

    scheduler = model.scheduler
    scheduler.set_timesteps(num_inference_steps)
    timesteps = scheduler.timesteps[num_inference_steps - denoise_steps:]
    flat_sources = repeated.reshape(num_images * num_variations, *sources.shape[1:]) * 2 - 1
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(flat_sources.shape, generator=generator)
    outputs = []
    for start in range(0, len(flat_sources), batch_size):
        clean = flat_sources[start:start + batch_size]
        sample = scheduler.add_noise(clean, noise[start:start + batch_size], timesteps[:1].repeat(len(clean)))
        sample = sample.to(model.device)
        for timestep in timesteps:
            predicted_noise = model.unet(sample, timestep).sample
            sample = scheduler.step(predicted_noise, timestep, sample, eta=0.0).prev_sample
        outputs.append(((sample.cpu() + 1) / 2).clamp(0, 1))
    return torch.cat(outputs).reshape(num_images, num_variations, *sources.shape[1:])


def _check_images(images: np.ndarray, sample_size: int) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise ValueError(f"images must be a uint8 array of shape (N, H, W, 3); got shape {shape}, dtype {dtype}")
    if tuple(images.shape[1:3]) != (sample_size, sample_size):
        raise ValueError(
            f"images are {images.shape[1]}x{images.shape[2]} but sample_size is {sample_size}")
    if len(images) == 0:
        raise ValueError("no images to train on")

