"""The text tower with the padding after the last end-of-text token cut, against the whole context:
`flock /tmp/promptlab-cpu.lock .venv/bin/python -m bench.text_padding` (`--help` lists the options).

What runs: one training step's text work of CoOp (context from "a photo of a"; every class prompt through the text
tower, forward and backward to the context; batch 32 of cached-feature-shaped random image features) and of CoCoOp (batch 2: one prompt per
image and class), with the first `--classes` of ImageNet's class names and the methods' published parameters, on
architectures with seeded random weights (`open_clip.create_model(..., pretrained=None)`, frozen as the backbone
loader freezes one): ViT-B-16 (77 positions) and the embedded tiny-clip (24). Both variants run in one process on
the same classifier, `TextTower.cut_padding` switched between repeats, interleaved (cut, whole, cut, whole, ...)
after one warm-up step each, so that load drifts hit both alike; the figure is each variant's median step.

Recorded: one `text-padding` benchmark run in the configured warehouse (rows named architecture/method, variants
padding-cut and whole-context, the second the baseline), bench/results/text_padding.json, and the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.throughput import _write_json_atomically
from models.provenance import PACKAGE_ROOT, git_commit, library_code_version

BENCHMARK = "text-padding"
DEFAULT_OUTPUT = PACKAGE_ROOT / "bench" / "results" / "text_padding.json"
TEMPLATES = ["a photo of a {}."]
BATCHES = {"coop": 32, "cocoop": 2}
TINY_CLIP_CONFIG = PACKAGE_ROOT / "assets_catalog" / "model_configs" / "tiny-clip.json"


@dataclass(frozen=True)
class BenchOptions:
    workspace: Path | None = None  # None: the default workspace (its warehouse, $PROMPTLAB_WAREHOUSE)
    architectures: tuple[str, ...] = ("ViT-B-16", "tiny-clip")
    methods: tuple[str, ...] = ("coop", "cocoop")
    n_classes: int = 50
    repeats: int = 3
    text_blocks: int | None = None  # the text tower cut to its first blocks (the test's micro case)
    record: bool = True
    output: Path | None = DEFAULT_OUTPUT
    seed: int = 0


def random_model(architecture: str, seed: int, text_blocks: int | None = None):
    """(model, tokenizer) with seeded random weights, frozen, in eval mode."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if architecture == "tiny-clip":
            import json

            model = open_clip.model.CLIP(**json.loads(TINY_CLIP_CONFIG.read_text()))
        else:
            model = open_clip.create_model(architecture, pretrained=None)
    model = model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if text_blocks is not None:
        model.transformer.resblocks = model.transformer.resblocks[:text_blocks]
        model.transformer.layers = text_blocks
    return model, open_clip.get_tokenizer("ViT-B-16", context_length=model.context_length)


def measure_pair(architecture: str, method: str, options: BenchOptions) -> dict[str, Any]:
    """Both variants of one case, interleaved: each variant's step seconds and the features' largest difference."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from models.experiments import build_classifier
    from models.prompting.methods.cocoop import joint_embedding_dim

    model, tokenizer = random_model(architecture, options.seed, options.text_blocks)
    classnames = list(IMAGENET_CLASSNAMES[: options.n_classes])
    # CoOp from "a photo of a" (4 tokens, as CoCoOp's default): its 16 random tokens with a long ImageNet class
    # name overflow tiny-clip's 24 positions
    classifier = build_classifier(model, tokenizer, method, {"context_init": "a photo of a"}, classnames, TEMPLATES)
    classifier.train()
    tower = classifier.text_tower
    if not tower.padding_is_inert:
        raise RuntimeError(f"{architecture}: its text tower's padding is not inert (mask or pooling)")
    batch = BATCHES[method]
    generator = torch.Generator().manual_seed(options.seed)
    features = torch.randn(batch, joint_embedding_dim(tower), generator=generator)
    labels = torch.randint(options.n_classes, (batch,), generator=generator)
    trainable = [p for p in classifier.parameters() if p.requires_grad]

    def step(cut: bool) -> tuple[float, torch.Tensor]:
        tower.cut_padding = cut
        for parameter in trainable:
            parameter.grad = None
        started = time.perf_counter()
        logits = classifier(features)
        F.cross_entropy(logits, labels).backward()
        return time.perf_counter() - started, logits.detach()

    _, cut_logits = step(True)
    _, whole_logits = step(False)
    timings: dict[str, list[float]] = {"padding-cut": [], "whole-context": []}
    for _ in range(options.repeats):
        timings["padding-cut"].append(step(True)[0])
        timings["whole-context"].append(step(False)[0])
    tower.cut_padding = True
    return {
        "architecture": architecture, "method": method, "name": f"{architecture}/{method}", "batch_size": batch,
        "n_classes": options.n_classes, "prompts": options.n_classes * (batch if method == "cocoop" else 1),
        "context_length": tower.context_length, "used_length": tower.used_length(classifier.pieces.token_ids),
        "seconds": {variant: statistics.median(values) for variant, values in timings.items()},
        "timings": timings, "largest_logit_difference": float((cut_logits - whole_logits).abs().max()),
        "threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 2),
    }


def run_benchmark(options: BenchOptions) -> dict[str, Any]:
    started_at = datetime.now(UTC)
    load_before = round(os.getloadavg()[0], 2)
    measured = []
    for architecture in options.architectures:
        for method in options.methods:
            print(f"measuring {architecture}/{method}", flush=True)
            measured.append(measure_pair(architecture, method, options))
    result = {
        "bench_run_id": f"bench-{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}", "started_at": str(started_at),
        "finished_at": str(datetime.now(UTC)), "git_commit": git_commit(), "code_version": library_code_version(),
        "device": f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores), fp32",
        "torch_version": torch.__version__, "load_average_1min_before": load_before,
        "options": {key: str(value) if isinstance(value, Path) else value for key, value in asdict(options).items()},
        "measured": measured,
    }
    if options.record:
        result["warehouse"] = record(result, options)
    if options.output is not None:
        _write_json_atomically(Path(options.output), result)
    return result


def record(result: dict[str, Any], options: BenchOptions) -> str:
    """The run as one `text-padding` benchmark run in the workspace's warehouse; returns its address."""
    from bench.recording import record_bench_run
    from models.warehouse import BenchmarkRow

    rows = []
    for m in result["measured"]:
        for variant, seconds in m["seconds"].items():
            rows.append(BenchmarkRow(
                method=m["name"], variant=variant, batch_size=m["batch_size"], n_images=m["batch_size"],
                seconds=seconds, images_per_second=m["batch_size"] / seconds, peak_rss_mb=0.0, rss_delta_mb=0.0,
                baseline_variant="whole-context" if variant == "padding-cut" else None,
                details={key: m[key] for key in ("n_classes", "prompts", "context_length", "used_length", "timings",
                                                 "largest_logit_difference", "threads", "load_average_1min")}
                | {"unit": "one training step's forward and backward (median)", "memory": "not measured"}))
    return record_bench_run(
        result, rows, options.workspace, benchmark=BENCHMARK, backbone=",".join(options.architectures),
        weights_sha256="random (seeded)", weights_source=f"random (open_clip, pretrained=None, seed {options.seed})",
        dataset=f"random image features, ImageNet's first {options.n_classes} class names")


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'case':<22}{'prompts':>8}{'positions':>11}  {'cut s':>8}  {'whole s':>8}  {'speed-up':>8}"]
    for m in result["measured"]:
        cut, whole = m["seconds"]["padding-cut"], m["seconds"]["whole-context"]
        lines.append(f"{m['name']:<22}{m['prompts']:>8}{m['used_length']:>5} of {m['context_length']:<3}"
                     f"  {cut:>8.3f}  {whole:>8.3f}  {whole / cut:>7.2f}x")
    lines.append(f"device: {result['device']}; torch {result['torch_version']}; random weights; one training "
                 f"step's forward + backward, median of {result['options']['repeats']} interleaved repeats")
    return "\n".join(lines)


def parse_options(argv: list[str] | None = None) -> BenchOptions:
    defaults = BenchOptions()
    parser = argparse.ArgumentParser(prog="python -m bench.text_padding", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--architectures", default=",".join(defaults.architectures))
    parser.add_argument("--methods", default=",".join(defaults.methods))
    parser.add_argument("--classes", type=int, default=defaults.n_classes)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--text-blocks", type=int, default=None, help="cut the text tower to its first blocks")
    parser.add_argument("--no-warehouse", action="store_true")
    parser.add_argument("--output", type=Path, default=defaults.output)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.classes < 1:
        parser.error("--repeats and --classes must be at least 1")
    return BenchOptions(
        workspace=args.workspace, architectures=tuple(a for a in args.architectures.split(",") if a),
        methods=tuple(m for m in args.methods.split(",") if m), n_classes=args.classes, repeats=args.repeats,
        text_blocks=args.text_blocks, record=not args.no_warehouse, output=args.output)


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    result = run_benchmark(options)
    print(format_table(result))
    where = [str(options.output)] if options.output else []
    if options.record:
        where.append(f"{result['warehouse']} (benchmark_results, latest_benchmark)")
    print(f"bench run {result['bench_run_id']} written to {' and '.join(where) or 'nowhere'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
