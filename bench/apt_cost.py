"""What APT's approximated prompts cost against deep VPT's: `flock /tmp/promptlab-cpu.lock .venv/bin/python -m
bench.apt_cost` (`--help` lists the options; `--device cuda` on a GPU).

What runs: one training step (forward, cross-entropy, backward) of APT (models/prompting/methods/apt.py) and of deep
VPT (vpt_deep) at the same prompt length and depth, on a CLIP-sized architecture with seeded random weights
(`open_clip.create_model("ViT-B-16", pretrained=None)`, frozen as a backbone; bench.thousand_classes.random_clip) and
seeded random images at the architecture's resolution, in one process. Deep VPT runs every block's attention and MLP
over L + n tokens; APT over L, plus L x n scores against prompt keys and values computed once per step. APT's gates
are opened (set to 0.1) so that the step's arithmetic is the trained method's (at zero the prompts' gradient is zero
but still computed).

Time: after a warm-up step each, the timed steps alternate between the two methods (APT, VPT, APT, ...), so machine
noise hits both alike; the figure is the median step. Memory: on a GPU torch.cuda.max_memory_allocated over one step
from a reset peak; on the CPU the peak resident set (VmHWM) over one step, reset just before it, minus the resident
set before it (bench.measure; freed memory handed back first). Ratios are APT over deep VPT.

Recorded: a `prompt-attention` benchmark run in the workspace's warehouse (variants apt and deep-vpt, deep VPT the
baseline, so the warehouse's view gives APT's speed-up), bench/results/apt_cost.json, and the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench.measure import current_rss_mb, peak_rss_mb, release_freed_memory, reset_peak_rss
from bench.thousand_classes import random_clip, weights_sha256
from bench.throughput import _write_json_atomically
from models.provenance import PACKAGE_ROOT, git_commit, library_code_version

BENCHMARK = "prompt-attention"
DEFAULT_OUTPUT = PACKAGE_ROOT / "bench" / "results" / "apt_cost.json"
METHODS = {"apt": "apt", "deep-vpt": "vpt_deep"}  # variant -> registered method
CLASSNAMES = [f"class {index}" for index in range(10)]
TEMPLATES = ["a photo of a {}."]


@dataclass(frozen=True)
class CostOptions:
    architecture: str = "ViT-B-16"
    n_tokens: int = 8  # deep VPT's published length
    prompt_depth: int | None = None  # None: every block of the vision tower (deep VPT's published 12 on ViT-B)
    batch_size: int = 32
    repeats: int = 5  # timed steps per method, interleaved
    device: str = "cpu"
    seed: int = 0
    workspace: Path | None = None  # None: the default workspace's warehouse
    record: bool = True
    output: Path | None = DEFAULT_OUTPUT


def build(model, tokenizer, variant: str, options: CostOptions, depth: int):
    from models.experiments import build_classifier

    classifier = build_classifier(model, tokenizer, METHODS[variant],
                                  {"n_tokens": options.n_tokens, "prompt_depth": depth}, CLASSNAMES, TEMPLATES)
    if variant == "apt":
        with torch.no_grad():
            classifier.gates.gates.fill_(0.1)
    return classifier.to(options.device).train()


def step(classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Seconds of one forward + loss + backward (gradients dropped after)."""
    device = images.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    loss, _ = classifier.training_loss(images, labels)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    classifier.zero_grad(set_to_none=True)
    return seconds


def peak_of_one_step(classifier, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float | None]:
    device = images.device
    release_freed_memory()
    reset = reset_peak_rss()
    before = current_rss_mb() if reset else peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        allocated_before = torch.cuda.memory_allocated(device)
    step(classifier, images, labels)
    peak = peak_rss_mb()
    cuda = None
    if device.type == "cuda":
        cuda = (torch.cuda.max_memory_allocated(device) - allocated_before) / 2**20
    return {"peak_rss_mb": peak, "rss_delta_mb": peak - (before or 0.0), "peak_cuda_mb": cuda}


def measure(options: CostOptions) -> dict[str, Any]:
    model, tokenizer = random_clip(options.architecture, options.seed)
    model = model.to(options.device)
    depth = options.prompt_depth or len(model.visual.transformer.resblocks)
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    generator = torch.Generator().manual_seed(options.seed)
    images = torch.randn(options.batch_size, 3, size, size, generator=generator).to(options.device)
    labels = torch.randint(len(CLASSNAMES), (options.batch_size,), generator=generator).to(options.device)
    classifiers = {variant: build(model, tokenizer, variant, options, depth) for variant in METHODS}
    memory = {variant: peak_of_one_step(classifier, images, labels) for variant, classifier in classifiers.items()}
    timings: dict[str, list[float]] = {variant: [] for variant in METHODS}
    for _ in range(options.repeats):  # interleaved: APT, VPT, APT, VPT, ...
        for variant, classifier in classifiers.items():
            timings[variant].append(step(classifier, images, labels))
    rows = {variant: {"method": METHODS[variant], "seconds": statistics.median(timings[variant]),
                      "timings_seconds": [round(t, 5) for t in timings[variant]], **memory[variant],
                      "trainable_parameters": sum(p.numel() for p in classifiers[variant].parameters()
                                                  if p.requires_grad)}
            for variant in METHODS}
    return {"depth": depth, "image_size": size, "rows": rows, "weights_sha256": weights_sha256(model.cpu()),
            "ratios": ratios(rows)}


def ratios(rows: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """APT over deep VPT: time, CPU memory rise and (on a GPU) allocated memory."""
    apt, vpt = rows["apt"], rows["deep-vpt"]

    def ratio(key: str) -> float | None:
        return apt[key] / vpt[key] if apt.get(key) is not None and vpt.get(key) else None

    return {"time": ratio("seconds"), "rss_delta": ratio("rss_delta_mb"), "cuda_memory": ratio("peak_cuda_mb")}


def describe_device(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(torch.device(device))}), fp32"
    return f"cpu ({torch.get_num_threads()} threads, {platform.machine()}, {os.cpu_count()} cores), fp32"


def run_benchmark(options: CostOptions) -> dict[str, Any]:
    started_at = datetime.now(UTC)
    load_before = round(os.getloadavg()[0], 2)
    measured = measure(options)
    result = {"bench_run_id": f"bench-{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}",
              "started_at": str(started_at), "finished_at": str(datetime.now(UTC)), "git_commit": git_commit(),
              "code_version": library_code_version(), "device": describe_device(options.device),
              "torch_version": torch.__version__, "load_average_1min_before": load_before,
              "options": json.loads(json.dumps(asdict(options), default=str)), **measured}
    if options.record:
        result["warehouse"] = record(result, options)
    if options.output is not None:
        _write_json_atomically(Path(options.output), result)
    return result


def record(result: dict[str, Any], options: CostOptions) -> str:
    """The run as one `prompt-attention` benchmark run in the workspace's warehouse; returns its address."""
    from bench.recording import record_bench_run
    from models.warehouse import BenchmarkRow

    case = f"{options.n_tokens} tokens x depth {result['depth']}"
    rows = [BenchmarkRow(
        method=f"apt vs vpt_deep/{case}", variant=variant, batch_size=options.batch_size,
        n_images=options.batch_size, seconds=row["seconds"], images_per_second=options.batch_size / row["seconds"],
        peak_rss_mb=row["peak_rss_mb"], rss_delta_mb=row["rss_delta_mb"], peak_cuda_mb=row["peak_cuda_mb"],
        baseline_variant="deep-vpt" if variant == "apt" else None,
        details={"unit": "one forward+backward step", "timings_seconds": row["timings_seconds"],
                 "trainable_parameters": row["trainable_parameters"], "image_size": result["image_size"],
                 "timing": "median of steps interleaved with the other variant in the same process"},
    ) for variant, row in result["rows"].items()]
    return record_bench_run(
        result, rows, options.workspace, benchmark=BENCHMARK, backbone=options.architecture,
        weights_sha256=result["weights_sha256"],
        weights_source=f"random (open_clip.create_model, pretrained=None, seed {options.seed})",
        dataset=f"random images ({options.batch_size} per step), {len(CLASSNAMES)} classes")


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'variant':<10}{'method':<10}{'step s':>9}{'rise MB':>10}{'GPU MB':>9}{'trainable':>11}"]
    for variant, row in result["rows"].items():
        gpu = f"{row['peak_cuda_mb']:.0f}" if row["peak_cuda_mb"] is not None else "-"
        lines.append(f"{variant:<10}{row['method']:<10}{row['seconds']:>9.3f}{row['rss_delta_mb']:>10.0f}{gpu:>9}"
                     f"{row['trainable_parameters']:>11}")
    shown = {key: f"{value:.3f}" for key, value in result["ratios"].items() if value is not None}
    lines.append(f"APT / deep VPT: {shown}; {result['options']['n_tokens']} tokens, depth {result['depth']}, "
                 f"batch {result['options']['batch_size']}; device: {result['device']}")
    return "\n".join(lines)


def parse_options(argv: list[str] | None = None) -> CostOptions:
    defaults = CostOptions()
    parser = argparse.ArgumentParser(prog="python -m bench.apt_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", default=defaults.architecture)
    parser.add_argument("--tokens", type=int, default=defaults.n_tokens)
    parser.add_argument("--depth", type=int, default=None, help="prompted blocks (default: all of the vision tower)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--no-warehouse", action="store_true")
    parser.add_argument("--output", type=Path, default=defaults.output)
    args = parser.parse_args(argv)
    return CostOptions(architecture=args.architecture, n_tokens=args.tokens, prompt_depth=args.depth,
                       batch_size=args.batch_size, repeats=args.repeats, device=args.device,
                       workspace=args.workspace, record=not args.no_warehouse, output=args.output)


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    result = run_benchmark(options)
    print(format_table(result))
    print(f"bench run {result['bench_run_id']} written to {options.output or 'no file'}"
          + (f" and {result['warehouse']}" if options.record else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
