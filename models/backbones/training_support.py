"""Helpers shared by the backbone trainers and the loader: file hashes, reproducible torch settings, the
learning-rate schedule, progress lines (epoch i/N, elapsed, time left)."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

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


def format_duration(seconds: float) -> str:
    """45s, 2m05s, 1h03m: short enough for a log line."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass(frozen=True)
class ProgressReport:
    """Where a training loop stands: epoch i of N, optimizer step of the whole run, the mean loss so far in this
    epoch (the epoch's loss when `epoch_done`), seconds elapsed and, once a step is done, the estimated time left."""

    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float
    elapsed_seconds: float
    epoch_done: bool

    @property
    def remaining_seconds(self) -> float | None:
        if self.step == 0:
            return None
        return self.elapsed_seconds / self.step * (self.total_steps - self.step)

    def line(self, model: str) -> str:
        """`tiny-clip epoch 3/16: loss 3.2700, 2m10s elapsed, about 9m30s left` (mid-epoch: `epoch 1/16, step
        40/1488: loss 3.9000 so far, ...`)."""
        where = f"epoch {self.epoch}/{self.epochs}"
        if not self.epoch_done:
            where += f", step {self.step}/{self.total_steps}"
        remaining = self.remaining_seconds
        left = "time left unknown" if remaining is None else f"about {format_duration(remaining)} left"
        return (f"{model} {where}: loss {self.loss:.4f}{'' if self.epoch_done else ' so far'}, "
                f"{format_duration(self.elapsed_seconds)} elapsed, {left}")


class TrainingProgress:
    """Counts the optimizer steps of a training loop and reports them: at the end of every epoch, and within an
    epoch every `interval_seconds`, so that the first line comes seconds after the start instead of after the first
    epoch (an epoch of the default world takes minutes on 2 cores)."""

    def __init__(self, epochs: int, steps_per_epoch: int, report: Callable[[ProgressReport], None] | None,
                 interval_seconds: float = 30.0, clock: Callable[[], float] = time.perf_counter):
        self.epochs, self.total_steps = epochs, epochs * steps_per_epoch
        self.report, self.interval_seconds, self.clock = report, interval_seconds, clock
        self.started = self.last_report = clock()
        self.step = 0
        self.epoch_loss_sum, self.epoch_steps = 0.0, 0

    def after_step(self, epoch: int, loss: float) -> None:
        self.step += 1
        self.epoch_loss_sum += loss
        self.epoch_steps += 1
        if self.report is not None and self.clock() - self.last_report >= self.interval_seconds:
            self._emit(epoch, self.epoch_loss_sum / self.epoch_steps, epoch_done=False)

    def after_epoch(self, epoch: int, epoch_loss: float) -> None:
        if self.report is not None:
            self._emit(epoch, epoch_loss, epoch_done=True)
        self.epoch_loss_sum, self.epoch_steps = 0.0, 0

    def _emit(self, epoch: int, loss: float, epoch_done: bool) -> None:
        now = self.clock()
        self.last_report = now
        self.report(ProgressReport(epoch, self.epochs, self.step, self.total_steps, loss, now - self.started,
                                   epoch_done))
