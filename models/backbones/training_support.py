"""Helpers shared by the backbone trainers and the loader: file hashes, reproducible torch settings, the
learning-rate schedule."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def reproducible_torch(num_threads: int) -> Iterator[None]:
    """Fix the thread count and ask for deterministic kernels while training; restore both afterwards.

    CPU float reductions can depend on the thread count, so the same seed gives the same bytes only with the
    same `num_threads` on the same machine.
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(min(num_threads, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn_only)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def warmup_cosine_learning_rate(base_lr: float, warmup_steps: int, total_steps: int, step: int) -> float:
    """Linear warmup to `base_lr` over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1 + math.cos(math.pi * progress)) * base_lr
