"""Near-duplicate check (models/data/near_duplicates.py): its cost, and the evidence for its default threshold.
`.venv/bin/python -m bench.near_duplicates` from the repository root (`--help` lists the options).

1. cost: the embedded Shapes renderer writes `--images` PNGs (10,000 by default: 20 classes, 40% train, 10% val,
   50% test, as the benchmark splits); timed are the index build (read, SHA-256, decode, thumbnail: what the
   dataset_index asset does), the thumbnails alone on decoded images, and the cross-split comparison.
2. scaling: the exhaustive comparison alone on random thumbnails of growing size (it is quadratic), fitted as
   a * n^2; bench/dataset_scale.py measures the search that replaced it (find_near_duplicates) up to ImageNet's size.
3. calibration: every embedded dataset of the catalog, built as the pipeline builds it (world.yaml benchmark
   settings): the closest pairs of distinct images across splits, and how far each kind of copy of a training image
   (re-saved PNG, other formats, JPEG qualities, resizes) moves from the original; the pairs flagged and the
   fraction of copies caught at the dataset's threshold (datasets.yaml; the default unless it sets one).

Output: a table on stdout and bench/results/near-duplicates-latest.json (written atomically at the end).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
from PIL import Image

from models.catalog import load_catalog
from models.data.datasets import DatasetSource, read_dataset
from models.data.index import build_dataset_index, load_images
from models.data.near_duplicates import (DEFAULT_MAX_DISTANCE, THUMBNAIL_COLUMN, THUMBNAIL_VALUES,
                                         NearDuplicatePolicy, find_near_duplicates, find_near_duplicates_exhaustive,
                                         image_thumbnail, thumbnail_distance)
from models.embedded.benchmark import build_embedded_dataset
from models.provenance import PACKAGE_ROOT, git_commit

DEFAULT_OUTPUT = PACKAGE_ROOT / "bench" / "results" / "near-duplicates-latest.json"
SPLIT_FRACTIONS = {"train": 0.4, "val": 0.1, "test": 0.5}
SCALING_SIZES = (2_500, 5_000, 10_000, 20_000)
ATTACKED_IMAGES_PER_DATASET = 100


def _reencoded(image: Image.Image, image_format: str, **options: Any) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


# The copies a leak can take: each must land within the threshold of its original.
COPIES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "png_resaved": lambda image: _reencoded(image, "PNG", compress_level=1),
    "bmp": lambda image: _reencoded(image, "BMP"),
    "webp_lossless": lambda image: _reencoded(image, "WEBP", lossless=True),
    "gif_palette": lambda image: _reencoded(image, "GIF"),
    "jpeg_q95": lambda image: _reencoded(image, "JPEG", quality=95),
    "jpeg_q90": lambda image: _reencoded(image, "JPEG", quality=90),
    "jpeg_q75": lambda image: _reencoded(image, "JPEG", quality=75),
    "webp_q80": lambda image: _reencoded(image, "WEBP", quality=80),
    "upscaled_64_bicubic": lambda image: image.resize((image.width * 2, image.height * 2), Image.Resampling.BICUBIC),
    "upscaled_224_bilinear": lambda image: image.resize((224, 224), Image.Resampling.BILINEAR),
    "downscaled_24_lanczos": lambda image: image.resize((24, 24), Image.Resampling.LANCZOS),
    "upscaled_96_then_jpeg_q75": lambda image: _reencoded(image.resize((96, 96), Image.Resampling.BICUBIC), "JPEG",
                                                          quality=75),
}


def _write_json_atomically(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        temporary.write_text(json.dumps(value, indent=2) + "\n")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def measure_cost(scratch: Path, image_count: int) -> dict[str, Any]:
    """Index build, thumbnails and comparison on `image_count` rendered Shapes images."""
    per_class = max(1, image_count // 20)
    counts = {split: max(1, round(per_class * fraction)) for split, fraction in SPLIT_FRACTIONS.items()}
    root = scratch / "Shapes"
    started = time.perf_counter()
    build_embedded_dataset("Shapes", root, seed=11, images_per_class=counts)
    render_seconds = time.perf_counter() - started
    source = DatasetSource(name="Shapes", root=root)
    records = read_dataset(source)

    started = time.perf_counter()
    index = build_dataset_index(records, source.image_dir)
    index_seconds = time.perf_counter() - started
    images = load_images(source.image_dir, records.get_column("relative_path").to_list())
    started = time.perf_counter()
    for image in images:
        image_thumbnail(image)
    thumbnail_seconds = time.perf_counter() - started

    started = time.perf_counter()
    pairs, _ = find_near_duplicates(index, NearDuplicatePolicy())
    compare_seconds = time.perf_counter() - started
    rows_per_split = {split: int(n) for split, n in index.group_by("split").len().sort("split").iter_rows()}
    cross_pairs = sum(rows_per_split.get(a, 0) * rows_per_split.get(b, 0)
                      for a, b in (("train", "val"), ("train", "test"), ("val", "test")))
    return {
        "images": index.height, "rows_per_split": rows_per_split, "cross_split_pairs": cross_pairs,
        "render_seconds": round(render_seconds, 2),
        "index_build_seconds": round(index_seconds, 2),
        "index_build_ms_per_image": round(1000 * index_seconds / index.height, 3),
        "thumbnail_seconds": round(thumbnail_seconds, 3),
        "thumbnail_ms_per_image": round(1000 * thumbnail_seconds / index.height, 4),
        "comparison_seconds": round(compare_seconds, 3),
        "comparison_ns_per_pair": round(1e9 * compare_seconds / cross_pairs, 3),
        "near_duplicate_pairs_found": pairs.height,
        "index_bytes_per_image_for_thumbnail": THUMBNAIL_VALUES,
    }


def measure_scaling(sizes: tuple[int, ...]) -> dict[str, Any]:
    """Exhaustive comparison time on random thumbnails (no pair is close: the cost of finding nothing)."""
    rng = np.random.default_rng(0)
    points = []
    for size in sizes:
        thumbnails = [bytes(row) for row in rng.integers(0, 256, (size, THUMBNAIL_VALUES), dtype=np.uint8)]
        splits = np.array(["train", "val", "test"])[
            np.searchsorted(np.cumsum(list(SPLIT_FRACTIONS.values())), (np.arange(size) + 0.5) / size)]
        index = pl.DataFrame({"relative_path": [f"{i}.png" for i in range(size)], "split": splits,
                              THUMBNAIL_COLUMN: thumbnails}, schema_overrides={THUMBNAIL_COLUMN: pl.Binary})
        started = time.perf_counter()
        find_near_duplicates_exhaustive(index, NearDuplicatePolicy())
        points.append({"images": size, "comparison_seconds": round(time.perf_counter() - started, 3)})
    # Least squares of seconds = a * n^2 over the measured points.
    n_squared = np.array([p["images"] ** 2 for p in points], dtype=float)
    seconds = np.array([p["comparison_seconds"] for p in points])
    coefficient = float(n_squared @ seconds / (n_squared @ n_squared))
    return {"points": points, "seconds_per_image_squared": coefficient,
            "extrapolated_seconds": {str(n): round(coefficient * n * n, 1) for n in (50_000, 100_000, 1_000_000)}}


def calibrate(scratch: Path, thresholds: dict[str, float], seed: int, images_per_class: dict[str, int]
              ) -> dict[str, Any]:
    """Per embedded dataset (name -> its threshold): closest distinct cross-split pairs, the distance of each kind
    of copy."""
    results: dict[str, Any] = {}
    for name, threshold in thresholds.items():
        root = scratch / "calibration" / name
        build_embedded_dataset(name, root, seed=seed, images_per_class=images_per_class)
        source = DatasetSource(name=name, root=root)
        index = build_dataset_index(read_dataset(source), source.image_dir)
        # Everything within 3x the default: the margin between the threshold and the closest distinct images.
        close, _ = find_near_duplicates(index, NearDuplicatePolicy(max_distance=3 * DEFAULT_MAX_DISTANCE))
        train = index.filter(pl.col("split") == "train")
        rng = np.random.default_rng(0)
        chosen = sorted(rng.choice(train.height, min(ATTACKED_IMAGES_PER_DATASET, train.height), replace=False))
        paths = [train["relative_path"][int(i)] for i in chosen]
        thumbnails = [train[THUMBNAIL_COLUMN][int(i)] for i in chosen]
        copies: dict[str, dict[str, float]] = {}
        for copy_name, make_copy in COPIES.items():
            distances = np.array([thumbnail_distance(image_thumbnail(make_copy(image)), thumbnail)
                                  for image, thumbnail in zip(load_images(source.image_dir, paths), thumbnails)])
            copies[copy_name] = {"median": round(float(np.median(distances)), 3), "max": round(float(distances.max()), 3),
                                 "caught_fraction": round(float(np.mean(distances <= threshold)), 3)}
        results[name] = {
            "images": index.height,
            "max_distance": threshold,
            "pairs_flagged": int((close["distance"] <= threshold).sum()),
            "pairs_within_default": int((close["distance"] <= DEFAULT_MAX_DISTANCE).sum()),
            "pairs_within_2x_default": int((close["distance"] <= 2 * DEFAULT_MAX_DISTANCE).sum()),
            "closest_pairs": close.head(5).rows(named=True),
            "copies_of_train_images": copies,
        }
        print(f"{name:13s} threshold {threshold}: flagged {results[name]['pairs_flagged']}, closest distinct "
              f"{close['distance'].head(3).to_list()}; copies max/caught: "
              + " ".join(f"{k}={v['max']}/{v['caught_fraction']:.0%}" for k, v in copies.items()), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000, help="images for the cost measurement")
    parser.add_argument("--skip-calibration", action="store_true")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    arguments = parser.parse_args(argv)

    catalog = load_catalog()
    with tempfile.TemporaryDirectory(prefix="near-duplicates-") as scratch:
        cost = measure_cost(Path(scratch), arguments.images)
        print(f"cost on {cost['images']} images: index build {cost['index_build_seconds']} s "
              f"({cost['index_build_ms_per_image']} ms/image, thumbnails {cost['thumbnail_ms_per_image']} ms/image), "
              f"comparison {cost['comparison_seconds']} s over {cost['cross_split_pairs']} pairs", flush=True)
        scaling = measure_scaling(SCALING_SIZES)
        print("comparison scaling:", scaling["points"], "extrapolated:", scaling["extrapolated_seconds"], flush=True)
        settings = catalog.world["benchmark"]
        thresholds = {name: entry.near_duplicates.max_distance for name, entry in catalog.datasets.items()
                      if entry.source == "embedded"}
        calibration = {} if arguments.skip_calibration else calibrate(
            Path(scratch), thresholds, settings["seed"], settings["images_per_class"])
    result = {
        "benchmark": "near_duplicates",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "default_max_distance": DEFAULT_MAX_DISTANCE,
        "cost": cost,
        "scaling": scaling,
        "calibration": calibration,
    }
    _write_json_atomically(arguments.output, result)
    print(f"wrote {arguments.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
