"""A CLIP backbone served as a black box: images in, logits out, nothing else (no gradients, no weights, no features).

What a black-box method (BlackVIP) may call: `BlackBoxCLIP(images)` returns logit_scale x normalised image features
x the fixed text features of the class names with the dataset's hand-crafted templates (zero-shot CLIP's classifier),
computed under torch.no_grad, so no autograd graph ever reaches the backbone. `pixel_bounds` says which values are
valid pixels once normalised with the backbone's own mean and std, for methods that edit the image (x' stays an
image: each channel clamped to [(0 - mean) / std, (1 - mean) / std]).
"""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn


def normalisation_of(clip_model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the backbone's images are normalised with (open_clip's OpenAI default where it declares none)."""
    preprocess = open_clip.get_model_preprocess_cfg(clip_model)
    return tuple(preprocess.get("mean") or OPENAI_DATASET_MEAN), tuple(preprocess.get("std") or OPENAI_DATASET_STD)


def image_size_of(clip_model: nn.Module) -> tuple[int, int]:
    """(height, width) of the images the backbone's image tower takes."""
    size = getattr(clip_model.visual, "image_size", None)
    if size is None:
        raise ValueError(f"{type(clip_model.visual).__name__} does not declare its image_size")
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


class BlackBoxCLIP(nn.Module):
    """Logits of the frozen backbone for (B, 3, H, W) images normalised as its preprocessing does."""

    def __init__(self, clip_model: nn.Module, class_text_features: torch.Tensor):
        super().__init__()
        self.clip_model = clip_model
        self.register_buffer("class_text_features", F.normalize(class_text_features.float(), dim=-1))
        self.register_buffer("logit_scale", clip_model.logit_scale.detach().exp().clone())
        mean, std = normalisation_of(clip_model)
        device = class_text_features.device
        mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.register_buffer("pixel_low", (0 - mean) / std)
        self.register_buffer("pixel_high", (1 - mean) / std)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image = F.normalize(self.clip_model.encode_image(images).float(), dim=-1)
        return self.logit_scale * image @ self.class_text_features.t()

    def clamp_to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Each channel clamped to the values of pixels in [0, 1] after normalisation."""
        return torch.maximum(torch.minimum(images, self.pixel_high), self.pixel_low)
