"""Zero-shot evaluation, PromptLab against CLIP_benchmark, side by side in one process (issue 13).

`.venv/bin/python -m bench.clip_benchmark_compare` (needs the `bench` extra: `pip install -e ".[bench]"`, which
installs clip_benchmark from PyPI; it is never a runtime dependency). `--help` lists the options.

Both tools get the SAME model object, the same test images of the embedded datasets (generated here with
models.embedded, seed 0), the same templates and the same number of decoding workers. Timed, per backbone and dataset,
in interleaved repeats (the order of the tools alternates):

- `promptlab_cold`: what the pipeline's zero-shot evaluation does with empty caches: build the zero-shot
  classifier (text tower, stored in the text cache), features of the test split through the feature cache (decode in a DataLoader, encode in the
  dataset's canonical batches, store), probabilities;
- `promptlab_warm`: the same again, the text and image features now cached;
- `clip_benchmark`: clip_benchmark.metrics.zeroshot_classification (zero_shot_classifier + run_classification over
  a DataLoader of preprocessed images, batch 64), fp32 on CPU (amp off), as its CLI runs there; on a GPU with
  its default amp (fp16 autocast) while PromptLab encodes at models.precision's bf16 autocast, so a few
  predictions may differ there (counted).

Reported: images/s (median over repeats), PromptLab / CLIP_benchmark ratios, how many predictions differ (the features
differ in the last bits, since the batches differ), and the load average before each repeat. Backbones: the shipped
tiny-clip (assets_catalog/pretrained/tiny-clip) and open_clip architectures with seeded random weights (ViT-B-32,
ViT-B-16: their speed does not depend on the weights' values).

Output: a table on stdout, bench/results/clip-benchmark-latest.json (written atomically at the end) and, unless
`--no-warehouse`, the workspace's warehouse: one `zero-shot-evaluation` run per backbone and dataset in
`benchmark_results` (variants promptlab-cold, promptlab-warm, clip-benchmark; targets cold >= 1x and warm >= 10x
CLIP_benchmark), all runs in one transaction each, written only after every measurement succeeded. Memory figures
there are the whole process's (both tools run in it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from models.backbones.loader import BackboneSpec, load_backbone
from models.data.index import load_images
from models.embedded.benchmark import build_embedded_dataset, suggested_templates
from models.experiments import build_classifier, features_for_images
from models.prompting.features import CANONICAL_BATCH_SIZE, ImageSet, loader_workers
from models.prompting.text_cache import TextFeatureCache
from models.prompting.training import predict_probabilities
from models.provenance import PACKAGE_ROOT, git_commit, library_code_version, sha256_file
from models.warehouse import BenchmarkRow, BenchmarkRun, workspace_warehouse_of
from models.workspace import Workspace, default_workspace_root

DEFAULT_OUTPUT = PACKAGE_ROOT / "bench" / "results" / "clip-benchmark-latest.json"
SHIPPED_TINY_CLIP = PACKAGE_ROOT / "assets_catalog" / "pretrained" / "tiny-clip"
TOOLS = ("promptlab_cold", "promptlab_warm", "clip_benchmark")
# tool -> (warehouse variant, baseline variant, target speed-up over it)
WAREHOUSE_VARIANTS = {"promptlab_cold": ("promptlab-cold", "clip-benchmark", 1.0),
                      "promptlab_warm": ("promptlab-warm", "clip-benchmark", 10.0),
                      "clip_benchmark": ("clip-benchmark", None, None)}


class _LabelledImages(torch.utils.data.Dataset):
    """(preprocessed image, label) pairs, as CLIP_benchmark's datasets yield them."""

    def __init__(self, image_dir: Path, relative_paths: list[str], labels: list[int], preprocess):
        self.image_dir, self.relative_paths, self.labels, self.preprocess = image_dir, relative_paths, labels, preprocess

    def __len__(self) -> int:
        return len(self.relative_paths)

    def __getitem__(self, index: int):
        return self.preprocess(load_images(self.image_dir, [self.relative_paths[index]])[0]), self.labels[index]


def _backbone(architecture: str, scratch: Path, device: str):
    from bench.inputs import write_random_clip

    if architecture == "tiny-clip" and (SHIPPED_TINY_CLIP / "open_clip_config.json").is_file():
        folder, weights = SHIPPED_TINY_CLIP, "shipped tiny-clip (pretrained on the embedded corpus)"
    else:
        folder, weights = write_random_clip(scratch / f"{architecture}-random", 0, architecture), "random (seed 0)"
    spec = BackboneSpec(name=architecture, source="local_dir", model_name=architecture, path=str(folder))
    return load_backbone(spec, device), weights


def _test_split(dataset: str, scratch: Path, test_per_class: int) -> dict[str, Any]:
    root = scratch / "datasets" / dataset
    split_file = build_embedded_dataset(dataset, root, seed=0,
                                        images_per_class={"train": 1, "val": 1, "test": test_per_class})
    split = json.loads(split_file.read_text())
    image_dir = root / "images"
    info = json.loads((root / "embedded_dataset.json").read_text()) if (root / "embedded_dataset.json").is_file() \
        else {}
    rows = split["test"]
    by_label = {int(label): name for _, label, name in split["train"] + rows}
    every = [(path, group) for group in ("train", "val", "test") for path, _, _ in split[group]]
    hashes = {path: sha256_file(image_dir / path) for path, _ in every}
    return {
        "image_dir": image_dir,
        "paths": [path for path, _, _ in rows],
        "labels": [int(label) for _, label, _ in rows],
        "classnames": list(info.get("classnames") or [by_label[label] for label in sorted(by_label)]),
        "templates": [info.get("template") or suggested_templates()[dataset]],
        # the dataset's ImageSet, batched within each split, as pipelines/assets/common.py builds it
        "image_set": ImageSet.of(image_dir, [path for path, _ in every], [hashes[path] for path, _ in every],
                                 [group for _, group in every]),
        "hashes": [hashes[path] for path, _, _ in rows],
    }


def _promptlab(backbone, data: dict[str, Any], cache_dir: Path) -> torch.Tensor:
    classifier = build_classifier(backbone.model, backbone.tokenizer, "zero_shot", {}, data["classnames"],
                                  data["templates"], text_cache=TextFeatureCache.of(backbone, cache_dir / "text"))
    features = features_for_images(backbone, data["image_set"], data["paths"], data["hashes"], cache_dir)
    return predict_probabilities(classifier, features).argmax(dim=1)


def _clip_benchmark(backbone, data: dict[str, Any], workers: int) -> torch.Tensor:
    from clip_benchmark.metrics.zeroshot_classification import run_classification, zero_shot_classifier

    device = str(backbone.device)
    amp = backbone.device.type == "cuda"  # its CLI's default (amp on); on a CPU its runs are fp32
    loader = torch.utils.data.DataLoader(
        _LabelledImages(data["image_dir"], data["paths"], data["labels"], backbone.preprocess_eval),
        batch_size=CANONICAL_BATCH_SIZE, shuffle=False, num_workers=workers, pin_memory=amp)
    templates = [template.replace("{}", "{c}") for template in data["templates"]]
    classifier = zero_shot_classifier(backbone.model, backbone.tokenizer, data["classnames"], templates, device,
                                      amp=amp)
    logits, _ = run_classification(backbone.model, classifier, loader, device, amp=amp)
    return logits.argmax(dim=1).cpu()


def measure(architectures: list[str], datasets: list[str], test_per_class: int, repeats: int,
            scratch: Path, device: str = "cpu") -> list[dict[str, Any]]:
    from bench.measure import current_rss_mb, peak_rss_mb

    rows = []
    for architecture in architectures:
        backbone, weights = _backbone(architecture, scratch, device)
        for dataset in datasets:
            data = _test_split(dataset, scratch, test_per_class)
            n_images = len(data["paths"])
            workers = loader_workers(n_images)
            seconds: dict[str, list[float]] = {tool: [] for tool in TOOLS}
            loads, predictions = [], {}
            rss_before, started_at = current_rss_mb() or 0.0, datetime.now(UTC)
            for repeat in range(repeats):
                loads.append(os.getloadavg()[0])
                cache_dir = scratch / "cache" / f"{architecture}-{dataset}-{repeat}"
                shutil.rmtree(cache_dir, ignore_errors=True)
                order = ("clip_benchmark", "promptlab") if repeat % 2 else ("promptlab", "clip_benchmark")
                for tool in order:
                    if tool == "clip_benchmark":
                        started = time.perf_counter()
                        predictions[tool] = _clip_benchmark(backbone, data, workers)
                        seconds[tool].append(time.perf_counter() - started)
                        continue
                    for temperature in ("cold", "warm"):
                        started = time.perf_counter()
                        predictions[f"promptlab_{temperature}"] = _promptlab(backbone, data, cache_dir)
                        seconds[f"promptlab_{temperature}"].append(time.perf_counter() - started)
            images_per_second = {tool: n_images / statistics.median(values) for tool, values in seconds.items()}
            row = {
                "backbone": architecture, "weights": weights, "dataset": dataset, "images": n_images,
                "classes": len(data["classnames"]), "loader_workers": workers, "repeats": repeats,
                "seconds": seconds, "images_per_second": images_per_second,
                "cold_ratio": images_per_second["promptlab_cold"] / images_per_second["clip_benchmark"],
                "warm_ratio": images_per_second["promptlab_warm"] / images_per_second["clip_benchmark"],
                "predictions_differing": int((predictions["promptlab_cold"] != predictions["clip_benchmark"]).sum()),
                "cold_equals_warm": bool(torch.equal(predictions["promptlab_cold"], predictions["promptlab_warm"])),
                "load_average_1min": loads,
                "started_at": started_at.isoformat(), "finished_at": datetime.now(UTC).isoformat(),
                "weights_sha256": backbone.weights_sha256,
                "peak_rss_mb": peak_rss_mb(), "rss_delta_mb": peak_rss_mb() - rss_before,
                "peak_cuda_mb": (torch.cuda.max_memory_allocated() / 2**20 if torch.device(device).type == "cuda"
                                 else None),
            }
            rows.append(row)
            print(f"{architecture:10s} {dataset:12s} {n_images:4d} images  cold {images_per_second['promptlab_cold']:7.1f}"
                  f"  warm {images_per_second['promptlab_warm']:8.1f}  clip_benchmark "
                  f"{images_per_second['clip_benchmark']:7.1f} img/s  cold/cb {row['cold_ratio']:.2f}x  warm/cb "
                  f"{row['warm_ratio']:.1f}x  predictions differing {row['predictions_differing']}/{n_images}  "
                  f"load {', '.join(f'{value:.2f}' for value in loads)}", flush=True)
    return rows


def warehouse_runs(rows: list[dict[str, Any]], device: str, commit: str | None,
                   code_version: str | None) -> list[tuple[BenchmarkRun, list[BenchmarkRow]]]:
    """One `zero-shot-evaluation` benchmark run per backbone and dataset, as the warehouse records it."""
    runs = []
    for row in rows:
        run = BenchmarkRun(
            bench_run_id=f"zero-shot-{row['backbone']}-{row['dataset']}-{uuid.uuid4().hex[:8]}".replace("/", "-"),
            started_at=datetime.fromisoformat(row["started_at"]), finished_at=datetime.fromisoformat(row["finished_at"]),
            git_commit=commit, code_version=code_version, device=device, torch_version=torch.__version__,
            backbone=row["backbone"], backbone_weights_sha256=row["weights_sha256"], weights_source=row["weights"],
            dataset=f"{row['dataset']} ({row['images']} test images, {row['classes']} classes; embedded, seed 0)",
            benchmark="zero-shot-evaluation", load_average=max(0.0, row["load_average_1min"][0]),
        )
        measured = []
        for tool, (variant, baseline, target) in WAREHOUSE_VARIANTS.items():
            seconds = statistics.median(row["seconds"][tool])
            details = {"seconds_per_repeat": row["seconds"][tool], "repeats": row["repeats"],
                       "loader_workers": row["loader_workers"], "load_average_1min": row["load_average_1min"],
                       "memory": "the whole process's (both tools run in it)"}
            if tool != "clip_benchmark":
                details |= {"predictions_differing_from_clip_benchmark": row["predictions_differing"],
                            "cold_equals_warm": row["cold_equals_warm"]}
            measured.append(BenchmarkRow(
                method="zero_shot", variant=variant, batch_size=CANONICAL_BATCH_SIZE, n_images=row["images"],
                seconds=seconds, images_per_second=row["images_per_second"][tool], peak_rss_mb=row["peak_rss_mb"],
                rss_delta_mb=row["rss_delta_mb"], peak_cuda_mb=row["peak_cuda_mb"], baseline_variant=baseline,
                target_speedup=target, details=details))
        runs.append((run, measured))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="tiny-clip,ViT-B-32,ViT-B-16")
    parser.add_argument("--datasets", default="Shapes,Colours,Digits")
    parser.add_argument("--test-per-class", type=int, default=16, help="test images per class")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (PromptLab at bf16 autocast, CLIP_benchmark "
                                                          "with its amp)")
    parser.add_argument("--workspace", type=Path, default=None,
                        help="workspace whose warehouse records the runs (default: the default workspace)")
    parser.add_argument("--no-warehouse", action="store_true", help="do not write to the workspace's warehouse")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    arguments = parser.parse_args(argv)
    if torch.device(arguments.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {arguments.device}: CUDA is not available here (torch {torch.__version__})")
    from bench.throughput import _write_json_atomically, describe_device, machine_load_warning

    machine_load_warning()
    torch.set_num_threads(arguments.threads)
    commit, code_version = git_commit(), library_code_version()
    with tempfile.TemporaryDirectory(prefix="promptlab-clip-benchmark-") as scratch:
        rows = measure(arguments.backbones.split(","), arguments.datasets.split(","), arguments.test_per_class,
                       arguments.repeats, Path(scratch), arguments.device)
    device = describe_device(arguments.device)
    result = {"benchmark": "clip_benchmark_compare", "finished_at": datetime.now(UTC).isoformat(),
              "git_commit": commit, "torch_threads": arguments.threads, "cpu_count": os.cpu_count(),
              "platform": platform.platform(), "torch": torch.__version__, "device": device, "rows": rows}
    if not arguments.no_warehouse:
        workspace = Workspace(arguments.workspace or default_workspace_root())
        warehouse = workspace_warehouse_of(workspace)
        warehouse.record_benchmarks(warehouse_runs(rows, device, commit, code_version))
        result["warehouse"] = warehouse.address
        print(f"recorded {len(rows)} zero-shot-evaluation runs in {result['warehouse']}")
    _write_json_atomically(arguments.output, result)
    print(f"wrote {arguments.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
