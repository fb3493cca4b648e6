"""Test-time tuning throughput (TPT, DiffTPT): test images per second of the library's batched loop against the
authors' reference-style loop, side by side in one run: `.venv/bin/python -m bench.testtime` (from the repository
root; `--help` lists the options).

Per architecture (the embedded tiny-clip, the workspace's pretrained weights when present; ViT-B-16 with seeded
random weights: bench.inputs), on the first K embedded images, three variants of the same computation, the
zero-shot start ("a photo of a", tuned as CoOp's context, as models/testtime/start.py builds it) and the published
settings (TPT: 64 views, 6 kept, one AdamW step):
a) `batched-cached`: `tune_test_images` with a feature cache warmed by a first pass, so the timed pass reads every
   view's features from it (the views are still drawn, as the library always does);
b) `batched`: `tune_test_images` without a cache: each image's views through the image tower once, in one batch;
c) `reference`: the loop of the authors' code (azshue/TPT `test_time_tuning`), which re-encodes the views at every
   step, then encodes v0 again to predict; here one view per image-tower pass (`reference_tune_and_predict`). The
   authors' code passes an image's views as one batch: at one step it encodes what `batched` encodes (plus v0
   again), so at TPT's one step `batched` over `reference` is the gain of batching alone, and the gain of encoding
   once instead of at every step shows with more steps (`--setting steps=4`, DiffTPT's).
All three draw the same views (seeded per image) with the same classifier and settings, so their predictions must
agree: before anything is written, the reference's and the cached pass's log-probabilities are compared with the
batched pass's (max |difference|, argmax agreement) and the run fails when they differ beyond what batched against
single-view encoding explains. The timed repeats of the variants are interleaved in one process, their order
rotated each round, so machine noise hits all alike; images/s is of the median repeat.

DiffTPT (`--mode difftpt`) runs with a deterministic stand-in generator (`RolledCopies`: the source image shifted by
a seeded offset) whose variations are made once into a variation cache before timing: generation is not what is
measured, and every variant reads the same variations.

Output: a table, bench/results/testtime-latest.json (written atomically) and, unless `--no-warehouse`, the
workspace's warehouse: one `test-time` benchmark run per architecture in `benchmark_results` (method tpt or
difftpt; variants batched-cached, batched and reference, each with its speed-up over reference), all written only
when every measurement and check succeeded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.inputs import BenchImages, resolve_backbone, resolve_images
from bench.throughput import _write_json_atomically, describe_device, machine_load_warning
from models.augmentation.generation import GenerationProvenance, VariationGenerator, per_image_seed
from models.catalog.testtime_settings import TEST_TIME_MODES, TestTimeSettings, published_settings
from models.precision import precision_for
from models.provenance import PACKAGE_ROOT, git_commit, library_code_version
from models.testtime.selection import average_entropy
from models.testtime.tuning import TestTimeResult, TestTimeTuner, TunedPrediction, tune_test_images
from models.testtime.views import conventional_views, generated_views, input_size, view_generator
from models.workspace import Workspace, default_workspace_root

DEFAULT_OUTPUT = PACKAGE_ROOT / "bench" / "results" / "testtime-latest.json"
VARIANTS = ("batched-cached", "batched", "reference")
BASELINE = "reference"
# ViT-B-16 tunes a few images per second at best on a CPU, the reference loop far fewer: few images by default.
DEFAULT_IMAGES = {"tiny-clip": 20, "ViT-B-16": 1}
# Batched and single-view encoding agree to the last bits in fp32; under bf16 autocast (CUDA) to bf16's precision.
FP32_TOLERANCE = 1e-4
AUTOCAST_TOLERANCE = 1e-1


class BenchmarkFailed(RuntimeError):
    """A measurement or a check failed; nothing of the run was written."""


# ------------------------------------------------------------------------------------------ reference loop
def reference_tune_and_predict(tuner: TestTimeTuner, backbone, view_pixels: torch.Tensor) -> TunedPrediction:
    """One image the way the authors' code tunes it: at every step all views go through the frozen image tower
    again (here one view per pass), the classifier scores them, the confident ones are selected at step 0 and kept,
    one AdamW step on their average entropy; then v0 is encoded once more and predicted.

    view_pixels: (V, 3, S, S), v0 first, as `tune_test_images` draws them. Returns the same fields as
    `TestTimeTuner.tune_and_predict` (views_kept 0 and logits_before = logits_after when steps is 0: no selection
    is made then; loss_after is nan: the reference loop does not score the tuned prompt on the kept views)."""
    encoding = precision_for(backbone.device, training=False)

    def encode_one_at_a_time(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), encoding.autocast():
            return torch.cat([backbone.model.encode_image(view[None].to(backbone.device)).float().cpu()
                              for view in pixels])

    def logits_of(features: torch.Tensor) -> torch.Tensor:
        with tuner.precision.autocast():
            return tuner.classifier(features.to(tuner.device)).float()

    optimizer = tuner.reset()
    selected, logits_before, loss_before = None, None, float("nan")
    for step in range(tuner.settings.steps):
        features = encode_one_at_a_time(view_pixels)
        logits = logits_of(features)
        if step == 0:  # the selection is made once, on the starting prompt's logits, and kept
            selected = tuner.select(logits.detach().cpu(), features).to(tuner.device)
            logits_before = logits[0].detach().cpu()
        loss = average_entropy(logits[selected])
        if step == 0:
            loss_before = float(loss.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits_after = logits_of(encode_one_at_a_time(view_pixels[:1])).detach().cpu()[0]
    return TunedPrediction(logits_after if logits_before is None else logits_before, logits_after,
                           0 if selected is None else int(selected.numel()), loss_before, float("nan"))


def image_views(backbone, settings: TestTimeSettings, image: Image.Image, content_sha256: str,
                variations: Sequence[Image.Image] | None = None) -> torch.Tensor:
    """The views `tune_test_images` scores for one image: v0, the seeded conventional views, then (DiffTPT) the
    generated variations."""
    preprocess = backbone.preprocess_eval
    pixels = conventional_views(image, preprocess, input_size(preprocess), settings.recipe,
                                view_generator(settings.seed, content_sha256))
    if settings.mode == "difftpt":
        pixels = torch.cat([pixels, generated_views(list(variations), preprocess)])
    return pixels


def reference_tune_test_images(tuner: TestTimeTuner, backbone, image_dir: Path, relative_paths: Sequence[str],
                               content_hashes: Sequence[str], generator: VariationGenerator | None = None,
                               variation_cache_dir: Path | None = None) -> TestTimeResult:
    """`tune_test_images`'s contract (same images, views and classifier) through the reference loop."""
    from models.augmentation.variation_cache import cached_variations
    from models.data.index import load_images

    settings = tuner.settings
    if settings.mode == "difftpt" and generator is None:
        raise ValueError("difftpt needs a VariationGenerator for its generated views")
    generation_seed = settings.seed if settings.generation_seed is None else settings.generation_seed
    started = time.perf_counter()
    predictions = []
    for relative_path, digest in zip(relative_paths, content_hashes, strict=True):
        image = load_images(Path(image_dir), [relative_path])[0]
        variations = None
        if settings.mode == "difftpt":
            variations = cached_variations(generator, variation_cache_dir, [image], [digest],
                                           [per_image_seed(generation_seed, digest)], settings.n_generated_views)[0]
        predictions.append(reference_tune_and_predict(tuner, backbone,
                                                      image_views(backbone, settings, image, digest, variations)))
    if not predictions:
        raise ValueError("no test images to tune on")
    views = settings.n_views + settings.n_generated_views
    return TestTimeResult(
        log_probabilities=torch.stack([p.logits_after for p in predictions]).double().log_softmax(dim=-1).numpy(),
        log_probabilities_before=torch.stack([p.logits_before for p in predictions]).double().log_softmax(
            dim=-1).numpy(),
        views_kept=[p.views_kept for p in predictions], loss_before=[p.loss_before for p in predictions],
        loss_after=[p.loss_after for p in predictions], seconds=time.perf_counter() - started,
        encoded_views=len(predictions) * (views * settings.steps + 1))


class RolledCopies:
    """DiffTPT's generator stood in for by something cheap and deterministic: each variation is the source image
    rolled by a seeded offset of up to 3 pixels (the benchmark times tuning, not diffusion)."""

    provenance = GenerationProvenance("rolled-copies", "bench_stand_in", "bench.testtime.RolledCopies", "0" * 64,
                                      0, None, None, 0)

    def generate(self, images: Sequence[Image.Image], seeds: Sequence[int],
                 num_variations: int) -> list[list[Image.Image]]:
        made = []
        for image, seed in zip(images, seeds, strict=True):
            rng = np.random.default_rng(seed)
            array = np.asarray(image.convert("RGB"))
            made.append([Image.fromarray(np.roll(array, tuple(int(s) for s in rng.integers(-3, 4, 2)), axis=(0, 1)))
                         for _ in range(num_variations)])
        return made


# ------------------------------------------------------------------------------------------------- checks
def compare_predictions(expected: TestTimeResult, actual: TestTimeResult, tolerance: float) -> dict[str, Any]:
    """How far `actual`'s tuned log-probabilities are from `expected`'s: max |difference|, argmax agreement, and
    whether they agree (every difference within `tolerance`; an argmax may then differ only at a near-tie, where
    the expected top two are within 2 x tolerance)."""
    expected_log, actual_log = expected.log_probabilities, actual.log_probabilities
    if expected_log.shape != actual_log.shape:
        raise ValueError(f"log-probabilities of shapes {expected_log.shape} and {actual_log.shape}")
    difference = float(np.abs(expected_log - actual_log).max())
    agree = expected_log.argmax(axis=1) == actual_log.argmax(axis=1)
    top_two = np.sort(expected_log, axis=1)[:, -2:] if expected_log.shape[1] > 1 else None
    near_tie = (top_two[:, 1] - top_two[:, 0] <= 2 * tolerance) if top_two is not None else np.zeros_like(agree)
    return {"max_abs_log_probability_difference": difference, "argmax_agreement": float(agree.mean()),
            "argmax_disagreements": int((~agree).sum()), "n_images": int(agree.size), "tolerance": tolerance,
            "passed": bool(difference <= tolerance and np.all(agree | near_tie))}


# -------------------------------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class TestTimeBenchOptions:
    __test__ = False  # not a pytest test class, despite its name

    workspace: Path = field(default_factory=default_workspace_root)
    architectures: tuple[str, ...] = ("tiny-clip", "ViT-B-16")
    images: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_IMAGES))  # architecture -> test images
    dataset: str = "Shapes"
    mode: str = "tpt"
    settings: dict[str, Any] = field(default_factory=dict)  # overrides of the mode's published settings
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")
    repeats: int = 3
    num_threads: int | None = None
    output: Path | None = DEFAULT_OUTPUT
    seed: int = 0  # the random weights of a backbone built here
    record: bool = True  # write the runs to the workspace's warehouse

    def image_count(self, architecture: str) -> int:
        return self.images.get(architecture, min(self.images.values(), default=1))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def first_images(workspace: Workspace, scratch: Path, dataset: str, count: int,
                 templates: list[str] | None) -> BenchImages:
    """The first `count` images in file order, one class after another (bench.inputs.resolve_images)."""
    images = resolve_images(workspace, scratch, dataset, 1, templates)
    if len(images.labels) < count:
        per_class = math.ceil(count / max(1, len(images.classnames)))
        images = resolve_images(workspace, scratch, dataset, per_class, templates)
    chosen = min(count, len(images.labels))
    return BenchImages(images.dataset, images.source, images.image_dir, images.relative_paths[:chosen],
                       images.content_hashes[:chosen], images.labels[:chosen], images.classnames, images.templates)


def measure_architecture(options: TestTimeBenchOptions, architecture: str, workspace: Workspace, scratch: Path,
                         templates: list[str] | None) -> dict[str, Any]:
    """Every variant on one architecture: warm the caches, then interleaved timed repeats, then the checks."""
    from models.backbones.loader import load_backbone
    from models.experiments import build_classifier

    from bench.measure import current_rss_mb, peak_rss_mb, reset_peak_rss

    device = torch.device(options.device)
    load_before = machine_load_warning()
    started_at = datetime.now(UTC)
    reset_peak_rss()
    rss_before = current_rss_mb() or 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bench_backbone = resolve_backbone(workspace, scratch, seed=options.seed, architecture=architecture)
    backbone = load_backbone(bench_backbone.spec(), device=device)
    images = first_images(workspace, scratch / architecture, options.dataset, options.image_count(architecture),
                          templates)
    settings = published_settings(options.mode, options.settings)
    classifier = build_classifier(backbone.model, backbone.tokenizer, "coop", {"context_init": settings.context_init},
                                  images.classnames, images.templates)
    tuner = TestTimeTuner(classifier, settings, device)  # one tuner for all: it is reset before every image
    generator = RolledCopies() if settings.mode == "difftpt" else None
    variation_cache = scratch / architecture / "variations"
    feature_cache = scratch / architecture / "features"
    common = (backbone, Path(images.image_dir), images.relative_paths, images.content_hashes)

    runs: dict[str, Callable[[], TestTimeResult]] = {
        "batched-cached": lambda: tune_test_images(tuner, True, *common, generator=generator,
                                                   variation_cache_dir=variation_cache,
                                                   feature_cache_dir=feature_cache),
        "batched": lambda: tune_test_images(tuner, True, *common, generator=generator,
                                            variation_cache_dir=variation_cache),
        "reference": lambda: reference_tune_test_images(tuner, *common, generator=generator,
                                                        variation_cache_dir=variation_cache),
    }
    print(f"{architecture}: {len(images.labels)} images, {settings.n_views + settings.n_generated_views} views, "
          f"{settings.steps} step(s); warming the caches", file=sys.stderr, flush=True)
    started = time.perf_counter()
    runs["batched-cached"]()  # fills the feature cache (and, for DiffTPT, the variation cache)
    warm_seconds = time.perf_counter() - started

    timings: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    outputs: dict[str, list[TestTimeResult]] = {variant: [] for variant in VARIANTS}
    for repeat in range(options.repeats):
        shift = repeat % len(VARIANTS)
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            _synchronize(device)
            started = time.perf_counter()
            result = runs[variant]()
            _synchronize(device)
            timings[variant].append(time.perf_counter() - started)
            outputs[variant].append(result)
            print(f"  {architecture} repeat {repeat + 1}/{options.repeats} {variant}: "
                  f"{timings[variant][-1]:.2f} s", file=sys.stderr, flush=True)

    cached_encoded = [result.encoded_views for result in outputs["batched-cached"]]
    if any(cached_encoded):
        raise BenchmarkFailed(f"{architecture}: the warm feature cache still encoded {cached_encoded} views in the "
                              "timed passes; nothing was written")
    tolerance = FP32_TOLERANCE if tuner.precision.autocast_dtype is None else AUTOCAST_TOLERANCE
    batched = outputs["batched"][0]
    check = {"reference_vs_batched": compare_predictions(batched, outputs["reference"][0], tolerance),
             "cached_vs_batched": compare_predictions(batched, outputs["batched-cached"][0], tolerance),
             "repeats_identical": all(np.array_equal(r.log_probabilities, results[0].log_probabilities)
                                      for results in outputs.values() for r in results)}
    failed = [name for name in ("reference_vs_batched", "cached_vs_batched") if not check[name]["passed"]]
    if failed:
        raise BenchmarkFailed(f"{architecture}: the variants do not predict alike ({', '.join(failed)}: "
                              f"{ {name: check[name] for name in failed} }); nothing was written")

    n_images = len(images.labels)
    variants = {}
    for variant in VARIANTS:
        seconds = statistics.median(timings[variant])
        # the fastest repeat too: on a shared CPU, other work only ever slows a repeat down
        variants[variant] = {"images_per_second": n_images / seconds, "seconds": seconds,
                             "images_per_second_fastest_repeat": n_images / min(timings[variant]),
                             "timings_seconds": [round(t, 5) for t in timings[variant]],
                             "views_encoded_per_pass": outputs[variant][0].encoded_views}
    speed = {variant: variants[variant]["images_per_second"] for variant in VARIANTS}
    speedups = {f"{variant} over {BASELINE}": speed[variant] / speed[BASELINE]
                for variant in VARIANTS if variant != BASELINE}
    speedups["batched-cached over batched"] = speed["batched-cached"] / speed["batched"]
    return {
        "architecture": architecture,
        "backbone": {"name": bench_backbone.name, "weights_source": bench_backbone.weights_source,
                     "weights_sha256": backbone.weights_sha256},
        "images": {"dataset": images.dataset, "source": images.source, "n_images": n_images,
                   "n_classes": len(images.classnames), "relative_paths": images.relative_paths},
        "views_per_image": settings.n_views + settings.n_generated_views,
        "variants": variants,
        "speedups": speedups,
        "check": check,
        "cache_warm_seconds": round(warm_seconds, 4),
        "load_average_1min_before": load_before,
        "load_average_1min_after": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "started_at": started_at.isoformat(), "finished_at": datetime.now(UTC).isoformat(),
        "memory": {"peak_rss_mb": peak_rss_mb(), "rss_delta_mb": peak_rss_mb() - rss_before,
                   "peak_cuda_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None},
    }


def run_benchmark(options: TestTimeBenchOptions) -> dict[str, Any]:
    """Measure every architecture, then write the JSON, or, if any measurement or check failed, nothing. Torch's
    thread count is set for the run (`num_threads`) and restored after it."""
    threads_before = torch.get_num_threads()
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    try:
        result = _measure_everything(options)
    finally:
        torch.set_num_threads(threads_before)
    if options.record:
        from models.warehouse import workspace_warehouse_of

        warehouse = workspace_warehouse_of(Workspace(Path(options.workspace)))
        runs = warehouse_runs(result)
        warehouse.record_benchmarks(runs)
        result["warehouse"] = f"{warehouse.address}: runs {', '.join(run.bench_run_id for run, _ in runs)}"
    if options.output is not None:
        _write_json_atomically(Path(options.output), result)
    return result


def warehouse_runs(result: dict[str, Any]) -> list[tuple[Any, list[Any]]]:
    """One `test-time` benchmark run per architecture, as the warehouse records it."""
    from models.warehouse import BenchmarkRow, BenchmarkRun

    runs = []
    for entry in result["architectures"]:
        images = entry["images"]
        run = BenchmarkRun(
            bench_run_id=f"{result['bench_run_id']}-{entry['architecture']}".replace("/", "-"),
            started_at=datetime.fromisoformat(entry["started_at"]),
            finished_at=datetime.fromisoformat(entry["finished_at"]), git_commit=result["git_commit"],
            code_version=result["code_version"], device=result["device"], torch_version=result["torch_version"],
            backbone=entry["backbone"]["name"], backbone_weights_sha256=entry["backbone"]["weights_sha256"],
            weights_source=entry["backbone"]["weights_source"],
            dataset=f"{images['dataset']} ({images['n_images']} test images, {images['n_classes']} classes; "
                    f"{images['source']})",
            benchmark="test-time", load_average=entry["load_average_1min_before"],
        )
        rows = [BenchmarkRow(
            method=result["mode"], variant=variant, batch_size=entry["views_per_image"], n_images=images["n_images"],
            seconds=figures["seconds"], images_per_second=figures["images_per_second"],
            peak_rss_mb=entry["memory"]["peak_rss_mb"], rss_delta_mb=entry["memory"]["rss_delta_mb"],
            peak_cuda_mb=entry["memory"]["peak_cuda_mb"],
            baseline_variant=None if variant == BASELINE else BASELINE,
            details={**figures, "settings": result["settings"], "check": entry["check"],
                     "memory": "the whole process's over this architecture's measurements"})
            for variant, figures in entry["variants"].items()]
        runs.append((run, rows))
    return runs


def _measure_everything(options: TestTimeBenchOptions) -> dict[str, Any]:
    from models.catalog import load_catalog

    started_at = datetime.now(UTC)
    provenance = {"git_commit": git_commit(), "code_version": library_code_version()}  # the code that runs
    settings = published_settings(options.mode, options.settings)
    catalog = load_catalog()
    templates = (list(catalog.datasets[options.dataset].templates) if options.dataset in catalog.datasets
                 else None)
    workspace = Workspace(Path(options.workspace))
    with tempfile.TemporaryDirectory(prefix="promptlab-bench-testtime-") as scratch_name:
        architectures = [measure_architecture(options, architecture, workspace, Path(scratch_name), templates)
                         for architecture in options.architectures]
    return {
        "benchmark": "testtime",
        "bench_run_id": f"testtime-{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}",
        "started_at": str(started_at), "finished_at": str(datetime.now(UTC)),
        **provenance,
        "device": describe_device(options.device),
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version()},
        "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
        "mode": settings.mode, "settings": settings.as_dict(),
        "start": {"method": "coop", "context_init": settings.context_init,
                  "as": "models.testtime.start.starting_classifier's zero-shot start"},
        "generator": None if settings.mode == "tpt" else RolledCopies.provenance.as_dict(),
        "repeats": options.repeats,
        "variants": {"batched-cached": "tune_test_images, views' features read from a warm feature cache",
                     "batched": "tune_test_images, each image's views encoded once in one batch, no cache",
                     "reference": "the authors' loop: every view re-encoded at every step, one view per pass, "
                                  "then v0 encoded again"},
        "architectures": architectures,
        "warehouse": "not recorded (--no-warehouse)",
    }


# ------------------------------------------------------------------------------------------------ display
def format_table(result: dict[str, Any]) -> str:
    settings = result["settings"]
    lines = [f"test-time tuning ({result['mode']}: {settings['n_views'] + settings['n_generated_views']} views, "
             f"{settings['steps']} step(s)), test images per second, median of {result['repeats']} interleaved "
             "repeats",
             f"{'architecture':<14}{'variant':<16}{'images':>7}{'images/s':>11}{'s/image':>10}"
             f"{'views encoded':>15}{'over reference':>16}"]
    for entry in result["architectures"]:
        n_images = entry["images"]["n_images"]
        for variant, figures in entry["variants"].items():
            speedup = entry["speedups"].get(f"{variant} over {BASELINE}")
            lines.append(f"{entry['architecture']:<14}{variant:<16}{n_images:>7}{figures['images_per_second']:>11.3f}"
                         f"{figures['seconds'] / n_images:>10.2f}{figures['views_encoded_per_pass']:>15}"
                         f"{'' if speedup is None else f'{speedup:.2f}x':>16}")
        reference = entry["check"]["reference_vs_batched"]
        lines.append(f"  {entry['architecture']} ({entry['backbone']['weights_source']}): reference vs batched max "
                     f"|d log-prob| {reference['max_abs_log_probability_difference']:.2e}, argmax agreement "
                     f"{reference['argmax_agreement']:.0%}; cached vs batched max |d| "
                     f"{entry['check']['cached_vs_batched']['max_abs_log_probability_difference']:.2e}; "
                     f"1-min load {entry['load_average_1min_before']} -> {entry['load_average_1min_after']}")
    lines.append(f"device: {result['device']}; torch {result['torch_version']}; commit {result['git_commit']}")
    return "\n".join(lines)


def _key_value(text: str) -> tuple[str, Any]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_options(argv: list[str] | None = None) -> TestTimeBenchOptions:
    defaults = TestTimeBenchOptions()
    parser = argparse.ArgumentParser(prog="python -m bench.testtime", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=defaults.workspace)
    parser.add_argument("--architectures", default=",".join(defaults.architectures),
                        help="comma-separated open_clip architectures (tiny-clip: the workspace's pretrained one if "
                             "present; any other with seeded random weights)")
    parser.add_argument("--images", type=_key_value, action="append", default=[], metavar="ARCHITECTURE=COUNT",
                        help=f"test images per architecture (default {DEFAULT_IMAGES}; others: the smallest)")
    parser.add_argument("--dataset", default=defaults.dataset)
    parser.add_argument("--mode", choices=TEST_TIME_MODES, default=defaults.mode,
                        help="tpt (default) or difftpt (with a deterministic stand-in generator)")
    parser.add_argument("--setting", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="override a published setting, e.g. n_views=16 or steps=2 (value parsed as JSON)")
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-warehouse", action="store_true", help="do not write to the workspace's warehouse")
    parser.add_argument("--output", type=Path, default=defaults.output)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here (torch {torch.__version__}, built for "
                     f"CUDA {torch.version.cuda or 'none'}); use --device cpu")
    images = dict(DEFAULT_IMAGES)
    for architecture, count in args.images:
        if not isinstance(count, int) or count < 1:
            parser.error(f"--images {architecture}={count}: expected a positive integer")
        images[architecture] = count
    settings = dict(args.setting)
    try:
        published_settings(args.mode, settings)
    except (ValueError, TypeError) as error:
        parser.error(f"--setting: {error}")
    return TestTimeBenchOptions(
        workspace=args.workspace, architectures=tuple(a.strip() for a in args.architectures.split(",") if a.strip()),
        images=images, dataset=args.dataset, mode=args.mode, settings=settings, device=args.device,
        repeats=args.repeats, num_threads=args.threads, output=args.output, record=not args.no_warehouse,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    try:
        result = run_benchmark(options)
    except BenchmarkFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_table(result))
    print(f"bench run {result['bench_run_id']} written to {options.output or 'nowhere (--output not set)'}; "
          f"warehouse: {result['warehouse']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
