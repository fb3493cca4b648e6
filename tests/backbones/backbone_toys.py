"""Toy corpora and micro architectures shared by the backbone tests (seconds on 2 CPU cores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import torch

TEST_DATA_DIR = Path(__file__).resolve().parents[1] / "data"
TINY_OPENAI_CHECKPOINT = TEST_DATA_DIR / "tiny_clip_openai.safetensors"
MICRO_CLIP_NAME = "micro-clip-test"
MICRO_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 40)}


def coloured_squares(count: int, seed: int, size: int = 32) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Grey images with one square of a named colour at a random place; caption "a <colour> square"."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    images = np.full((count, size, size, 3), 90, np.uint8)
    labels = rng.integers(0, len(names), count)
    for index, label in enumerate(labels):
        side = int(rng.integers(size // 4, size // 2))
        top, left = rng.integers(0, size - side, 2)
        images[index, top:top + side, left:left + side] = COLOURS[names[label]]
    return images, [f"a {names[label]} square" for label in labels], labels


def normalized_pixels(images: np.ndarray) -> torch.Tensor:
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
