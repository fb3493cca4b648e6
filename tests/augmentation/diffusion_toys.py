"""Tiny diffusion models for the augmentation tests: real diffusers pipelines from random components (saved with
save_pretrained), a micro embedded DDPM, a Hugging Face cache layout, and coloured test images. Nothing is
downloaded: the CLIP tokenizer's vocabulary is written here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.catalog import DiffusionBackboneEntry

SD_OUTPUT_SIZE = 32  # latents of 4 x 4 through the tiny VAE (scale factor 8, as Stable Diffusion's)
EMBEDDED_SIZE = 16
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"
EMBEDDED_ENTRY = DiffusionBackboneEntry(name="embedded-ddpm", source="embedded", kind="embedded_img2img",
                                        num_inference_steps=10, strength=0.6)


def coloured_images(count: int, size: int, seed: int) -> list[Image.Image]:
    """Grey images with one coloured square each."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        pixels = np.full((size, size, 3), 90, np.uint8)
        side = int(rng.integers(size // 4, size // 2))
        top, left = rng.integers(0, size - side, 2)
        pixels[top:top + side, left:left + side] = rng.integers(0, 256, 3)
        images.append(Image.fromarray(pixels))
    return images


def tiny_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[f"{letter}</w>"] = len(vocab)
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per letter
    return CLIPTokenizer.from_pretrained(folder, model_max_length=16), len(vocab)


def tiny_pipelines(root: Path) -> dict[str, Path]:
    """Save a tiny StableDiffusionImageVariationPipeline and StableDiffusionImg2ImgPipeline under root."""
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionImageVariationPipeline,
                           StableDiffusionImg2ImgPipeline, UNet2DConditionModel)
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    torch.manual_seed(0)
    width = 16  # the encoders' projection = the UNet's cross_attention_dim
    unet = UNet2DConditionModel(
        sample_size=SD_OUTPUT_SIZE // 8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=width, norm_num_groups=4, attention_head_dim=4)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4,
        sample_size=SD_OUTPUT_SIZE)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=width, projection_dim=width, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
        image_size=32, patch_size=8))
    tokenizer, vocab_size = tiny_tokenizer(root / "vocabulary")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
        max_position_embeddings=16, projection_dim=width, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    folders = {"sd_image_variation": root / "image-variation", "sd_img2img": root / "img2img"}
    StableDiffusionImageVariationPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32), requires_safety_checker=False,
    ).save_pretrained(folders["sd_image_variation"])
    StableDiffusionImg2ImgPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    ).save_pretrained(folders["sd_img2img"])
    return folders


def sd_entry(kind: str, folder: Path, **settings) -> DiffusionBackboneEntry:
    """A local_dir catalog entry for a tiny pipeline: 2 steps, 32 px."""
    defaults = {"num_inference_steps": 2, "output_size": SD_OUTPUT_SIZE, "guidance_scale": 3.0}
    if kind == "sd_img2img":
        defaults.update(strength=0.5, prompt="a photo", num_inference_steps=4)
    return DiffusionBackboneEntry(name=f"tiny-{kind}", source="local_dir", kind=kind, path=str(folder),
                                  **{**defaults, **settings})


def place_in_hub_cache(cache: Path, model_id: str, revision: str, folder: Path) -> Path:
    """Lay a pipeline folder out as a Hugging Face cache entry (refs/<revision> -> snapshots/<commit>); returns
    the cache folder."""
    repo = cache / f"models--{model_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / revision).write_text(FAKE_COMMIT)
    shutil.copytree(folder, repo / "snapshots" / FAKE_COMMIT)
    return cache


def pretrain_micro_ddpm(folder: Path) -> Path:
    """A micro DDPM pretrained for one epoch on coloured squares, written as the tiny_diffusion_model asset does."""
    from models.backbones.tiny_diffusion import DiffusionPretrainConfig, pretrain_diffusion

    images = np.stack([np.asarray(image) for image in coloured_images(32, EMBEDDED_SIZE, seed=0)])
    config = DiffusionPretrainConfig(
        sample_size=EMBEDDED_SIZE, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, epochs=1, batch_size=16, learning_rate=5e-3,
        warmup_steps=1, num_train_timesteps=100, num_threads=1)
    return pretrain_diffusion(images, folder, config).directory
