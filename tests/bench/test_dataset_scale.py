"""The dataset-scale benchmark: its synthetic thumbnails are crowded as photographs are (unlike noise), and a tiny
end-to-end run measures both near-duplicate methods, extrapolates the exhaustive one, builds indexes of written JPEG
trees and records it all in the warehouse."""

import json

import numpy as np
import polars as pl
import pytest

from bench.dataset_scale import main, split_counts_for, synthetic_thumbnails, thumbnail_index
from models.data.near_duplicates import THUMBNAIL_VALUES, NearDuplicatePolicy, find_near_duplicates
from models.warehouse import workspace_warehouse_of
from models.workspace import Workspace


def test_synthetic_thumbnails_are_crowded_where_noise_is_not():
    thumbnails = synthetic_thumbnails(4000, seed=0)
    noise = np.random.default_rng(0).integers(0, 256, (4000, THUMBNAIL_VALUES), dtype=np.uint8)
    assert thumbnails.shape == (4000, THUMBNAIL_VALUES) and thumbnails.dtype == np.uint8

    def nearest_rms(values):
        features = values[:, :].astype(float) * np.tile([1.0, 0.25, 0.25], THUMBNAIL_VALUES // 3)
        a, b = features[:200], features[200:]
        squared = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2 * a @ b.T
        return np.sqrt(np.maximum(squared.min(axis=1), 0) / THUMBNAIL_VALUES)

    # Photograph-like: many distinct pictures a few thresholds (1.8) apart; noise: every one ~30 thresholds away.
    assert np.median(nearest_rms(thumbnails)) < 20 < np.min(nearest_rms(noise))
    assert (nearest_rms(thumbnails) < 6).mean() > 0.02


def test_planted_copies_are_in_test_and_copy_train():
    counts = split_counts_for(10_000)
    assert counts == {"train": 4000, "val": 1000, "test": 5000}
    index = thumbnail_index(synthetic_thumbnails(10_000, seed=2), counts, seed=2)
    assert index["split"].value_counts().sort("split").rows() == [("test", 5000), ("train", 4000), ("val", 1000)]
    pairs, _ = find_near_duplicates(index, NearDuplicatePolicy())
    planted = pairs.filter((pl.col("split_a") == "train") & (pl.col("split_b") == "test"))
    assert planted.height >= 5  # 0.1% of 5000


def test_a_tiny_run_records_both_methods_their_ratio_and_the_index_build(tmp_path, capsys):
    output = tmp_path / "dataset-scale.json"
    assert main(["--both-sizes", "1500,3000", "--search-sizes", "6000", "--imagenet-shape", "6000,300",
                 "--index-files", "40", "--imagenet-files", "8", "--processes", "1",
                 "--workspace", str(tmp_path / "workspace"), "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    near = result["near_duplicates"]
    assert near["sizes"]["3000"]["same_pairs_as_exhaustive"] and near["sizes"]["3000"]["pairs_found"] >= 1
    assert set(near["sizes"]["3000"]["search"]) == {"1 thread", "all threads", "best_seconds"}
    extrapolated = near["sizes"]["6000"]["exhaustive"]
    assert extrapolated["best_seconds"] == pytest.approx(near["exhaustive_seconds_per_cross_split_pair"]
                                                         * near["sizes"]["6000"]["cross_split_pairs"], rel=1e-3)
    assert near["imagenet_shape"]["cross_split_pairs"] == 6000 * 300
    small = result["index_build"]["small-jpegs"]
    assert small["files"] == 40 and small["all_decoded"] and 64 * 64 <= small["mean_pixels"] <= 500 * 375
    assert result["index_build"]["imagenet-size-jpegs"]["imagenet_train_hours"] > 0
    assert "ImageNet 1.28M+50k" in capsys.readouterr().out
    recorded = workspace_warehouse_of(Workspace(tmp_path / "workspace")).query(
        "SELECT method, variant, speedup, baseline_variant FROM latest_benchmark WHERE benchmark = 'dataset-scale'")
    rows = {(r["method"], r["variant"]): r for r in recorded.iter_rows(named=True)}
    assert set(rows) == {*((f"near-duplicates-{n}", v) for n in (1500, 3000, 6000, "imagenet-shape")
                           for v in ("search", "exhaustive")),
                         ("index-build-small-jpegs", "index-build"), ("index-build-imagenet-size-jpegs", "index-build")}
    search = rows[("near-duplicates-6000", "search")]
    assert search["baseline_variant"] == "exhaustive"
    assert search["speedup"] == pytest.approx(near["sizes"]["6000"]["exhaustive_over_search"], rel=0.06)
