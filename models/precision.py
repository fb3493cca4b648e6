"""The numeric precision forward passes run at, decided in one place from the device.

- CPU: fp32, no autocast (reproducible to the bit on one machine; what the reference tests check).
- CUDA with bf16 support (Ampere and later): bf16 autocast, for training and for encoding.
- CUDA without bf16: fp16 autocast for encoding (inference) only. Training stays fp32 there: the methods compute
  their own backward (ProGrad projects gradients, PromptSRC adds regularisers), with no gradient scaler, and fp16
  gradients of small prompt vectors underflow without one.

Results depend on it, so it is recorded: the feature cache keys features by it (`FeatureNamespace.precision`) and
every warehouse run says where it was computed (`runs.compute`, see `compute_description`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    device_type: str
    autocast_dtype: torch.dtype | None  # None: plain fp32

    @property
    def name(self) -> str:
        if self.autocast_dtype is None:
            return "fp32"
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype] + "-autocast"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context forward passes run in (a no-op for fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)


def precision_for(device: str | torch.device, training: bool) -> Precision:
    device = torch.device(device)
    if device.type != "cuda":
        return Precision(device.type, None)
    if torch.cuda.is_bf16_supported():
        return Precision("cuda", torch.bfloat16)
    return Precision("cuda", None if training else torch.float16)


def compute_description(device: str | torch.device, threads: int | None = None) -> str:
    """Where and at which precision a result was computed, e.g. "cpu fp32", "cpu fp32, 2 threads", "cuda NVIDIA H100
    (train bf16-autocast, encode bf16-autocast)". On a CPU the float results depend on torch's thread count in their
    last bits (reductions split over threads add in another order), so the pipeline passes it."""
    device = torch.device(device)
    training, encoding = precision_for(device, training=True), precision_for(device, training=False)
    if device.type != "cuda":
        counted = "" if threads is None else f", {threads} thread{'s' if threads != 1 else ''}"
        return f"{device.type} {training.name}{counted}"
    return f"cuda {torch.cuda.get_device_name(device)} (train {training.name}, encode {encoding.name})"
