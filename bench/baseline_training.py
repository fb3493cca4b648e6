"""Training time of each few-shot baseline beside CoOp's, on the same 16-shot images: `make bench-baselines` or
`.venv/bin/python -m bench.baseline_training` (from the repository root; `--help` lists the options).

The anchor is the Tip-Adapter paper's Table 1 (ImageNet, 16 shots, RN50, one GPU): CoOp 200 epochs in 14 h 40 min,
CLIP-Adapter 200 epochs in 50 min, Tip-Adapter no training, Tip-Adapter-F 20 epochs in 5 min. Here every method
trains as its experiment would: its published schedule for 16 shots (assets_catalog/methods.yaml, through
`models.experiments.optimization_config`, so CLIP-LoRA runs its 500 x 16 steps), on its training views (a method's
view recipe, else the original and mirrored views), with the val images its selection policy asks for, through
`models.experiments.train_prompts` (the closed-form fits and the SGD loop alike). The views are encoded once into a
feature cache before any timing (as the pipeline's feature cache does; their encoding time is reported apart), so
the timed part is the training itself. Methods are timed in turns (every method once, then again), and the fastest
repeat of each is kept, so that load on the machine hits them alike; each figure is also given as a ratio to CoOp's.

Images: the first 20 training images per class of an embedded dataset (16 train, 4 val; `--shots`), from the workspace or
generated (bench.inputs); backbone: the workspace's pretrained tiny-clip, or its architecture with random weights
(`--architecture ViT-B-16` for a CLIP-sized proxy). Results go to the warehouse (`benchmark_results`, benchmark
`baseline-training`) and to bench/results/baseline-training-latest.json, and the table is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench.inputs import resolve_backbone, resolve_images
from bench.throughput import describe_device, machine_load_warning
from models.catalog import ExperimentConfig, load_catalog
from models.experiments import build_classifier, features_for_images, preprocessed_images, train_prompts
from models.experiments.training import optimization_config
from models.experiments.training_sets import TrainingSet
from models.prompting.methods import METHODS
from models.provenance import PACKAGE_ROOT, git_commit, library_code_version
from models.warehouse import BenchmarkRow, BenchmarkRun, workspace_warehouse_of
from models.workspace import Workspace, default_workspace_root

DEFAULT_OUTPUT = PACKAGE_ROOT / "bench" / "results" / "baseline-training-latest.json"
DEFAULT_METHODS = ("coop", "linear_probe", "tip_adapter", "tip_adapter_f", "clip_adapter", "taskres", "lp_plus_plus",
                   "clap", "clip_lora")
VARIANT = "published-schedule"


@dataclass
class Prepared:
    method: str
    training_set: TrainingSet
    experiment: ExperimentConfig
    encode_seconds: float
    published_epochs: int | None = None  # the method's published epochs when the run trains fewer (--epochs)


def split_train_val(labels: list[int], shots: int) -> tuple[list[int], list[int]]:
    """Positions of the first `shots` images of each class (train) and the rest (val: min(shots, 4) per class, as
    the few-shot val subset)."""
    seen: dict[int, int] = {}
    train, val = [], []
    for position, label in enumerate(labels):
        count = seen.get(label, 0)
        (train if count < shots else val).append(position)
        seen[label] = count + 1
    return train, val


def prepare(method: str, catalog, backbone, images, cache_dir: Path, shots: int,
            epochs: int | None = None) -> Prepared:
    """The method's training set as its experiment builds it (views, val images of its policy), views encoded;
    with `epochs`, an epoch-scheduled method trains that many epochs instead of its published number."""
    spec = METHODS[method]
    defaults = catalog.methods.get(method) or {}
    optimization = dict(defaults.get("optimization") or {})
    published = ExperimentConfig(key=f"bench-{method}", method=method, shots=shots, seed=1,
                                 parameters=dict(defaults.get("parameters") or {}), optimization=optimization)
    published_epochs = optimization_config(published).epochs
    if epochs is not None and optimization_config(published).steps is None:
        optimization = {**optimization, "epochs": epochs}
    experiment = ExperimentConfig(key=f"bench-{method}", method=method, shots=shots, seed=1,
                                  parameters=dict(defaults.get("parameters") or {}), optimization=optimization)
    recipe, policy = experiment.view_recipe, experiment.selection_policy
    train, val = split_train_val(images.labels, shots)
    image_dir = Path(images.image_dir)

    def inputs_of(positions: list[int], training: bool) -> torch.Tensor:
        paths = [images.relative_paths[p] for p in positions]
        hashes = [images.content_hashes[p] for p in positions]
        view_recipe = recipe if training else None
        if spec.frozen_image_encoder:
            return features_for_images(backbone, image_dir, paths, hashes, cache_dir,
                                       with_mirror=training and recipe is None, recipe=view_recipe)
        return preprocessed_images(backbone, image_dir, paths, with_mirror=training and recipe is None,
                                   recipe=view_recipe, content_hashes=hashes)

    started = time.perf_counter()
    view_inputs = inputs_of(train, training=True)
    validation = None
    if policy != "last":
        validation = (inputs_of(val, training=False), torch.tensor([images.labels[p] for p in val]))
    encode_seconds = time.perf_counter() - started
    training_set = TrainingSet(view_inputs, torch.tensor([images.labels[p] for p in train]),
                               validation=validation, selection=policy, selection_asked=policy)
    return Prepared(method, training_set, experiment, encode_seconds, published_epochs)


def train_once(prepared: Prepared, backbone, images) -> dict[str, Any]:
    classifier = build_classifier(backbone.model, backbone.tokenizer, prepared.method,
                                  prepared.experiment.parameters, images.classnames, images.templates)
    optimization = optimization_config(prepared.experiment)
    started = time.perf_counter()
    history = train_prompts(classifier, prepared.training_set, optimization, device=backbone.device)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps": history.steps, "epochs": len(history.epoch_losses),
            "optimization": {"epochs": optimization.epochs, "steps": optimization.steps,
                             "batch_size": optimization.batch_size, "optimizer": optimization.optimizer}}


def run_benchmark(options: argparse.Namespace) -> dict[str, Any]:
    started_at = datetime.now(UTC)
    load_before = machine_load_warning()
    workspace = Workspace(Path(options.workspace))
    catalog = load_catalog()
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    unknown = sorted(set(options.methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; registered: {sorted(METHODS)}")
    with tempfile.TemporaryDirectory(prefix="promptlab-bench-baselines-") as scratch_name:
        scratch = Path(scratch_name)
        bench_backbone = resolve_backbone(workspace, scratch, architecture=options.architecture)
        templates = (list(catalog.datasets[options.dataset].templates) if options.dataset in catalog.datasets
                     else None)
        images = resolve_images(workspace, scratch, options.dataset, options.shots + min(options.shots, 4), templates)
        from models.backbones.loader import load_backbone

        backbone = load_backbone(bench_backbone.spec(), device=options.device)
        prepared = []
        for method in options.methods:
            print(f"encoding the views of {method}", file=sys.stderr, flush=True)
            prepared.append(prepare(method, catalog, backbone, images, scratch / "feature_cache", options.shots,
                                    options.epochs))
        timings: dict[str, list[dict[str, Any]]] = {p.method: [] for p in prepared}
        for repeat in range(options.repeats):
            for item in prepared:
                print(f"repeat {repeat + 1}/{options.repeats}: training {item.method}", file=sys.stderr, flush=True)
                torch.manual_seed(1)
                timings[item.method].append(train_once(item, backbone, images))
    fastest = {method: min(runs, key=lambda run: run["seconds"]) for method, runs in timings.items()}
    for item in prepared:  # with --epochs: the published schedule's time, as this run's time per epoch x its epochs
        best = fastest[item.method]
        best["measured_seconds"] = best["seconds"]
        if options.epochs is not None and best["epochs"] and item.published_epochs \
                and best["optimization"]["steps"] is None:
            best["seconds"] = best["seconds"] / best["epochs"] * item.published_epochs
    coop_seconds = fastest.get("coop", {}).get("seconds")
    n_train = len(prepared[0].training_set.labels) if prepared else 0
    rows = []
    for item in prepared:
        best = fastest[item.method]
        details = {
            "all_seconds": [round(run["seconds"], 4) for run in timings[item.method]],
            "view_encoding_seconds": round(item.encode_seconds, 4),
            "training_views": list(item.training_set.view_inputs.shape[:2]),
            "selection": item.training_set.selection,
            "steps": best["steps"], "epochs": best["epochs"], "optimization": best["optimization"],
            "published_epochs": item.published_epochs, "measured_seconds": round(best["measured_seconds"], 6),
            "extrapolated": best["seconds"] != best["measured_seconds"],
            "relative_to_coop": (round(best["seconds"] / coop_seconds, 5) if coop_seconds else None),
            "coop_speedup": (round(coop_seconds / best["seconds"], 2) if coop_seconds and best["seconds"] > 0
                             else None),
        }
        rows.append(BenchmarkRow(
            method=item.method, variant=VARIANT, batch_size=int(best["optimization"]["batch_size"]), n_images=n_train,
            seconds=float(best["seconds"]), images_per_second=float(n_train * max(best["epochs"], 1)
                                                                    / max(best["seconds"], 1e-9)),
            peak_rss_mb=0.0, rss_delta_mb=0.0, details=details))
    run = BenchmarkRun(
        bench_run_id=f"bench-{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}", started_at=started_at,
        finished_at=datetime.now(UTC), git_commit=git_commit(), code_version=library_code_version(),
        device=describe_device(options.device), torch_version=torch.__version__, backbone=bench_backbone.name,
        backbone_weights_sha256=backbone.weights_sha256, weights_source=bench_backbone.weights_source,
        dataset=f"{images.dataset} ({n_train} training images, {len(images.classnames)} classes; {images.source})",
        benchmark="baseline-training", load_average=load_before,
    )
    if options.record:
        workspace_warehouse_of(workspace).record_benchmark(run, rows)
    result = {"run": {key: str(value) for key, value in run.__dict__.items()},
              "rows": [row.__dict__ for row in rows], "load_average_1min_before": load_before}
    if options.output:
        Path(options.output).parent.mkdir(parents=True, exist_ok=True)
        Path(options.output).write_text(json.dumps(result, indent=2, default=str))
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'method':<16}{'seconds':>10}{'x CoOp':>10}{'CoOp / it':>11}  schedule (views encoded once: seconds)"]
    for row in result["rows"]:
        details = row["details"]
        optimization = details["optimization"]
        schedule = (f"{details['steps']} steps" if optimization["steps"] else f"{details['epochs']} epochs") \
            if details["steps"] else "closed form"
        if details.get("extrapolated"):
            schedule = (f"{details['published_epochs']} epochs extrapolated from {details['epochs']} "
                        f"({details['measured_seconds']:.1f} s)")
        relative = details["relative_to_coop"]
        speedup = details["coop_speedup"]
        lines.append(f"{row['method']:<16}{row['seconds']:>10.3f}{'' if relative is None else f'{relative:.4f}':>10}"
                     f"{'' if speedup is None else f'{speedup:g}':>11}  {schedule}, views {details['training_views']}, "
                     f"selection {details['selection']} ({details['view_encoding_seconds']:.1f} s)")
    return "\n".join(lines)


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--dataset", default="Shapes")
    parser.add_argument("--shots", type=int, default=16, help="images per class (the Table 1 anchor: 16)")
    parser.add_argument("--architecture", default="tiny-clip",
                        help="open_clip architecture (tiny-clip: the workspace's pretrained one when present)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None,
                        help="train each epoch-scheduled method this many epochs and give its published schedule's "
                             "time as seconds per epoch x its published epochs (extrapolated, said in the table)")
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--workspace", default=str(default_workspace_root()))
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    parser.add_argument("--no-record", dest="record", action="store_false",
                        help="do not write the figures to the workspace's warehouse")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    result = run_benchmark(parse_options(argv))
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
