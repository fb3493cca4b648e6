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
  a DataLoader of preprocessed images, batch 64), fp32 on CPU (amp off), as its CLI runs there.

Reported: images/s (median over repeats), PromptLab / CLIP_benchmark ratios, how many predictions differ (the features
differ in the last bits, since the batches differ), and the load average before each repeat. Backbones: the shipped
tiny-clip (assets_catalog/pretrained/tiny-clip) and open_clip architectures with seeded random weights (ViT-B-32,
ViT-B-16: their speed does not depend on the weights' values).

Output: a table on stdout and bench/results/clip-benchmark-latest.json (written atomically at the end).
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
from models.provenance import PACKAGE_ROOT, git_commit, sha256_file

DEFAULT_OUTPUT = PACKAGE_ROOT / "bench" / "results" / "clip-benchmark-latest.json"
SHIPPED_TINY_CLIP = PACKAGE_ROOT / "assets_catalog" / "pretrained" / "tiny-clip"
TOOLS = ("promptlab_cold", "promptlab_warm", "clip_benchmark")


class _LabelledImages(torch.utils.data.Dataset):
    """(preprocessed image, label) pairs, as CLIP_benchmark's datasets yield them."""

    def __init__(self, image_dir: Path, relative_paths: list[str], labels: list[int], preprocess):
        self.image_dir, self.relative_paths, self.labels, self.preprocess = image_dir, relative_paths, labels, preprocess

    def __len__(self) -> int:
        return len(self.relative_paths)

    def __getitem__(self, index: int):
        return self.preprocess(load_images(self.image_dir, [self.relative_paths[index]])[0]), self.labels[index]


def _backbone(architecture: str, scratch: Path):
    from bench.inputs import write_random_clip

    if architecture == "tiny-clip" and (SHIPPED_TINY_CLIP / "open_clip_config.json").is_file():
        folder, weights = SHIPPED_TINY_CLIP, "shipped tiny-clip (pretrained on the embedded corpus)"
    else:
        folder, weights = write_random_clip(scratch / f"{architecture}-random", 0, architecture), "random (seed 0)"
    spec = BackboneSpec(name=architecture, source="local_dir", model_name=architecture, path=str(folder))
    return load_backbone(spec), weights


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

    loader = torch.utils.data.DataLoader(
        _LabelledImages(data["image_dir"], data["paths"], data["labels"], backbone.preprocess_eval),
        batch_size=CANONICAL_BATCH_SIZE, shuffle=False, num_workers=workers)
    templates = [template.replace("{}", "{c}") for template in data["templates"]]
    classifier = zero_shot_classifier(backbone.model, backbone.tokenizer, data["classnames"], templates, "cpu",
                                      amp=False)
    logits, _ = run_classification(backbone.model, classifier, loader, "cpu", amp=False)
    return logits.argmax(dim=1)


def measure(architectures: list[str], datasets: list[str], test_per_class: int, repeats: int,
            scratch: Path) -> list[dict[str, Any]]:
    rows = []
    for architecture in architectures:
        backbone, weights = _backbone(architecture, scratch)
        for dataset in datasets:
            data = _test_split(dataset, scratch, test_per_class)
            n_images = len(data["paths"])
            workers = loader_workers(n_images)
            seconds: dict[str, list[float]] = {tool: [] for tool in TOOLS}
            loads, predictions = [], {}
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
            }
            rows.append(row)
            print(f"{architecture:10s} {dataset:12s} {n_images:4d} images  cold {images_per_second['promptlab_cold']:7.1f}"
                  f"  warm {images_per_second['promptlab_warm']:8.1f}  clip_benchmark "
                  f"{images_per_second['clip_benchmark']:7.1f} img/s  cold/cb {row['cold_ratio']:.2f}x  warm/cb "
                  f"{row['warm_ratio']:.1f}x  predictions differing {row['predictions_differing']}/{n_images}  "
                  f"load {', '.join(f'{value:.2f}' for value in loads)}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="tiny-clip,ViT-B-32,ViT-B-16")
    parser.add_argument("--datasets", default="Shapes,Colours,Digits")
    parser.add_argument("--test-per-class", type=int, default=16, help="test images per class")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    with tempfile.TemporaryDirectory(prefix="promptlab-clip-benchmark-") as scratch:
        rows = measure(arguments.backbones.split(","), arguments.datasets.split(","), arguments.test_per_class,
                       arguments.repeats, Path(scratch))
    result = {"benchmark": "clip_benchmark_compare", "finished_at": datetime.now(UTC).isoformat(),
              "git_commit": git_commit(), "torch_threads": arguments.threads, "cpu_count": os.cpu_count(),
              "platform": platform.platform(), "torch": torch.__version__, "device": "cpu", "rows": rows}
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = arguments.output.with_suffix(".tmp")
    temporary.write_text(json.dumps(result, indent=2))
    temporary.replace(arguments.output)
    print(f"wrote {arguments.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
