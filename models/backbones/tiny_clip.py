"""The embedded tiny CLIP: an ordinary open_clip CLIP whose architecture is a JSON config in the catalog.

`pretrain_tiny_clip` trains it contrastively on an image-caption corpus and writes a folder that open_clip loads
with `create_model_and_transforms("local-dir:<folder>")`:

    <folder>/open_clip_config.json      {"model_cfg": ..., "preprocess_cfg": {...}}
    <folder>/open_clip_model.safetensors
    <folder>/training_summary.json      config, per-epoch losses, seconds, weights hash

`install_shipped_weights` copies such a folder (the weights shipped in the repository) into place after checking
the weights' SHA-256 against the catalog (models/backbones/shipped_weights.py, shared with the diffusion model), so
the default graph need not spend the pretraining budget.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from safetensors.torch import save_file

from models.atomic import atomic_directory
from models.backbones.shipped_weights import (  # noqa: F401 (ShippedWeightsError: part of this module's interface)
    ShippedLayout, ShippedWeightsError, install_shipped_folder, read_json_field)
from models.backbones.training_support import (
    ProgressReport, TrainingProgress, count_parameters, reproducible_torch, warmup_cosine_learning_rate)
from models.provenance import sha256_file

EMBEDDED_MODEL_CONFIG_DIR = Path(__file__).resolve().parents[2] / "assets_catalog" / "model_configs"
CONFIG_FILENAME = "open_clip_config.json"
WEIGHTS_FILENAME = "open_clip_model.safetensors"
SUMMARY_FILENAME = "training_summary.json"
# open_clip's largest sensible temperature; its training loop clamps the same way.
MAX_LOG_LOGIT_SCALE = math.log(100.0)


def register_embedded_model_configs() -> None:
    """Make the catalog's architectures (e.g. "tiny-clip") known to open_clip by name. Safe to call repeatedly."""
    if not EMBEDDED_MODEL_CONFIG_DIR.is_dir():
        raise FileNotFoundError(f"embedded model config folder not found: {EMBEDDED_MODEL_CONFIG_DIR}")
    catalog_names = {path.stem for path in EMBEDDED_MODEL_CONFIG_DIR.glob("*.json")}
    if catalog_names and catalog_names <= set(open_clip.list_models()):
        return
    open_clip.add_model_config(EMBEDDED_MODEL_CONFIG_DIR)


@dataclass
class ClipPretrainConfig:
    model_name: str = "tiny-clip"  # an open_clip architecture name (catalog configs are registered first)
    epochs: int = 4
    batch_size: int = 256  # in-batch negatives: large enough that the contrastive task means something
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    seed: int = 0
    # Both cores of the target machine; use 1 where other jobs share the cores (two threads then stall badly).
    num_threads: int = 2
    horizontal_flip: bool = False  # off by default: captions may name left and right
    random_shift_pixels: int = 0  # random translation with reflected borders, up to this many pixels
    # Curriculum: the first epochs pair each image with its subject caption only ("a circle", "the digit three").
    # With full captions from the start both towers settle on colour, the attribute raw pixels already separate,
    # and the text tower maps every shape word to one point (cosine 0.99); naming only the subject first makes
    # shape the one thing to learn.
    subject_caption_epochs: int = 0


@dataclass
class PretrainedBackbone:
    directory: Path
    epoch_losses: list[float]
    weights_sha256: str
    seconds: float


def pretrain_tiny_clip(
    images: np.ndarray,
    captions: list[str],
    output_dir: Path,
    config: ClipPretrainConfig,
    on_epoch: Callable[[int, float], None] | None = None,
    on_progress: Callable[[ProgressReport], None] | None = None,
    families: np.ndarray | None = None,
    subject_captions: list[str] | None = None,
) -> PretrainedBackbone:
    """Train a CLIP from scratch with open_clip's contrastive loss and save it as an open_clip local-dir folder.

    images: (N, H, W, 3) uint8 at the architecture's image size; captions: N strings (caption i describes image i).
    on_epoch(epoch, mean_loss) is called after every epoch, epoch counted from 1; on_progress(ProgressReport) after
    every epoch and every 30 s within one (epoch i/N, elapsed, time left).
    families: optional group id per pair (the corpus's families). Each epoch shuffles whole families and keeps
    their pairs next to each other, so a batch holds each family together: its in-batch negatives then differ from
    the positive in the family's varying attribute only.
    """
    started = time.perf_counter()
    register_embedded_model_configs()
    model_cfg = open_clip.get_model_config(config.model_name)
    if model_cfg is None:
        raise ValueError(f"unknown open_clip architecture {config.model_name!r} (ClipPretrainConfig.model_name)")
    image_size = model_cfg["vision_cfg"]["image_size"]
    _check_corpus(images, captions, image_size)
    _check_config(config)
    if config.subject_caption_epochs > 0:
        if subject_captions is None:
            raise ValueError("ClipPretrainConfig.subject_caption_epochs > 0 needs subject_captions (one per pair)")
        _check_corpus(images, subject_captions, image_size)
    family_rows = _family_rows(families, len(captions))

    with reproducible_torch(config.num_threads):
        torch.manual_seed(config.seed)
        model = open_clip.create_model(config.model_name, pretrained=None)
        model.train()
        tokenizer = open_clip.get_tokenizer(config.model_name)
        token_ids = tokenizer(list(captions))
        subject_token_ids = tokenizer(list(subject_captions)) if config.subject_caption_epochs > 0 else None
        pixels_uint8 = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)

        optimizer = _adamw_without_decay_on_gains(model, config)
        loss_function = open_clip.ClipLoss()
        generator = torch.Generator().manual_seed(config.seed)
        num_images = len(captions)
        batch_size = min(config.batch_size, num_images)
        steps_per_epoch = num_images // batch_size  # the ragged last batch is dropped, as in open_clip training
        total_steps = steps_per_epoch * config.epochs

        epoch_losses: list[float] = []
        step = 0
        progress = TrainingProgress(config.epochs, steps_per_epoch, on_progress)
        for epoch in range(1, config.epochs + 1):
            order = _epoch_order(family_rows, generator)
            epoch_token_ids = subject_token_ids if epoch <= config.subject_caption_epochs else token_ids
            batch_losses = []
            for batch_index in range(steps_per_epoch):
                indices = order[batch_index * batch_size:(batch_index + 1) * batch_size]
                batch_pixels = pixels_uint8[indices].float().div_(255.0)
                batch_pixels = _augment(batch_pixels, config, generator)
                batch_pixels = (batch_pixels - mean) / std
                learning_rate = warmup_cosine_learning_rate(
                    config.learning_rate, config.warmup_steps, total_steps, step)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate
                image_features = model.encode_image(batch_pixels, normalize=True)
                text_features = model.encode_text(epoch_token_ids[indices], normalize=True)
                loss = loss_function(image_features, text_features, model.logit_scale.exp())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, MAX_LOG_LOGIT_SCALE)
                batch_losses.append(loss.item())
                step += 1
                progress.after_step(epoch, batch_losses[-1])
            epoch_losses.append(float(np.mean(batch_losses)))
            progress.after_epoch(epoch, epoch_losses[-1])
            if on_epoch is not None:
                on_epoch(epoch, epoch_losses[-1])

    model.eval()
    preprocess_cfg = {
        "size": image_size,
        "mean": list(OPENAI_DATASET_MEAN),
        "std": list(OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    with atomic_directory(output_dir) as staging:
        state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILENAME), metadata={"format": "pt"})
        weights_sha256 = sha256_file(staging / WEIGHTS_FILENAME)
        _write_json(staging / CONFIG_FILENAME, {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})
        seconds = time.perf_counter() - started
        _write_json(staging / SUMMARY_FILENAME, {
            "config": asdict(config),
            "epoch_losses": epoch_losses,
            "seconds": seconds,
            "num_images": num_images,
            "num_parameters": count_parameters(model),
            "weights_sha256": weights_sha256,
        })
    return PretrainedBackbone(Path(output_dir), epoch_losses, weights_sha256, seconds)


TINY_CLIP_FOLDER = ShippedLayout(model="tiny-clip", catalog_field="tiny_clip_weights", weights=WEIGHTS_FILENAME,
                                 files=(CONFIG_FILENAME, WEIGHTS_FILENAME, SUMMARY_FILENAME))


def install_shipped_weights(source_dir: Path, expected_sha256: str, output_dir: Path,
                            model_name: str = "tiny-clip") -> PretrainedBackbone:
    """Copy a shipped tiny-clip folder to ``output_dir`` (atomically) once its weights hash is the expected one.

    Raises ``ShippedWeightsError`` naming the file when a file is missing, the weights' SHA-256 differs from
    ``expected_sha256`` (altered, truncated or a Git LFS pointer) or the folder's architecture is not the catalog's
    ``model_name`` config; ``output_dir`` is then left as it was.
    """
    def check_architecture(folder: Path) -> None:
        register_embedded_model_configs()
        if read_json_field(folder / CONFIG_FILENAME, "model_cfg") != open_clip.get_model_config(model_name):
            raise ShippedWeightsError(
                f"{folder / CONFIG_FILENAME} describes another architecture than the catalog's {model_name!r} "
                f"({EMBEDDED_MODEL_CONFIG_DIR / (model_name + '.json')}); the shipped weights do not fit it")

    summary = install_shipped_folder(source_dir, TINY_CLIP_FOLDER, expected_sha256, output_dir, check_architecture)
    return PretrainedBackbone(Path(output_dir), list(summary["epoch_losses"]), expected_sha256,
                              float(summary["seconds"]))


def _family_rows(families: np.ndarray | None, num_pairs: int) -> list[torch.Tensor]:
    if families is None:
        return [torch.arange(num_pairs)]
    families = np.asarray(families)
    if families.shape != (num_pairs,):
        raise ValueError(f"families must hold one id per pair ({num_pairs}), got shape {families.shape}")
    _ids, first_rows, inverse, counts = np.unique(families, return_index=True, return_inverse=True,
                                                  return_counts=True)
    rows_by_family = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    return [torch.from_numpy(rows_by_family[index]) for index in np.argsort(first_rows)]  # in corpus order


def _epoch_order(family_rows: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """A random order of all pairs; with families, a random order of families with each family's pairs together."""
    if len(family_rows) == 1:
        return family_rows[0][torch.randperm(len(family_rows[0]), generator=generator)]
    family_order = torch.randperm(len(family_rows), generator=generator).tolist()
    return torch.cat([family_rows[index] for index in family_order])


def _check_corpus(images: np.ndarray, captions: list[str], image_size: int) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise ValueError(f"images must be a uint8 array of shape (N, H, W, 3); got shape {shape}, dtype {dtype}")
    if tuple(images.shape[1:3]) != (image_size, image_size):
        raise ValueError(
            f"images are {images.shape[1]}x{images.shape[2]} but the architecture expects {image_size}x{image_size}")
    if len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions; caption i must describe image i")
    if len(captions) < 2:
        raise ValueError("contrastive training needs at least 2 image-caption pairs")
    for row, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"caption at row {row} is empty or not a string: {caption!r}")


def _check_config(config: ClipPretrainConfig) -> None:
    for field_name in ("epochs", "batch_size"):
        if getattr(config, field_name) < 1:
            raise ValueError(f"ClipPretrainConfig.{field_name} must be at least 1, got {getattr(config, field_name)}")
    if config.batch_size < 2:
        raise ValueError("ClipPretrainConfig.batch_size must be at least 2 for in-batch negatives")
    if config.random_shift_pixels < 0:
        raise ValueError(f"ClipPretrainConfig.random_shift_pixels must be >= 0, got {config.random_shift_pixels}")


def _adamw_without_decay_on_gains(model: torch.nn.Module, config: ClipPretrainConfig) -> torch.optim.AdamW:
    """AdamW as open_clip trains CLIP: no weight decay on norms, biases, 1-d gains and the temperature."""
    decayed, not_decayed = [], []
    for name, parameter in model.named_parameters():
        exclude = parameter.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name
        (not_decayed if exclude else decayed).append(parameter)
    return torch.optim.AdamW(
        [{"params": not_decayed, "weight_decay": 0.0}, {"params": decayed, "weight_decay": config.weight_decay}],
        lr=config.learning_rate, betas=(0.9, 0.98), eps=1e-6,
    )


def _augment(pixels: torch.Tensor, config: ClipPretrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Light, seeded augmentation on a (B, 3, H, W) batch in [0, 1]."""
    if config.horizontal_flip:
        flip = torch.rand(pixels.shape[0], generator=generator) < 0.5
        pixels[flip] = pixels[flip].flip(-1)
    shift = config.random_shift_pixels
    if shift > 0:
        height, width = pixels.shape[-2:]
        padded = torch.nn.functional.pad(pixels, (shift, shift, shift, shift), mode="reflect")
        offsets = torch.randint(0, 2 * shift + 1, (pixels.shape[0], 2), generator=generator)
        pixels = torch.stack([
            padded[index, :, top:top + height, left:left + width]
            for index, (top, left) in enumerate(offsets.tolist())
        ])
    return pixels


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
