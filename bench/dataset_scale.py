"""Dataset scale: the near-duplicate check and the index build at ImageNet's size.
`flock /tmp/promptlab-cpu.lock .venv/bin/python -m bench.dataset_scale` from the repository root (`--help` lists the
options; the whole run takes about 15 minutes on 2 cores; the run of record is bench/measured/dataset_scale.json).

a) Near duplicates (models/data/near_duplicates.py): the search (`find_near_duplicates`) and the exhaustive
   comparison (`find_near_duplicates_exhaustive`) on the same synthetic thumbnails, in one process, each with BLAS on
   one thread and on all (the search's many small matrix products lose to busy-waiting BLAS threads on a shared
   CPU; the exhaustive comparison's large ones gain from them): both at 10,000 and 100,000 thumbnails (the pairs
   they return are checked to be equal), the search alone at 1,000,000 and at ImageNet's shape (1,281,167 train,
   50,000 val = test). The exhaustive time where it did not run is extrapolated from its measured seconds per
   cross-split pair (its cost is a matrix product over every such pair). Splits 40/10/50% as the benchmark
   datasets; 0.1% of the test images are planted copies (+-2 levels) of train images.

   Why thumbnails of random smooth pictures and not iid noise: beyond its fixed work (coordinates, the tree) the
   search pays for the images it cannot rule out, those lying near each other compared with the threshold (1.8 RMS
   grey levels): how crowded the thumbnails are is what its cost grows with. Uniform noise thumbnails are ~100
   levels from each other whatever the pair, with their spread equal in all 192 directions: nothing is crowded, so
   noise measures only the fixed work (it is reported too: at 100,000 the search took as long on noise, 0.8 s, as on
   these, 0.7 s). Photographs are not like that: 8x8 thumbnails of natural images keep most of their variance in a
   few low-frequency directions (1/f spectra) and crowd in places (plain skies, walls, product shots on white, dark
   frames), so many distinct images sit a few thresholds apart. The synthetic set mixes 70% 1/f^a textures (a from
   0.8 to 1.6, lognormal contrast around 35 levels), 20% objects on a background (a ramp and a soft blob) and 10%
   nearly flat pictures (contrast 3-10 levels), with colour casts; its crowding is reported beside the timings (at
   100,000: 13,246 distinct cross-split pairs within 2x the threshold, 350,586 within 3x; median nearest neighbour
   13.9 levels, 1% under 3.4).

b) Index build (models.data.index.build_dataset_index: read, SHA-256, decode, thumbnail; what the dataset_index
   asset does, one process): a tree of `--index-files` (100,000) synthetic JPEGs of 64x64 to 500x375 pixels
   (uniform widths and heights; a smooth colour field with grey detail, quality 96: about 60 KB), per 10,000 files;
   and `--imagenet-files` (1,000) at ImageNet's average size (~400x350 pixels, ~110 KB), extrapolated to ImageNet's
   1,281,167 training images (and 1,331,167 with val). Files are read warm (just written, in the page cache): the
   figure is the CPU's; reading ImageNet's 140 GB from disk adds what the disk takes.

Output: a table on stdout, bench/results/dataset-scale-latest.json (written atomically at the end) and the
workspace's warehouse (benchmark `dataset-scale`: a row per method and variant; speed-up = search over exhaustive).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import multiprocessing
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image
from threadpoolctl import threadpool_limits  # installed with scikit-learn, a pinned dependency

from bench.measure import current_rss_mb, peak_rss_mb, reset_peak_rss
from bench.throughput import _write_json_atomically, machine_load_warning
from models.data.index import build_dataset_index
from models.data.near_duplicates import (DEFAULT_MAX_DISTANCE, THUMBNAIL_COLUMN, THUMBNAIL_VALUES,
                                         NearDuplicatePolicy, find_near_duplicates,
                                         find_near_duplicates_exhaustive)
from models.provenance import PACKAGE_ROOT, git_commit, library_code_version
from models.workspace import Workspace, default_workspace_root

DEFAULT_OUTPUT = PACKAGE_ROOT / "bench" / "results" / "dataset-scale-latest.json"
SPLIT_FRACTIONS = {"train": 0.4, "val": 0.1, "test": 0.5}
BOTH_METHODS_SIZES = (10_000, 100_000)
SEARCH_ONLY_SIZES = (1_000_000,)
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000
PLANTED_FRACTION = 0.001
BLAS_SETTINGS = {"1 thread": 1, "all threads": None}


# ------------------------------------------------------------------------------------------ synthetic thumbnails
def synthetic_thumbnails(count: int, seed: int, chunk: int = 50_000) -> np.ndarray:
    """(count, 192) uint8 YCbCr 8x8 thumbnails of random smooth pictures (module docstring, a)."""
    rng = np.random.default_rng(seed)
    frequency_y, frequency_x = np.meshgrid(np.fft.fftfreq(8), np.fft.fftfreq(8), indexing="ij")
    radius = np.hypot(frequency_y, frequency_x)
    radius[0, 0] = np.inf  # no DC term: the mean is drawn apart
    cell_y, cell_x = np.meshgrid(np.arange(8) + 0.5, np.arange(8) + 0.5, indexing="ij")
    thumbnails = np.empty((count, 8, 8, 3), np.uint8)
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        family = rng.choice(3, n, p=[0.7, 0.2, 0.1])  # texture, object on a background, nearly flat
        exponent = rng.uniform(0.8, 1.6, (n, 1, 1, 1))
        spectrum = (rng.normal(size=(n, 3, 8, 8)) + 1j * rng.normal(size=(n, 3, 8, 8))) / radius ** exponent
        fields = np.fft.ifft2(spectrum).real
        fields /= fields.std(axis=(2, 3), keepdims=True) + 1e-12
        mean_luma = np.clip(rng.normal(115, 50, n), 10, 245)[:, None, None]
        contrast = np.where(family == 2, rng.uniform(3, 10, n), rng.lognormal(np.log(35), 0.4, n))[:, None, None]
        luma = mean_luma + contrast * fields[:, 0]
        direction = rng.uniform(0, 2 * np.pi, n)[:, None, None]
        ramp = (np.cos(direction) * (cell_x - 4) + np.sin(direction) * (cell_y - 4)) / 4
        centre = rng.uniform(1.5, 6.5, (n, 2))
        width = rng.uniform(1.0, 3.0, n)[:, None, None]
        blob = np.exp(-((cell_y - centre[:, 0, None, None]) ** 2 + (cell_x - centre[:, 1, None, None]) ** 2)
                      / (2 * width ** 2))
        scene = (mean_luma + 25 * ramp * rng.uniform(0.3, 1.5, (n, 1, 1)) + rng.normal(0, 70, (n, 1, 1)) * blob
                 + 8 * fields[:, 0])
        luma = np.where((family == 1)[:, None, None], scene, luma)
        cast = rng.normal(0, 12, (n, 2, 1, 1))
        chroma_contrast = contrast[:, :, :, None] * rng.uniform(0.1, 0.5, (n, 2, 1, 1))
        luma_share = rng.uniform(-0.5, 0.5, (n, 2, 1, 1))
        chroma = 128 + cast + chroma_contrast * (fields[:, 1:] + luma_share * fields[:, :1])
        picture = np.concatenate([luma[:, None], chroma], axis=1).transpose(0, 2, 3, 1)
        thumbnails[start:start + n] = np.clip(np.rint(picture), 0, 255).astype(np.uint8)
    return thumbnails.reshape(count, THUMBNAIL_VALUES)


def thumbnail_index(values: np.ndarray, split_counts: dict[str, int], seed: int) -> pl.DataFrame:
    """An index of the thumbnails (relative_path, split, thumbnail), with PLANTED_FRACTION of the test images made
    copies (+-2 levels) of train images."""
    splits = np.repeat(list(split_counts), list(split_counts.values()))
    train, test = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "test")
    rng = np.random.default_rng(seed)
    planted = max(1, int(PLANTED_FRACTION * len(test)))
    copies, originals = rng.choice(test, planted, replace=False), rng.choice(train, planted, replace=False)
    noisy = values[originals].astype(int) + rng.integers(-2, 3, (planted, THUMBNAIL_VALUES))
    values = values.copy()
    values[copies] = np.clip(noisy, 0, 255).astype(np.uint8)
    thumbnails = pl.Series(THUMBNAIL_COLUMN, [row.tobytes() for row in values], dtype=pl.Binary)
    return pl.DataFrame({"relative_path": [f"{i:07d}.jpg" for i in range(len(values))], "split": splits}).with_columns(
        thumbnails)


def split_counts_for(size: int) -> dict[str, int]:
    train, val = round(size * SPLIT_FRACTIONS["train"]), round(size * SPLIT_FRACTIONS["val"])
    return {"train": train, "val": val, "test": size - train - val}


def cross_split_pairs(counts: dict[str, int]) -> int:
    return (counts.get("train", 0) * (counts.get("val", 0) + counts.get("test", 0))
            + counts.get("val", 0) * counts.get("test", 0))


# -------------------------------------------------------------------------------------------- near duplicates
def _timed(function: Callable[[], Any], blas_threads: int | None) -> tuple[dict[str, float], Any]:
    """Seconds, the process's peak resident set (MB) and that peak above the resident set before; the result."""
    before = current_rss_mb() or 0.0
    reset_peak_rss()
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        started = time.perf_counter()
        result = function()
        seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    return {"seconds": round(seconds, 3), "peak_rss_mb": round(peak, 1),
            "peak_above_start_mb": round(peak - before, 1)}, result


def measure_methods(name: str, index: pl.DataFrame, counts: dict[str, int], exhaustive: bool) -> dict[str, Any]:
    """The search (and the exhaustive comparison) under each BLAS setting; pairs checked equal."""
    policy = NearDuplicatePolicy()
    entry: dict[str, Any] = {"thumbnails": index.height, "split_counts": counts,
                             "cross_split_pairs": cross_split_pairs(counts), "search": {}, "exhaustive": {}}
    methods: dict[str, Callable[..., tuple[pl.DataFrame, int]]] = {"search": find_near_duplicates}
    if exhaustive:
        methods["exhaustive"] = find_near_duplicates_exhaustive
    found: dict[str, pl.DataFrame] = {}
    for setting, threads in BLAS_SETTINGS.items():
        for method, function in methods.items():
            timing, (pairs, _) = _timed(lambda: function(index, policy), threads)
            entry[method][setting] = timing
            found.setdefault(method, pairs)
            print(f"{name}: {method} ({setting}) {timing['seconds']:.2f} s, {pairs.height} pairs", flush=True)
    if exhaustive:
        if not found["search"].equals(found["exhaustive"]):
            raise AssertionError(f"{name}: the search and the exhaustive comparison found different pairs")
        entry["same_pairs_as_exhaustive"] = True
    entry["pairs_found"] = found["search"].height
    for method in methods:
        entry[method]["best_seconds"] = min(timing["seconds"] for timing in entry[method].values())
    return entry


def crowding(index: pl.DataFrame) -> dict[str, Any]:
    """How near the thumbnails lie to each other across splits: pairs within 2x and 3x the threshold (the search at
    those thresholds), and nearest cross-split neighbours of 500 test thumbnails (exhaustive)."""
    within = {f"within_{factor}x": find_near_duplicates(index, NearDuplicatePolicy(factor * DEFAULT_MAX_DISTANCE))[
        0].height for factor in (1, 2, 3)}
    values = np.frombuffer(b"".join(index[THUMBNAIL_COLUMN].to_list()), np.uint8).reshape(index.height, -1)
    features = values * np.tile([1.0, 0.25, 0.25], THUMBNAIL_VALUES // 3)
    splits = index["split"].to_numpy()
    sample = features[np.flatnonzero(splits == "test")[:500]]
    others = features[np.flatnonzero(splits != "test")[:20_000]]
    squared = ((sample ** 2).sum(axis=1)[:, None] + (others ** 2).sum(axis=1)[None, :] - 2 * sample @ others.T)
    nearest = np.sqrt(np.maximum(squared.min(axis=1), 0) / THUMBNAIL_VALUES)
    return {"cross_split_pairs": within,
            "nearest_neighbour_rms_quantiles": {q: round(float(np.quantile(nearest, float(q))), 2)
                                                for q in ("0.01", "0.1", "0.5", "0.9")},
            "nearest_neighbour_among": f"{len(others)} train/val thumbnails, for {len(sample)} test thumbnails"}


def measure_near_duplicates(seed: int, both_sizes: tuple[int, ...], search_sizes: tuple[int, ...],
                            imagenet_shape: tuple[int, int]) -> dict[str, Any]:
    """Both methods at `both_sizes`, the search alone at `search_sizes` and at `imagenet_shape` (train, test);
    crowding and iid noise at the largest of `both_sizes`."""
    results: dict[str, Any] = {"sizes": {}}
    for size in both_sizes + search_sizes:
        counts = split_counts_for(size)
        index = thumbnail_index(synthetic_thumbnails(size, seed), counts, seed)
        results["sizes"][str(size)] = measure_methods(f"{size:,} thumbnails", index, counts,
                                                      exhaustive=size in both_sizes)
        if size == both_sizes[-1]:
            results["crowding"] = {"thumbnails": size, **crowding(index)}
            noise = thumbnail_index(np.random.default_rng(seed).integers(0, 256, (size, THUMBNAIL_VALUES),
                                                                         dtype=np.uint8), counts, seed)
            results["iid_noise"] = measure_methods(f"{size:,} noise thumbnails", noise, counts, exhaustive=False)
        del index
    counts = {"train": imagenet_shape[0], "val": 0, "test": imagenet_shape[1]}
    index = thumbnail_index(synthetic_thumbnails(sum(imagenet_shape), seed), counts, seed)
    results["imagenet_shape"] = measure_methods("ImageNet-shaped", index, counts, exhaustive=False)
    del index
    # The exhaustive comparison's cost per cross-split pair, at the largest size it ran (best of the settings).
    largest = results["sizes"][str(both_sizes[-1])]
    per_pair = largest["exhaustive"]["best_seconds"] / largest["cross_split_pairs"]
    results["exhaustive_seconds_per_cross_split_pair"] = per_pair
    for entry in [*results["sizes"].values(), results["imagenet_shape"]]:
        if "best_seconds" not in entry["exhaustive"]:
            entry["exhaustive"] = {"best_seconds": round(per_pair * entry["cross_split_pairs"], 3),
                                   "extrapolated": f"{per_pair:.3e} s per cross-split pair, measured at "
                                                   f"{both_sizes[-1]:,}"}
        entry["exhaustive_over_search"] = round(entry["exhaustive"]["best_seconds"] / entry["search"]["best_seconds"],
                                                1)
    return results


# ------------------------------------------------------------------------------------------------ index build
def _photo(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A smooth colour field (6x8 and 1/8-size random colours, upsampled) with grey detail (sigma 20 levels)."""
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height),
                                                                                   Image.Resampling.BICUBIC)
    middle = Image.fromarray(rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
                             ).resize((width, height), Image.Resampling.BILINEAR)
    pixels = 0.6 * np.asarray(base, np.float32) + 0.4 * np.asarray(middle, np.float32)
    pixels += rng.normal(0, 20, (height, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _write_jpegs(arguments: tuple[Path, int, int, int, tuple[int, int], tuple[int, int]]) -> int:
    """Files start..stop-1 of a tree (100 class folders), sizes uniform in the given ranges; total bytes."""
    root, seed, start, stop, widths, heights = arguments
    rng = np.random.default_rng([seed, start])
    written = 0
    for number in range(start, stop):
        buffer = io.BytesIO()
        _photo(int(rng.integers(widths[0], widths[1] + 1)), int(rng.integers(heights[0], heights[1] + 1)), rng
               ).save(buffer, "JPEG", quality=96)
        path = root / f"class{number % 100:03d}" / f"{number:07d}.jpg"
        path.write_bytes(buffer.getvalue())
        written += buffer.tell()
    return written


def write_jpeg_tree(root: Path, count: int, widths: tuple[int, int], heights: tuple[int, int], seed: int,
                    processes: int) -> tuple[pl.DataFrame, int]:
    """`count` JPEGs under root/classNNN/ (written by `processes` processes): their records and their bytes."""
    for label in range(100):
        (root / f"class{label:03d}").mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, count, max(2, processes * 8) + 1).astype(int)
    jobs = [(root, seed, int(a), int(b), widths, heights) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        total_bytes = sum(pool.map(_write_jpegs, jobs))
    records = pl.DataFrame({
        "relative_path": [f"class{number % 100:03d}/{number:07d}.jpg" for number in range(count)],
        "label": [number % 100 for number in range(count)],
        "classname": [f"class {number % 100}" for number in range(count)],
        "split": "train"})
    return records, total_bytes


def measure_index_build(scratch: Path, name: str, count: int, widths: tuple[int, int], heights: tuple[int, int],
                        seed: int, processes: int) -> dict[str, Any]:
    root = scratch / name
    started = time.perf_counter()
    records, total_bytes = write_jpeg_tree(root, count, widths, heights, seed, processes)
    write_seconds = time.perf_counter() - started
    timing, index = _timed(lambda: build_dataset_index(records, root), None)
    seconds = timing["seconds"]
    pixels = index.select((pl.col("image_width") * pl.col("image_height")).mean()).item()
    entry = {
        "files": count, "widths": list(widths), "heights": list(heights),
        "mean_kb": round(total_bytes / count / 1024, 1), "mean_pixels": round(float(pixels)),
        "all_decoded": bool(index["decodes"].all()),
        "seconds": round(seconds, 2), "files_per_second": round(count / seconds, 1),
        "seconds_per_10000_files": round(10_000 * seconds / count, 1),
        "mb_per_second": round(total_bytes / 2**20 / seconds, 1), "peak_rss_mb": timing["peak_rss_mb"],
        "peak_above_start_mb": timing["peak_above_start_mb"],
        "writing_seconds": round(write_seconds, 1),
    }
    print(f"index build, {name}: {count} files ({entry['mean_kb']} KB, {entry['mean_pixels']} px on average) in "
          f"{seconds:.1f} s: {entry['seconds_per_10000_files']} s per 10,000 files", flush=True)
    return entry


# ------------------------------------------------------------------------------------------------ recording
def warehouse_rows(result: dict[str, Any]) -> list[Any]:
    from models.warehouse import BenchmarkRow

    rows = []
    near = result["near_duplicates"]
    entries = {f"near-duplicates-{size}": entry for size, entry in near.get("sizes", {}).items()}
    if near:
        entries["near-duplicates-imagenet-shape"] = near["imagenet_shape"]
    for method, entry in entries.items():
        for variant in ("search", "exhaustive"):
            figures = entry[variant]
            seconds = figures["best_seconds"]
            timings = [timing for timing in figures.values() if isinstance(timing, dict)]
            rows.append(BenchmarkRow(
                method=method, variant=variant, batch_size=1, n_images=entry["thumbnails"], seconds=seconds,
                images_per_second=entry["thumbnails"] / seconds,
                peak_rss_mb=max([timing["peak_rss_mb"] for timing in timings] or [0.0]),
                rss_delta_mb=max([timing["peak_above_start_mb"] for timing in timings] or [0.0]),
                baseline_variant="exhaustive" if variant == "search" else None,
                details={**figures, "split_counts": entry["split_counts"],
                         "cross_split_pairs": entry["cross_split_pairs"], "pairs_found": entry["pairs_found"],
                         "measured": "extrapolated" not in figures}))
    for name, entry in result["index_build"].items():
        rows.append(BenchmarkRow(
            method=f"index-build-{name}", variant="index-build", batch_size=1, n_images=entry["files"],
            seconds=entry["seconds"], images_per_second=entry["files_per_second"], peak_rss_mb=entry["peak_rss_mb"],
            rss_delta_mb=entry["peak_above_start_mb"], details=entry))
    return rows


def record(result: dict[str, Any], workspace: Path) -> str:
    from models.warehouse import BenchmarkRun, workspace_warehouse_of

    run = BenchmarkRun(
        bench_run_id=result["bench_run_id"], started_at=datetime.fromisoformat(result["started_at"]),
        finished_at=datetime.fromisoformat(result["finished_at"]), git_commit=result["git_commit"],
        code_version=result["code_version"], device=result["device"],
        torch_version=importlib.metadata.version("torch"), backbone="none (data curation)",
        backbone_weights_sha256="none", weights_source="none",
        dataset="synthetic thumbnails and JPEG trees (bench/dataset_scale.py)", benchmark="dataset-scale",
        load_average=result["load_average_1min_before"])
    warehouse = workspace_warehouse_of(Workspace(workspace))
    warehouse.record_benchmark(run, warehouse_rows(result))
    return f"{warehouse.address}: run {run.bench_run_id}"


def summary(result: dict[str, Any]) -> str:
    near = result["near_duplicates"]
    measured = max((int(size) for size, entry in near.get("sizes", {}).items()
                    if "extrapolated" not in entry["exhaustive"]), default=0)
    lines = [f"near duplicates (best of BLAS 1 thread / all threads; exhaustive beyond {measured:,} extrapolated):",
             f"  {'thumbnails':>22} {'search s':>9} {'exhaustive s':>13} {'ratio':>7} {'pairs':>6}"] if near else []
    sizes = [(f"{int(size):,}", entry) for size, entry in near.get("sizes", {}).items()]
    for label, entry in sizes + ([("ImageNet 1.28M+50k", near["imagenet_shape"])] if near else []):
        search, exhaustive = entry["search"]["best_seconds"], entry["exhaustive"]["best_seconds"]
        lines.append(f"  {label:>22} {search:>9.2f} {exhaustive:>13.2f} {entry['exhaustive_over_search']:>6.1f}x "
                     f"{entry['pairs_found']:>6}")
    for name, entry in result["index_build"].items():
        lines.append(f"index build {name}: {entry['seconds_per_10000_files']} s per 10,000 files "
                     f"({entry['mean_kb']} KB, {entry['mean_pixels']} px); ImageNet train extrapolated "
                     f"{entry['imagenet_train_hours']} h, with val {entry['imagenet_train_val_hours']} h")
    return "\n".join(lines)


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--both-sizes", type=_sizes, default=BOTH_METHODS_SIZES,
                        help="thumbnail counts both methods run at (comma-separated)")
    parser.add_argument("--search-sizes", type=_sizes, default=SEARCH_ONLY_SIZES,
                        help="thumbnail counts the search alone runs at")
    parser.add_argument("--imagenet-shape", type=_sizes, default=(IMAGENET_TRAIN, IMAGENET_VAL),
                        help="train,test thumbnails of the ImageNet-shaped run")
    parser.add_argument("--index-files", type=int, default=100_000)
    parser.add_argument("--imagenet-files", type=int, default=1_000)
    parser.add_argument("--skip-near-duplicates", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="processes writing the JPEGs")
    parser.add_argument("--workspace", type=Path, default=default_workspace_root())
    parser.add_argument("--no-warehouse", action="store_true")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    arguments = parser.parse_args(argv)

    started_at = datetime.now(UTC)
    load_before = machine_load_warning()
    near = {} if arguments.skip_near_duplicates else measure_near_duplicates(
        arguments.seed, arguments.both_sizes, arguments.search_sizes, arguments.imagenet_shape)
    index_build = {}
    with tempfile.TemporaryDirectory(prefix="dataset-scale-") as scratch:
        for name, count, widths, heights in (("small-jpegs", arguments.index_files, (64, 500), (64, 375)),
                                             ("imagenet-size-jpegs", arguments.imagenet_files, (350, 450),
                                              (300, 400))):
            entry = measure_index_build(Path(scratch), name, count, widths, heights, arguments.seed,
                                        arguments.processes)
            entry["imagenet_train_hours"] = round(IMAGENET_TRAIN * entry["seconds"] / count / 3600, 2)
            entry["imagenet_train_val_hours"] = round((IMAGENET_TRAIN + IMAGENET_VAL) * entry["seconds"] / count
                                                      / 3600, 2)
            index_build[name] = entry
    result = {
        "benchmark": "dataset-scale",
        "bench_run_id": f"bench-{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}",
        "started_at": started_at.isoformat(), "finished_at": datetime.now(UTC).isoformat(),
        "git_commit": git_commit(), "code_version": library_code_version(),
        "device": f"cpu ({platform.machine()}, {os.cpu_count()} cores; BLAS threads per measurement: "
                  f"{', '.join(BLAS_SETTINGS)})",
        "load_average_1min_before": load_before,
        "near_duplicates": near,
        "index_build": index_build,
    }
    if not arguments.no_warehouse:
        result["warehouse"] = record(result, arguments.workspace)
    _write_json_atomically(arguments.output, result)
    print(summary(result))
    print(f"wrote {arguments.output}" + (f"; recorded in {result['warehouse']}" if "warehouse" in result else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
