"""One measurement of the throughput benchmark, run inside its own (fresh) process.

A measurement is a method in one variant:
- "cached": a frozen-image-tower method trained by `train_prompt_parameters` on features from the warm feature
  cache (models.prompting.feature_cache), as the pipeline trains it;
- "re-encoded": the same method trained on preprocessed images, re-encoded by the frozen image tower at every step
  (bench.reencoding.ReencodingClassifier);
- "image-prompted": a method that prompts the image tower, trained on preprocessed images (its only path);
- "batched" / "per-image": one CoCoOp forward+backward over a batch of B cached features, all B x C prompts in
  one batched text pass, against a loop calling CoCoOp once per image; both in one process, equivalence checked
  first, timed repeats interleaved (`measure_cocoop_pair`).

Training throughput is images per second over whole epochs with the method's published batch size: one warm-up
epoch (which also sizes the timed repeats so each lasts at least `min_seconds`), then `repeats` timed runs from a
freshly built classifier, median. Memory: the process's peak resident set (VmHWM) over the measurement, with
the kernel's peak mark reset just before it (Linux), and that peak minus the resident set before it (the backbone
and the inputs already loaded); on CUDA also torch.cuda.max_memory_allocated over the measurement.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from bench.inputs import BenchImages
from bench.reencoding import ReencodingClassifier
from models.experiments import build_classifier, features_for_images, preprocessed_images
from models.prompting.training import OptimizationConfig, train_prompt_parameters

TRAINING_VARIANTS = ("cached", "re-encoded", "image-prompted")
COCOOP_VARIANTS = ("batched", "per-image")
COCOOP_PAIR = "batched+per-image"  # one measurement process yielding both COCOOP_VARIANTS
EQUIVALENCE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class BenchPlan:
    """Everything a measurement process needs, as JSON (written by the orchestrator, read by each child)."""

    backbone_name: str
    backbone_dir: str
    device: str
    images: dict  # BenchImages.as_dict()
    cache_dir: str
    epochs: int  # at least this many epochs per timed repeat
    repeats: int
    min_seconds: float  # a timed repeat lasts at least this long (more epochs / iterations when faster)
    max_epochs: int  # at most this many epochs (CoCoOp: iterations) per timed repeat
    cocoop_batch: int
    num_threads: int | None = None

    def bench_images(self) -> BenchImages:
        return BenchImages(**self.images)


@dataclass(frozen=True)
class Measurement:
    method: str
    variant: str
    batch_size: int
    parameters: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)  # recorded with the figures (e.g. parameters fitted to the backbone)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far: the kernel's high-water mark (VmHWM) on Linux, else
    ru_maxrss (KiB on Linux, bytes on macOS).

    Not ru_maxrss on Linux: after fork + exec it starts at the forking parent's peak (the orchestrator, itself
    holding torch and the backbone), so every child would report the parent's peak."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 2**10
    except (OSError, StopIteration, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (2**20 if sys.platform == "darwin" else 2**10)


def current_rss_mb() -> float | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * resource.getpagesize() / 2**20


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; Linux only (/proc/self/clear_refs).

    Importing torch and loading the backbone and inputs peak above what training needs, so without a reset the
    peak of the measurement would be hidden under the peak of the setup."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def load_bench_backbone(plan: BenchPlan):
    from bench.inputs import BenchBackbone
    from models.backbones.loader import load_backbone

    if plan.num_threads:
        torch.set_num_threads(plan.num_threads)
    return load_backbone(BenchBackbone(plan.backbone_name, plan.backbone_dir, "").spec(), device=plan.device)


def cached_training_features(plan: BenchPlan, backbone) -> torch.Tensor:
    """(N, 2, E) features of the training images (original and mirrored views) through the feature cache."""
    images = plan.bench_images()
    return features_for_images(backbone, Path(images.image_dir), images.relative_paths, images.content_hashes,
                               Path(plan.cache_dir), with_mirror=True)


def run_measurement(plan: BenchPlan, measurement: Measurement, backbone=None) -> dict[str, dict[str, Any]]:
    """{variant: result} (one variant, or both of the CoCoOp pair)."""
    backbone = backbone if backbone is not None else load_bench_backbone(plan)
    if measurement.variant in TRAINING_VARIANTS:
        return {measurement.variant: measure_training(plan, measurement, backbone)}
    if measurement.variant == COCOOP_PAIR:
        return measure_cocoop_pair(plan, measurement, backbone)
    raise ValueError(f"unknown variant {measurement.variant!r}; known: {TRAINING_VARIANTS + (COCOOP_PAIR,)}")


# ----------------------------------------------------------------------------------------------- training
def measure_training(plan: BenchPlan, measurement: Measurement, backbone) -> dict[str, Any]:
    images = plan.bench_images()
    device = torch.device(plan.device)
    labels = torch.tensor(images.labels)
    started = time.perf_counter()
    if measurement.variant == "cached":
        inputs = cached_training_features(plan, backbone)
    else:
        inputs = preprocessed_images(backbone, Path(images.image_dir), images.relative_paths, with_mirror=True)
    input_seconds = time.perf_counter() - started

    def build():
        classifier = build_classifier(backbone.model, backbone.tokenizer, measurement.method, measurement.parameters,
                                      images.classnames, images.templates)
        return ReencodingClassifier(classifier, backbone.model) if measurement.variant == "re-encoded" else classifier

    def train(epochs: int) -> float:
        classifier = build()
        config = OptimizationConfig(epochs=epochs, batch_size=measurement.batch_size, seed=1)
        return train_prompt_parameters(classifier, inputs, labels, config, device=device).seconds

    return _timed(plan, device, len(images.labels), train, "epochs",
                  details={"input_seconds": round(input_seconds, 4), "input_shape": list(inputs.shape)})


# ------------------------------------------------------------------------------------------------- CoCoOp
def cocoop_batch(plan: BenchPlan, backbone, parameters: dict) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A CoCoOp classifier and B cached image features (original view) with their labels, on the plan's device."""
    images = plan.bench_images()
    batch = min(plan.cocoop_batch, len(images.labels))
    features = cached_training_features(plan, backbone)[:batch, 0]
    classifier = build_classifier(backbone.model, backbone.tokenizer, "cocoop", parameters, images.classnames,
                                  images.templates)
    device = torch.device(plan.device)
    return classifier.to(device).train(), features.to(device), torch.tensor(images.labels[:batch]).to(device)


def batched_step(classifier, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CoCoOp as implemented: all B x C prompts of the batch in batched text passes; forward + backward."""
    classifier.zero_grad(set_to_none=True)
    logits = classifier(features)
    F.cross_entropy(logits.float(), labels).backward()
    return logits.detach()


def per_image_step(classifier, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The original CoCoOp's loop: one text pass of C prompts per image; the same loss and gradient."""
    classifier.zero_grad(set_to_none=True)
    rows = []
    for index in range(features.shape[0]):
        logits = classifier(features[index : index + 1])
        (F.cross_entropy(logits.float(), labels[index : index + 1]) / features.shape[0]).backward()
        rows.append(logits.detach())
    return torch.cat(rows)


def check_cocoop_equivalence(classifier, features: torch.Tensor, labels: torch.Tensor,
                             tolerance: float = EQUIVALENCE_TOLERANCE) -> dict[str, float]:
    """Both paths give the same logits and gradients (within `tolerance`), or ValueError before any timing."""
    batched = batched_step(classifier, features, labels)
    batched_grads = {n: p.grad.detach().clone() for n, p in classifier.named_parameters() if p.grad is not None}
    looped = per_image_step(classifier, features, labels)
    looped_grads = {n: p.grad.detach().clone() for n, p in classifier.named_parameters() if p.grad is not None}
    if set(batched_grads) != set(looped_grads) or not batched_grads:
        raise ValueError(f"CoCoOp batched and per-image paths train different parameters: "
                         f"{sorted(batched_grads)} vs {sorted(looped_grads)}")
    logit_difference = float((batched - looped).abs().max())
    grad_difference = max(float((batched_grads[n] - looped_grads[n]).abs().max()) for n in batched_grads)
    if logit_difference > tolerance or grad_difference > tolerance:
        raise ValueError(f"CoCoOp batched and per-image paths differ: max logit difference {logit_difference:.3g}, "
                         f"max gradient difference {grad_difference:.3g} (tolerance {tolerance:g})")
    return {"max_logit_difference": logit_difference, "max_gradient_difference": grad_difference,
            "batch": int(features.shape[0])}


def measure_cocoop_pair(plan: BenchPlan, measurement: Measurement, backbone) -> dict[str, dict[str, Any]]:
    """Batched against per-image CoCoOp in ONE process: each variant's memory phase (peak reset, one warm-up
    iteration; the smaller per-image first, so the batched one's freed memory cannot inflate it), then the
    equivalence check, then the timed repeats interleaved (B, P, B, P, ...), so that both see the same machine
    state and the speed-up is not confounded by differences between processes."""
    classifier, features, labels = cocoop_batch(plan, backbone, measurement.parameters)
    device = torch.device(plan.device)
    steps = {"per-image": per_image_step, "batched": batched_step}

    def runner(step):
        def run(iterations: int) -> float:
            _synchronize(device)
            started = time.perf_counter()
            for _ in range(iterations):
                step(classifier, features, labels)
            _synchronize(device)
            return time.perf_counter() - started
        return run

    runs = {variant: runner(step) for variant, step in steps.items()}
    memory = {variant: _memory_phase(device, lambda run=run: run(1)) for variant, run in runs.items()}
    check = check_cocoop_equivalence(classifier, features, labels)  # raises before any timing
    units = {variant: _repeat_units(plan, memory[variant]["warm_up_seconds"]) for variant in runs}
    timings: dict[str, list[float]] = {variant: [] for variant in runs}
    for _ in range(plan.repeats):
        for variant, run in runs.items():
            timings[variant].append(run(units[variant]))
    details = {"batch": int(features.shape[0]), "equivalence": check,
               "memory": "peak over the variant's warm-up iteration (the same work as a timed iteration)",
               "timing": "repeats interleaved with the other variant in the same process"}
    return {variant: _summary(features.shape[0], units[variant], timings[variant], memory[variant], "iterations",
                              details, plan) for variant in COCOOP_VARIANTS}


# ------------------------------------------------------------------------------------------------- timing
def _memory_phase(device: torch.device, run_once: Callable[[], float]) -> dict[str, Any]:
    """Run once from a reset peak-RSS mark (where the platform allows); the peak and its rise over the start."""
    release_freed_memory()
    peak_reset = reset_peak_rss()
    current_before = current_rss_mb()
    rss_before = current_before if peak_reset and current_before is not None else peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm_up = run_once()
    return {"warm_up_seconds": warm_up, "rss_before": rss_before, "peak_reset": peak_reset, **_peaks(device)}


def release_freed_memory() -> None:
    """Hand memory freed by earlier work back to the OS (glibc keeps it resident otherwise), so the baseline RSS
    is what is live; best effort, a no-op off glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _peaks(device: torch.device) -> dict[str, Any]:
    return {"peak_rss_mb": peak_rss_mb(),
            "peak_cuda_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}


def _repeat_units(plan: BenchPlan, warm_up_seconds: float) -> int:
    return min(plan.max_epochs, max(plan.epochs, math.ceil(plan.min_seconds / max(warm_up_seconds, 1e-9))))


def _timed(plan: BenchPlan, device: torch.device, images_per_unit: int, run: Callable[[int], float], unit: str,
           details: dict) -> dict[str, Any]:
    """Warm up with one unit (an epoch or an iteration), size the repeats, time them; images/s of the median.

    Memory: the peak RSS from the warm-up on (the setup's peak is reset where the platform allows) and that peak
    minus the RSS before the warm-up; without a reset, minus the peak so far (the setup's)."""
    memory = _memory_phase(device, lambda: run(1))
    units = _repeat_units(plan, memory["warm_up_seconds"])
    timings = [run(units) for _ in range(plan.repeats)]
    memory.update(_peaks(device))  # the peaks over the repeats too
    return _summary(images_per_unit, units, timings, memory, unit, details, plan)


def _summary(images_per_unit: int, units: int, timings: list[float], memory: dict, unit: str, details: dict,
             plan: BenchPlan) -> dict[str, Any]:
    seconds = statistics.median(timings)
    n_images = images_per_unit * units
    return {
        "n_images": n_images,
        "seconds": seconds,
        "images_per_second": n_images / seconds,
        "peak_rss_mb": memory["peak_rss_mb"],
        "rss_delta_mb": memory["peak_rss_mb"] - memory["rss_before"],
        "peak_cuda_mb": memory["peak_cuda_mb"],
        "details": {**details, unit: units, "repeats": plan.repeats, "timings_seconds": [round(t, 5) for t in timings],
                    "warm_up_seconds": round(memory["warm_up_seconds"], 5),
                    "rss_baseline_mb": round(memory["rss_before"], 1),
                    "rss_baseline": "RSS before the measurement (peak reset)" if memory["peak_reset"]
                    else "peak RSS before the measurement (no peak reset on this platform)",
                    "threads": torch.get_num_threads(),
                    # other work on the machine shows up here before it shows up as noisy timings
                    "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None},
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
