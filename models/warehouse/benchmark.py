"""Benchmark rows (bench/: training throughput, zero-shot evaluation against CLIP_benchmark, test-time tuning) and
their table and view."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl

from models.warehouse.records import (RUN_ID_PATTERN, as_utc_naive, canonical_json, is_finite_number,
                                      is_non_negative_integer)

# ------------------------------------------------------------------------------------------------ benchmarks
# `benchmark_results`: one row per measurement of a benchmark run, each carrying the run's benchmark, provenance
# (time, git commit, code version, device, torch version, backbone and weights hash) and the machine's 1-minute
# load average when it started, so a row read alone says what was measured where and how busy the machine was.
# `latest_benchmark`: the rows of the most recent run of each benchmark on each backbone, device and dataset, with
# each row's speed-up over its baseline variant of the same method (cached over re-encoded, batched over
# per-image, PromptLab over CLIP_benchmark, ...) and whether that speed-up meets the row's target.
# benchmark -> the variants its rows may measure
BENCHMARKS = {
    # bench/throughput.py: training images/s of every method
    "training": ("cached", "re-encoded", "image-prompted", "batched", "per-image"),
    # bench/clip_benchmark_compare.py: zero-shot evaluation images/s, PromptLab cold and warm against CLIP_benchmark
    "zero-shot-evaluation": ("promptlab-cold", "promptlab-warm", "clip-benchmark"),
    # bench/testtime.py: test-time tuning test images/s against the authors' reference-style loop
    "test-time": ("batched-cached", "batched", "reference"),
    # bench/thousand_classes.py: one training step at 1000 classes, text passes chunked against one pass of all
    "thousand-classes": ("chunked", "unchunked"),
    # bench/dataset_scale.py: the near-duplicate search against the exhaustive comparison, and the index build
    "dataset-scale": ("search", "exhaustive", "index-build"),
    # bench/text_padding.py: a training step's text work with the padding after end-of-text cut, against the whole context
    "text-padding": ("padding-cut", "whole-context"),
    # bench/baseline_training.py: each few-shot baseline's training on its published schedule, beside CoOp's
    "baseline-training": ("published-schedule",),
    # bench/apt_cost.py: a forward+backward step of APT's approximated prompts against deep VPT's at the same length
    "prompt-attention": ("apt", "deep-vpt"),
}
BENCHMARK_VARIANTS = tuple(dict.fromkeys(variant for variants in BENCHMARKS.values() for variant in variants))

BENCHMARK_SCHEMA = """
CREATE TABLE IF NOT EXISTS benchmark_results (
    bench_run_id VARCHAR NOT NULL,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP NOT NULL,
    git_commit VARCHAR,
    code_version VARCHAR,
    device VARCHAR NOT NULL,
    torch_version VARCHAR NOT NULL,
    backbone VARCHAR NOT NULL,
    backbone_weights_sha256 VARCHAR NOT NULL,
    weights_source VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    variant VARCHAR NOT NULL,
    batch_size INTEGER NOT NULL,
    n_images INTEGER NOT NULL,
    seconds DOUBLE NOT NULL,
    images_per_second DOUBLE NOT NULL,
    peak_rss_mb DOUBLE NOT NULL,
    rss_delta_mb DOUBLE NOT NULL,
    peak_cuda_mb DOUBLE,
    baseline_variant VARCHAR,
    target_speedup DOUBLE,
    details JSON NOT NULL,
    benchmark VARCHAR NOT NULL DEFAULT 'training',
    load_average DOUBLE,
    PRIMARY KEY (bench_run_id, method, variant)
);
-- warehouses written before benchmarks were named held the training benchmark only
ALTER TABLE benchmark_results ADD COLUMN IF NOT EXISTS benchmark VARCHAR DEFAULT 'training';
ALTER TABLE benchmark_results ADD COLUMN IF NOT EXISTS load_average DOUBLE;
CREATE OR REPLACE VIEW latest_benchmark AS
    WITH ranked AS (
        SELECT bench_run_id, row_number() OVER (
                   PARTITION BY benchmark, backbone, device, dataset
                   ORDER BY finished_at DESC, bench_run_id DESC) AS recency
        FROM (SELECT DISTINCT bench_run_id, benchmark, backbone, device, dataset, finished_at
              FROM benchmark_results)
    )
    SELECT b.*,
           b.images_per_second / base.images_per_second AS speedup,
           CASE WHEN b.target_speedup IS NULL OR base.images_per_second IS NULL THEN NULL
                ELSE b.images_per_second / base.images_per_second >= b.target_speedup END AS meets_target
    FROM benchmark_results AS b
    LEFT JOIN benchmark_results AS base
        ON base.bench_run_id = b.bench_run_id AND base.method = b.method AND base.variant = b.baseline_variant
    WHERE b.bench_run_id IN (SELECT bench_run_id FROM ranked WHERE recency = 1);
"""


@dataclass(frozen=True)
class BenchmarkRun:
    """Provenance shared by every measurement of one benchmark run."""

    bench_run_id: str
    started_at: datetime
    finished_at: datetime
    git_commit: str | None
    code_version: str | None
    device: str  # e.g. "cpu (2 threads)", "cuda (NVIDIA H100)"
    torch_version: str
    backbone: str
    backbone_weights_sha256: str
    weights_source: str  # where the weights came from, e.g. "workspace" or "random (seed 0)"
    dataset: str
    benchmark: str = "training"  # one of BENCHMARKS
    load_average: float | None = None  # the machine's 1-minute load average when the run started


@dataclass(frozen=True)
class BenchmarkRow:
    """One measurement: a method in one variant (one of BENCHMARKS[run.benchmark])."""

    method: str
    variant: str
    batch_size: int
    n_images: int  # images processed in one timed repeat
    seconds: float  # median time of one repeat
    images_per_second: float
    peak_rss_mb: float  # peak resident memory of the measuring process
    rss_delta_mb: float  # that peak minus the process's resident memory before the measurement
    peak_cuda_mb: float | None = None  # torch.cuda.max_memory_allocated, on a GPU
    baseline_variant: str | None = None  # the variant of the same method this one's speed-up is taken over
    target_speedup: float | None = None  # the speed-up over baseline_variant this variant should reach
    details: dict = field(default_factory=dict)  # epochs, repeats, all timings, ...


def _validate_benchmark_run(run: BenchmarkRun) -> None:
    if not isinstance(run, BenchmarkRun):
        raise ValueError(f"run: expected a BenchmarkRun, got {type(run).__name__}")
    for name in ("bench_run_id", "device", "torch_version", "backbone", "backbone_weights_sha256",
                 "weights_source", "dataset"):
        value = getattr(run, name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"run.{name}: expected a non-empty string, got {value!r}")
    for name in ("git_commit", "code_version"):
        value = getattr(run, name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"run.{name}: expected a string or None, got {value!r}")
    if run.benchmark not in BENCHMARKS:
        raise ValueError(f"run.benchmark: {run.benchmark!r} is not one of {tuple(BENCHMARKS)}")
    if run.load_average is not None and (not is_finite_number(run.load_average) or run.load_average < 0):
        raise ValueError(f"run.load_average: expected a finite number >= 0 or None, got {run.load_average!r}")
    if not RUN_ID_PATTERN.match(run.bench_run_id):
        raise ValueError(f"run.bench_run_id: {run.bench_run_id!r} may only hold letters, digits and . _ + = -")
    started_at = as_utc_naive(run.started_at, "run.started_at")
    if as_utc_naive(run.finished_at, "run.finished_at") < started_at:
        raise ValueError(f"run.finished_at: {run.finished_at} is before run.started_at {run.started_at}")


def benchmark_frame(run: BenchmarkRun, rows: Sequence[BenchmarkRow]) -> pl.DataFrame:
    """The rows as a typed frame, after checking every field (ValueError naming rows[i].field)."""
    _validate_benchmark_run(run)
    if not rows:
        raise ValueError("rows: a benchmark run needs at least one measurement")
    variants_by_method: dict[str, set[str]] = {}
    for index, row in enumerate(rows):
        where = f"rows[{index}]"
        if not isinstance(row, BenchmarkRow):
            raise ValueError(f"{where}: expected a BenchmarkRow, got {type(row).__name__}")
        if not isinstance(row.method, str) or not row.method.strip():
            raise ValueError(f"{where}.method: expected a non-empty string, got {row.method!r}")
        variants = BENCHMARKS[run.benchmark]
        if row.variant not in variants:
            raise ValueError(f"{where}.variant: {row.variant!r} is not one of the {run.benchmark} benchmark's "
                             f"{variants}")
        for name in ("batch_size", "n_images"):
            value = getattr(row, name)
            if not is_non_negative_integer(value) or value == 0:
                raise ValueError(f"{where}.{name}: expected a positive integer, got {value!r}")
        for name in ("seconds", "images_per_second"):
            value = getattr(row, name)
            if not is_finite_number(value) or value <= 0:
                raise ValueError(f"{where}.{name}: expected a positive finite number, got {value!r}")
        for name, required in (("peak_rss_mb", True), ("rss_delta_mb", True), ("peak_cuda_mb", False),
                               ("target_speedup", False)):
            value = getattr(row, name)
            if value is None and not required:
                continue
            if not is_finite_number(value) or (value < 0 and name != "rss_delta_mb"):
                raise ValueError(f"{where}.{name}: expected a finite number"
                                 f"{'' if name == 'rss_delta_mb' else ' >= 0'}, got {value!r}")
        if row.baseline_variant is not None and (row.baseline_variant not in variants
                                                 or row.baseline_variant == row.variant):
            raise ValueError(f"{where}.baseline_variant: {row.baseline_variant!r} must be another of {variants}")
        if row.target_speedup is not None and row.baseline_variant is None:
            raise ValueError(f"{where}.target_speedup: a target needs a baseline_variant to compare with")
        if not isinstance(row.details, dict):
            raise ValueError(f"{where}.details: expected a dict, got {type(row.details).__name__}")
        canonical_json(row.details, f"{where}.details")
        seen = variants_by_method.setdefault(row.method, set())
        if row.variant in seen:
            raise ValueError(f"{where}: duplicate measurement of method {row.method!r}, variant {row.variant!r}")
        seen.add(row.variant)
    for index, row in enumerate(rows):
        if row.baseline_variant is not None and row.baseline_variant not in variants_by_method[row.method]:
            raise ValueError(f"rows[{index}].baseline_variant: no {row.baseline_variant!r} measurement of method "
                             f"{row.method!r} in this run")
    shared = {
        "bench_run_id": run.bench_run_id,
        "started_at": as_utc_naive(run.started_at, "run.started_at"),
        "finished_at": as_utc_naive(run.finished_at, "run.finished_at"),
        "git_commit": run.git_commit, "code_version": run.code_version, "device": run.device,
        "torch_version": run.torch_version, "backbone": run.backbone,
        "backbone_weights_sha256": run.backbone_weights_sha256, "weights_source": run.weights_source,
        "dataset": run.dataset, "benchmark": run.benchmark,
        "load_average": None if run.load_average is None else float(run.load_average),
    }
    records = [
        {**shared, "method": row.method, "variant": row.variant, "batch_size": int(row.batch_size),
         "n_images": int(row.n_images), "seconds": float(row.seconds),
         "images_per_second": float(row.images_per_second), "peak_rss_mb": float(row.peak_rss_mb),
         "rss_delta_mb": float(row.rss_delta_mb),
         "peak_cuda_mb": None if row.peak_cuda_mb is None else float(row.peak_cuda_mb),
         "baseline_variant": row.baseline_variant,
         "target_speedup": None if row.target_speedup is None else float(row.target_speedup),
         "details": canonical_json(row.details, "details")}
        for row in rows
    ]
    return pl.DataFrame(records, schema={
        "bench_run_id": pl.String, "started_at": pl.Datetime("us"), "finished_at": pl.Datetime("us"),
        "git_commit": pl.String, "code_version": pl.String, "device": pl.String, "torch_version": pl.String,
        "backbone": pl.String, "backbone_weights_sha256": pl.String, "weights_source": pl.String,
        "dataset": pl.String, "method": pl.String, "variant": pl.String, "batch_size": pl.Int32,
        "n_images": pl.Int32, "seconds": pl.Float64, "images_per_second": pl.Float64, "peak_rss_mb": pl.Float64,
        "rss_delta_mb": pl.Float64, "peak_cuda_mb": pl.Float64, "baseline_variant": pl.String,
        "target_speedup": pl.Float64, "details": pl.String, "benchmark": pl.String, "load_average": pl.Float64,
    })
