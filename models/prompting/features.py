"""Image features from a frozen image tower, computed in batches, once per view."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image

from models.precision import precision_for


@torch.no_grad()
def encode_images(
    clip_model: torch.nn.Module,
    preprocess: Callable[[Image.Image], torch.Tensor],
    images: Sequence[Image.Image],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Raw (unnormalized) image features (N, E) in input order."""
    clip_model.eval()
    device = torch.device(device)
    precision = precision_for(device, training=False)
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = torch.stack([preprocess(image) for image in images[start : start + batch_size]]).to(device)
        with precision.autocast():
            chunks.append(clip_model.encode_image(pixels).float().cpu())
    if not chunks:
        raise ValueError("no images to encode")
    return torch.cat(chunks)

