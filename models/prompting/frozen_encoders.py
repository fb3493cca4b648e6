"""A frozen image encoder named by a string, for methods that read another model's image features beside CLIP's
(NoLA's labeller reads DINO's): resolved, and checked to be loadable offline, before any training; loaded only when
the features are needed.

Names:
- "backbone": the CLIP backbone's own image tower, unprompted (no extra weights; the default where no
  self-supervised weights are available offline).
- "timm:<model>": a timm model with its pretrained weights from the Hugging Face cache (e.g.
  "timm:vit_base_patch16_224.dino", DINO ViT-B/16); "timm:<model>:<checkpoint path>" loads a local checkpoint.
- "open_clip:<architecture>:<pretrained tag or checkpoint path>": an open_clip model's image tower.

An encoder never downloads: a name whose weights are not on this machine is refused (EncoderUnavailableError, a
ValueError, so that the applicability check before training reports it) naming the model and the folder searched.
Features are the encoder's pooled output (timm: `num_classes=0`, DINO's CLS token; open_clip: `encode_image`),
computed without gradients in eval mode. Inputs are images normalised for the CLIP backbone; they are mapped back to
pixels, resized (bicubic) to the encoder's input size and normalised with the encoder's own mean and std.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

BACKBONE = "backbone"
LIBRARIES = ("timm", "open_clip")


class EncoderUnavailableError(ValueError):
    """An encoder's weights are not on this machine (nothing is downloaded)."""


@dataclass(frozen=True)
class EncoderName:
    library: str  # "backbone", "timm" or "open_clip"
    model: str = ""
    weights: str = ""  # timm: a checkpoint path or "" (the pretrained tag); open_clip: a tag or a checkpoint path

    @classmethod
    def parse(cls, name: str, who: str) -> "EncoderName":
        if name == BACKBONE:
            return cls(BACKBONE)
        library, _, rest = str(name).partition(":")
        model, _, weights = rest.partition(":")
        if library not in LIBRARIES or not model or (library == "open_clip" and not weights):
            raise ValueError(f"{who}: encoder {name!r} is not 'backbone', 'timm:<model>[:<checkpoint>]' or "
                             "'open_clip:<architecture>:<pretrained tag or checkpoint>'")
        return cls(library, model, weights)

    def __str__(self) -> str:
        return ":".join(part for part in (self.library, self.model, self.weights) if part)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache timm and open_clip read their weights from (read at call time)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _cached_hub_file(repo_id: str, filenames: Sequence[str]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hub_cache_dir()))
        if isinstance(found, str):
            return found
    return None


HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def locate_weights(name: EncoderName, who: str) -> str | None:
    """The file the encoder's weights come from (None for the backbone), or EncoderUnavailableError."""
    if name.library == BACKBONE:
        return None
    local = name.weights if name.library == "timm" else (name.weights if Path(name.weights).suffix else "")
    if local:
        if not Path(local).is_file():
            raise EncoderUnavailableError(f"{who}: encoder {name}: checkpoint {local} does not exist")
        return local
    if name.library == "timm":
        import timm

        config = timm.models.get_pretrained_cfg(name.model)
        if config is None:
            raise EncoderUnavailableError(f"{who}: encoder {name}: timm knows no pretrained model {name.model!r}")
        repo = config.hf_hub_id
    else:
        import open_clip

        config = open_clip.get_pretrained_cfg(name.model, name.weights)
        if not config:
            raise EncoderUnavailableError(f"{who}: encoder {name}: open_clip knows no weights {name.weights!r} for "
                                          f"{name.model!r}")
        repo = "/".join(config.get("hf_hub", "").strip("/").split("/")[:2])  # "<owner>/<name>[/<file>]"
    found = _cached_hub_file(repo, HUB_WEIGHT_FILES) if repo else None
    if found is None:
        raise EncoderUnavailableError(
            f"{who}: encoder {name} cannot be loaded offline: the weights of {name.model!r} (hub repository "
            f"{repo or 'none'}) are not in the cache folder {hub_cache_dir()}; nothing is downloaded. Put them there, "
            "give a local checkpoint, or use the backbone's own image tower ('backbone')")
    return found


@contextmanager
def _offline():
    saved = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class FrozenImageEncoder:
    """A frozen encoder's features (N, F) of images normalised for the CLIP backbone. Not an nn.Module on purpose:
    it is never part of a classifier's state or parameters."""

    def __init__(self, name: str, clip_model: nn.Module, who: str):
        import open_clip

        self.name = EncoderName.parse(name, who)
        self.weights_file = locate_weights(self.name, who)
        preprocess = open_clip.get_model_preprocess_cfg(clip_model)
        self.input_mean = tuple(preprocess.get("mean") or open_clip.OPENAI_DATASET_MEAN)
        self.input_std = tuple(preprocess.get("std") or open_clip.OPENAI_DATASET_STD)
        self._clip_visual = [clip_model.visual]
        self._model: nn.Module | None = None
        self.mean, self.std, self.size = self.input_mean, self.input_std, None

    def load(self, device: torch.device) -> nn.Module:
        """The encoder in eval mode with every parameter frozen (loaded once)."""
        if self._model is None:
            if self.name.library == BACKBONE:
                model = self._clip_visual[0]
            elif self.name.library == "timm":
                import timm

                overlay = {"file": self.weights_file} if self.name.weights else None
                with _offline():
                    model = timm.create_model(self.name.model, pretrained=True, num_classes=0,
                                              pretrained_cfg_overlay=overlay)
                config = timm.data.resolve_data_config({}, model=model)
                self.mean, self.std, self.size = tuple(config["mean"]), tuple(config["std"]), config["input_size"][1:]
            else:
                import open_clip

                with _offline():
                    full = open_clip.create_model(self.name.model, pretrained=self.weights_file or self.name.weights)
                preprocess = open_clip.get_model_preprocess_cfg(full)
                model = full.visual
                self.mean, self.std = tuple(preprocess["mean"]), tuple(preprocess["std"])
                size = preprocess["size"]
                self.size = (size, size) if isinstance(size, int) else tuple(size)
            model.eval()
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            self._model = model
        return self._model.to(device)

    @property
    def model(self) -> nn.Module | None:
        return self._model

    def describe(self) -> dict:
        return {"name": str(self.name), "weights_file": self.weights_file,
                "feature_width": None if self._model is None else self.feature_width}

    @property
    def feature_width(self) -> int:
        model = self._model
        width = getattr(model, "num_features", None) or getattr(model, "output_dim", None)
        if width is None and getattr(model, "proj", None) is not None:
            width = model.proj.shape[-1]
        return int(width)

    def _encoder_inputs(self, images: torch.Tensor) -> torch.Tensor:
        if self.name.library == BACKBONE:
            return images
        dtype = next(self._model.parameters()).dtype
        images = images.float()
        in_mean = torch.tensor(self.input_mean, device=images.device).view(1, 3, 1, 1)
        in_std = torch.tensor(self.input_std, device=images.device).view(1, 3, 1, 1)
        pixels = (images * in_std + in_mean).clamp(0, 1)
        if self.size is not None and tuple(pixels.shape[-2:]) != tuple(self.size):
            pixels = F.interpolate(pixels, size=tuple(self.size), mode="bicubic", align_corners=False).clamp(0, 1)
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return ((pixels - mean) / std).to(dtype)

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """(N, F) float32 features of images (N, 3, H, W), on the images' device, in input order."""
        model = self.load(images.device)
        model.eval()
        chunks = [model(self._encoder_inputs(images[start:start + batch_size])).float()
                  for start in range(0, images.shape[0], batch_size)]
        return torch.cat(chunks)
