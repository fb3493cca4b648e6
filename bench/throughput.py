"""Training throughput and peak memory of every registered prompt method: `make bench` or
`.venv/bin/python -m bench.throughput` (from the repository root; `--help` lists the options).

One run measures, side by side on the embedded backbone and embedded images (bench.inputs):
a) training images/s of every method in the registry that trains by gradient (so methods added later are
   included), with its published batch size (assets_catalog/methods.yaml) for a few epochs: frozen-image-tower
   methods "cached" (features from the warm feature cache) and "re-encoded" (images through the frozen image
   tower at every step); methods that prompt the image tower "image-prompted". Closed-form methods
   (`trained_by_gradient` False, e.g. the linear probe) and methods that train nothing are listed as skipped.
b) peak memory of each measurement: every measurement runs in a fresh subprocess (`--child`), whose peak RSS and
   peak-minus-baseline are recorded (and torch.cuda.max_memory_allocated on a GPU);
c) CoCoOp's batched forward+backward over B images against a loop of one call per image, after checking that
   both give the same logits and gradients within 1e-5; both run in one process with their timed repeats
   interleaved, so machine noise hits both alike (each still gets its own peak-memory phase).

Targets, reported and never asserted: the cache at least 5x faster than re-encoding for CoOp, batched CoCoOp at
least 3x faster than the per-image loop. Nothing is written unless every measurement succeeded; then the whole
run goes to the warehouse in one transaction (`Warehouse.record_benchmark`: table `benchmark_results`, view
`latest_benchmark`) and to bench/results/latest.json, and the table is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench.inputs import resolve_backbone, resolve_images
from bench.measure import (COCOOP_PAIR, BenchPlan, Measurement, cached_training_features, load_bench_backbone,
                           run_measurement)
from models.catalog import load_catalog
from models.precision import compute_description, precision_for
from models.prompting.methods import METHODS
from models.prompting.training import OptimizationConfig
from models.provenance import PACKAGE_ROOT, git_commit, library_code_version
from models.warehouse import BenchmarkRow, BenchmarkRun, workspace_warehouse_of
from models.workspace import Workspace, default_workspace_root

DEFAULT_OUTPUT = PACKAGE_ROOT / "bench" / "results" / "latest.json"
# (method, variant) -> the speed-up over its baseline variant that variant should reach (reported, not asserted)
TARGET_SPEEDUPS = {("coop", "cached"): 5.0, ("cocoop", "batched"): 3.0}
BASELINE_VARIANT = {"cached": "re-encoded", "batched": "per-image"}
CHILD_TIMEOUT_SECONDS = 900


class BenchmarkFailed(RuntimeError):
    """A measurement failed; nothing of the run was recorded."""


@dataclass(frozen=True)
class BenchOptions:
    workspace: Path = field(default_factory=default_workspace_root)
    architecture: str = "tiny-clip"  # another open_clip architecture runs with seeded random weights
    dataset: str = "Shapes"
    images_per_class: int = 16
    methods: tuple[str, ...] | None = None  # None: every registered method
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")
    epochs: int = 2
    repeats: int = 3
    min_seconds: float = 1.0
    max_epochs: int = 50
    cocoop_batch: int = 32
    isolate: bool = True  # one fresh subprocess per measurement (peak memory per measurement)
    record: bool = True  # write to the workspace's warehouse
    output: Path | None = DEFAULT_OUTPUT
    num_threads: int | None = None


@dataclass
class BenchResult:
    run: BenchmarkRun
    rows: list[BenchmarkRow]
    skipped: dict[str, str]
    checks: dict[str, Any]
    inputs: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        run = asdict(self.run)
        run["started_at"], run["finished_at"] = str(self.run.started_at), str(self.run.finished_at)
        rows = [asdict(row) for row in self.rows]
        by_key = {(row.method, row.variant): row for row in self.rows}
        speedups = []
        for row in self.rows:
            baseline = by_key.get((row.method, row.baseline_variant)) if row.baseline_variant else None
            if baseline is not None:
                speedup = row.images_per_second / baseline.images_per_second
                speedups.append({"method": row.method, "variant": row.variant, "over": row.baseline_variant,
                                 "speedup": speedup, "target": row.target_speedup,
                                 "meets_target": None if row.target_speedup is None
                                 else speedup >= row.target_speedup})
        return {"run": run, "rows": rows, "speedups": speedups, "skipped": self.skipped, "checks": self.checks,
                "inputs": self.inputs}


# ----------------------------------------------------------------------------------------------- planning
def fit_prompt_depths(parameters_type: type, parameters: dict, text_layers: int, vision_layers: int,
                      unqualified_limit: int) -> tuple[dict, dict]:
    """The parameters with every `*prompt_depth` lowered to the layers of the tower it prompts (the published
    depths, 9 or 12, exceed the embedded backbone's towers); the tower is named by a text_/vision_ prefix, and an
    unprefixed depth (VPT-deep's vision prompts, MaPLe's coupled prompts) is lowered to `unqualified_limit`.
    Returns (parameters, {name: [was, now]})."""
    fitted, adjusted = dict(parameters), {}
    for field_info in dataclasses.fields(parameters_type):
        if not field_info.name.endswith("prompt_depth"):
            continue
        value = fitted.get(field_info.name, field_info.default)
        limit = (vision_layers if field_info.name.startswith("vision") else
                 text_layers if field_info.name.startswith("text") else unqualified_limit)
        if isinstance(value, int) and value > limit:
            fitted[field_info.name] = limit
            adjusted[field_info.name] = [value, limit]
    return fitted, adjusted


def plan_measurements(catalog_methods: dict[str, dict], backbone, classnames: list[str], templates: list[str],
                      selected: tuple[str, ...] | None) -> tuple[list[Measurement], dict[str, str]]:
    """Every registered method's measurements (iterating the registry), and the methods skipped with why."""
    from models.experiments import build_classifier
    from models.prompting.deep_prompts import PromptedVisionTower
    from models.prompting.text_tower import TextTower

    text_layers = len(TextTower(backbone.model).transformer.resblocks)
    vision_layers = PromptedVisionTower(backbone.model).n_layers

    if selected is not None:
        unknown = sorted(set(selected) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; registered: {sorted(METHODS)}")
    measurements, skipped = [], {}
    for name, spec in sorted(METHODS.items()):
        if selected is not None and name not in selected:
            continue
        if not spec.trains_prompts:
            skipped[name] = "learns nothing (no training to time)"
            continue
        entry = catalog_methods.get(name, {})
        # An unprefixed depth may prompt one tower (VPT-deep) or both (MaPLe): the deeper limit first, then both.
        for unqualified_limit in sorted({text_layers, vision_layers}, reverse=True):
            parameters, adjusted = fit_prompt_depths(spec.parameters_type, dict(entry.get("parameters") or {}),
                                                     text_layers, vision_layers, unqualified_limit)
            try:
                classifier = build_classifier(backbone.model, backbone.tokenizer, name, parameters, classnames,
                                              templates)
                break
            except ValueError:
                if unqualified_limit == min(text_layers, vision_layers):
                    raise
        if not classifier.trained_by_gradient:
            skipped[name] = "fitted in closed form (trained_by_gradient is False): no SGD loop to time"
            continue
        batch_size = int((entry.get("optimization") or {}).get("batch_size", OptimizationConfig.batch_size))
        variants = ("cached", "re-encoded") if spec.frozen_image_encoder else ("image-prompted",)
        notes = {"parameters": parameters, **({"depths_fitted_to_backbone": adjusted} if adjusted else {}),
                 **({} if "batch_size" in (entry.get("optimization") or {})
                    else {"batch_size": "OptimizationConfig default (no catalog entry)"})}
        measurements += [Measurement(name, variant, batch_size, parameters, notes) for variant in variants]
    return measurements, skipped


# ---------------------------------------------------------------------------------------------- execution
def run_benchmark(options: BenchOptions) -> BenchResult:
    """Measure everything, then record it all (warehouse + JSON) or, if any measurement failed, nothing."""
    started_at = datetime.now(UTC)
    bench_run_id = f"bench-{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    load_before = machine_load_warning()
    workspace = Workspace(Path(options.workspace))
    catalog = load_catalog()
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    with tempfile.TemporaryDirectory(prefix="promptlab-bench-") as scratch_name:
        scratch = Path(scratch_name)
        bench_backbone = resolve_backbone(workspace, scratch, architecture=options.architecture)
        templates = (list(catalog.datasets[options.dataset].templates) if options.dataset in catalog.datasets
                     else None)
        images = resolve_images(workspace, scratch, options.dataset, options.images_per_class, templates)
        plan = BenchPlan(
            backbone_name=bench_backbone.name, backbone_dir=bench_backbone.directory, device=options.device,
            images=images.as_dict(), cache_dir=str(scratch / "feature_cache"), epochs=options.epochs,
            repeats=options.repeats, min_seconds=options.min_seconds, max_epochs=options.max_epochs,
            cocoop_batch=options.cocoop_batch, num_threads=options.num_threads,
        )
        backbone = load_bench_backbone(plan)
        measurements, skipped = plan_measurements(catalog.methods, backbone, images.classnames, images.templates,
                                                  options.methods)
        checks: dict[str, Any] = {"load_average_1min_before": load_before}
        # Warm the cache once: the "cached" measurements then read it, as the pipeline's second run would.
        started = time.perf_counter()
        cached_training_features(plan, backbone)
        checks["cache_warm_seconds"] = round(time.perf_counter() - started, 4)
        if any(m.method == "cocoop" for m in measurements):
            # batched and per-image in one process, their equivalence checked there before timing
            parameters = next(m.parameters for m in measurements if m.method == "cocoop")
            measurements.append(Measurement("cocoop", COCOOP_PAIR, min(options.cocoop_batch, len(images.labels)),
                                            parameters, {"parameters": parameters}))
        if not measurements:
            raise BenchmarkFailed(f"nothing to measure among methods {options.methods or sorted(METHODS)}")
        plan_path = scratch / "plan.json"
        plan_path.write_text(json.dumps(asdict(plan)))
        results = []
        for measurement in measurements:
            print(f"measuring {measurement.method} ({measurement.variant}, batch {measurement.batch_size})",
                  file=sys.stderr, flush=True)
            if options.isolate:
                by_variant = _run_isolated(plan_path, measurement, scratch)
            else:
                by_variant = run_measurement(plan, measurement, backbone)
            for variant, result in by_variant.items():
                result["details"]["isolation"] = ("fresh subprocess" if options.isolate
                                                  else "in-process (peak memory is the whole process's)")
                results.append((dataclasses.replace(measurement, variant=variant), result))
    for measurement, result in results:
        if "equivalence" in result["details"]:
            checks[f"{measurement.method}_equivalence"] = result["details"]["equivalence"]
    measured = {(m.method, m.variant) for m, _ in results}
    rows = [
        BenchmarkRow(
            method=m.method, variant=m.variant, batch_size=m.batch_size, n_images=int(r["n_images"]),
            seconds=float(r["seconds"]), images_per_second=float(r["images_per_second"]),
            peak_rss_mb=float(r["peak_rss_mb"]), rss_delta_mb=float(r["rss_delta_mb"]),
            peak_cuda_mb=r["peak_cuda_mb"], baseline_variant=_baseline(m, measured),
            target_speedup=TARGET_SPEEDUPS.get((m.method, m.variant)) if _baseline(m, measured) else None,
            details={**r["details"], **m.notes},
        )
        for m, r in results
    ]
    run = BenchmarkRun(
        bench_run_id=bench_run_id, started_at=started_at, finished_at=datetime.now(UTC), git_commit=git_commit(),
        code_version=library_code_version(), device=describe_device(options.device),
        torch_version=torch.__version__, backbone=bench_backbone.name,
        backbone_weights_sha256=backbone.weights_sha256, weights_source=bench_backbone.weights_source,
        dataset=f"{images.dataset} ({len(images.labels)} training images, {len(images.classnames)} classes; "
                f"{images.source})",
        benchmark="training", load_average=load_before,
    )
    result = BenchResult(run, rows, skipped, checks, {"images_per_class": options.images_per_class,
                                                      "n_images": len(images.labels),
                                                      "n_classes": len(images.classnames)})
    if options.record:
        workspace_warehouse_of(workspace).record_benchmark(run, rows)
    if options.output is not None:
        _write_json_atomically(Path(options.output), result.as_dict())
    return result


def machine_load_warning() -> float | None:
    """The 1-minute load average before measuring; warns when other work is running. Torch's worker threads
    busy-wait, so on a shared CPU the figures swing wildly (a measured 0.2x to 41x for the same cache pair while a
    pipeline run was going): measure on an idle machine."""
    if not hasattr(os, "getloadavg"):
        return None
    load = round(os.getloadavg()[0], 2)
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: the machine is busy (1-minute load {load} on {os.cpu_count()} cores); throughput figures "
              "measured now are unreliable. Measure on an idle machine.", file=sys.stderr)
    return load


def _baseline(measurement: Measurement, measured: set[tuple[str, str]]) -> str | None:
    baseline = BASELINE_VARIANT.get(measurement.variant)
    return baseline if (measurement.method, baseline) in measured else None


def _run_isolated(plan_path: Path, measurement: Measurement, scratch: Path) -> dict[str, dict[str, Any]]:
    result_path = scratch / f"result-{measurement.method}-{measurement.variant.replace('+', '-')}.json"
    command = [sys.executable, "-m", "bench.throughput", "--child", str(plan_path),
               "--measurement", json.dumps(asdict(measurement)), "--result", str(result_path)]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                                             os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run(command, cwd=PACKAGE_ROOT, env=environment, capture_output=True, text=True,
                               timeout=CHILD_TIMEOUT_SECONDS)
    if completed.returncode != 0 or not result_path.exists():
        raise BenchmarkFailed(f"measurement {measurement.method} ({measurement.variant}) failed with exit code "
                              f"{completed.returncode}; nothing was recorded. Its output ended with:\n"
                              f"{(completed.stderr or completed.stdout)[-3000:]}")
    return json.loads(result_path.read_text())


def _child(plan_path: Path, measurement_json: str, result_path: Path) -> None:
    plan = BenchPlan(**json.loads(Path(plan_path).read_text()))
    measurement = Measurement(**json.loads(measurement_json))
    result = run_measurement(plan, measurement)
    _write_json_atomically(result_path, result)


def describe_device(device: str) -> str:
    """The device and the precision the training steps run at (models.precision), as the warehouse runs say it."""
    device = torch.device(device)
    if device.type == "cuda":
        return compute_description(device)
    return (f"cpu ({torch.get_num_threads()} threads, {platform.machine()}, {os.cpu_count()} cores), "
            f"{precision_for(device, training=True).name}")


def _write_json_atomically(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        temporary.write_text(json.dumps(value, indent=2, default=str) + "\n")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ display
def format_table(result: BenchResult) -> str:
    speedups = {(s["method"], s["variant"]): s for s in result.as_dict()["speedups"]}
    lines = [f"{'method':<14}{'variant':<16}{'batch':>6}{'images/s':>12}{'speed-up':>10}{'target':>14}"
             f"{'peak RSS MB':>13}{'delta MB':>10}"]
    for row in result.rows:
        speedup = speedups.get((row.method, row.variant))
        ratio = f"{speedup['speedup']:.2f}x" if speedup else ""
        target = (f"{row.target_speedup:g}x {'met' if speedup['meets_target'] else 'MISSED'}"
                  if speedup and row.target_speedup else "")
        lines.append(f"{row.method:<14}{row.variant:<16}{row.batch_size:>6}{row.images_per_second:>12.1f}"
                     f"{ratio:>10}{target:>14}{row.peak_rss_mb:>13.0f}{row.rss_delta_mb:>10.1f}")
    lines.append(f"device: {result.run.device}; torch {result.run.torch_version}; backbone {result.run.backbone} "
                 f"({result.run.weights_source}); {result.run.dataset}")
    for name, reason in result.skipped.items():
        lines.append(f"skipped {name}: {reason}")
    return "\n".join(lines)


def parse_options(argv: list[str] | None = None) -> tuple[argparse.Namespace, BenchOptions]:
    defaults = BenchOptions()
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=defaults.workspace)
    parser.add_argument("--architecture", default=defaults.architecture,
                        help="open_clip architecture (default tiny-clip: the workspace's pretrained one if present; "
                             "any other is built with seeded random weights)")
    parser.add_argument("--dataset", default=defaults.dataset)
    parser.add_argument("--images-per-class", type=int, default=defaults.images_per_class)
    parser.add_argument("--methods", help="comma-separated method names (default: every registered method)")
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--min-seconds", type=float, default=defaults.min_seconds)
    parser.add_argument("--max-epochs", type=int, default=defaults.max_epochs)
    parser.add_argument("--cocoop-batch", type=int, default=defaults.cocoop_batch)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--in-process", action="store_true", help="no subprocess per measurement (faster; "
                                                                   "peak memory is then the whole process's)")
    parser.add_argument("--no-warehouse", action="store_true", help="do not write to the workspace's warehouse")
    parser.add_argument("--output", type=Path, default=defaults.output)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measurement", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("images_per_class", "epochs", "repeats", "max_epochs", "cocoop_batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    options = BenchOptions(
        workspace=args.workspace, architecture=args.architecture, dataset=args.dataset, images_per_class=args.images_per_class,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()) if args.methods else None,
        device=args.device, epochs=args.epochs, repeats=args.repeats, min_seconds=args.min_seconds,
        max_epochs=args.max_epochs, cocoop_batch=args.cocoop_batch, isolate=not args.in_process,
        record=not args.no_warehouse, output=args.output, num_threads=args.threads,
    )
    return args, options


def main(argv: list[str] | None = None) -> int:
    args, options = parse_options(argv)
    if args.child is not None:
        _child(args.child, args.measurement, args.result)
        return 0
    result = run_benchmark(options)
    print(format_table(result))
    where = [str(options.output)] if options.output else []
    if options.record:
        address = workspace_warehouse_of(Workspace(Path(options.workspace))).address
        where.append(f"{address} (benchmark_results, latest_benchmark)")
    print(f"bench run {result.run.bench_run_id} written to {' and '.join(where) or 'nowhere (--no-warehouse)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
