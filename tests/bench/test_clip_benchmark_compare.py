"""The zero-shot evaluation comparison with CLIP_benchmark (bench/clip_benchmark_compare.py): its figures become one
`zero-shot-evaluation` run per backbone and dataset in the warehouse, and (where the `bench` extra is installed) a
tiny side-by-side run gives the same predictions as CLIP_benchmark and records them."""

import json

import pytest

from bench.clip_benchmark_compare import main, warehouse_runs
from models.warehouse import Warehouse


def measured_row(dataset: str, cold: float, warm: float, clip_benchmark: float) -> dict:
    images = 320
    return {
        "backbone": "tiny-clip", "weights": "random (seed 0)", "dataset": dataset, "images": images, "classes": 20,
        "loader_workers": 1, "repeats": 2,
        "seconds": {"promptlab_cold": [images / cold] * 2, "promptlab_warm": [images / warm] * 2,
                    "clip_benchmark": [images / clip_benchmark] * 2},
        "images_per_second": {"promptlab_cold": cold, "promptlab_warm": warm, "clip_benchmark": clip_benchmark},
        "cold_ratio": cold / clip_benchmark, "warm_ratio": warm / clip_benchmark, "predictions_differing": 0,
        "cold_equals_warm": True, "load_average_1min": [1.5, 1.7],
        "started_at": "2026-12-05T10:00:00+00:00", "finished_at": "2026-12-05T10:01:00+00:00",
        "weights_sha256": "cd" * 32, "peak_rss_mb": 800.0, "rss_delta_mb": 20.0, "peak_cuda_mb": None,
    }


def test_each_backbone_and_dataset_is_one_run_with_its_ratios_against_clip_benchmark(tmp_path):
    warehouse = Warehouse(tmp_path / "promptlab.duckdb", tmp_path / "predictions")
    rows = [measured_row("Shapes", 880.0, 100_000.0, 800.0), measured_row("Digits", 700.0, 6_000.0, 800.0)]
    for run, measured in warehouse_runs(rows, "cpu fp32", "abc123", "code1"):
        warehouse.record_benchmark(run, measured)
    latest = warehouse.query("SELECT dataset, variant, speedup, meets_target, load_average, benchmark "
                             "FROM latest_benchmark ORDER BY dataset, variant")
    by_key = {(r["dataset"].split(" ")[0], r["variant"]): r for r in latest.iter_rows(named=True)}
    assert len(by_key) == 6 and set(latest["benchmark"]) == {"zero-shot-evaluation"}
    assert by_key[("Shapes", "promptlab-cold")]["speedup"] == pytest.approx(1.1)
    assert by_key[("Shapes", "promptlab-cold")]["meets_target"] is True
    assert by_key[("Digits", "promptlab-cold")]["meets_target"] is False  # 0.875x of the 1x target
    assert by_key[("Digits", "promptlab-warm")]["speedup"] == pytest.approx(7.5)
    assert by_key[("Digits", "promptlab-warm")]["meets_target"] is False
    assert by_key[("Shapes", "clip-benchmark")]["speedup"] is None
    assert {r["load_average"] for r in by_key.values()} == {1.5}


def test_a_tiny_side_by_side_run_agrees_with_clip_benchmark_and_is_recorded(tmp_path):
    pytest.importorskip("clip_benchmark", reason="the `bench` extra (pip install -e '.[bench]') is not installed")
    output = tmp_path / "compare.json"
    assert main(["--backbones", "tiny-clip", "--datasets", "Digits", "--test-per-class", "2", "--repeats", "1",
                 "--threads", "1", "--workspace", str(tmp_path / "workspace"), "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    (row,) = result["rows"]
    assert row["images"] == 20 and row["predictions_differing"] == 0 and row["cold_equals_warm"]
    warehouse = Warehouse(tmp_path / "workspace" / "warehouse" / "promptlab.duckdb",
                          tmp_path / "workspace" / "warehouse" / "predictions")
    recorded = warehouse.query("SELECT variant, images_per_second FROM latest_benchmark ORDER BY variant")
    assert recorded["variant"].to_list() == ["clip-benchmark", "promptlab-cold", "promptlab-warm"]
    assert recorded["images_per_second"].to_list() == pytest.approx(
        [row["images_per_second"][tool] for tool in ("clip_benchmark", "promptlab_cold", "promptlab_warm")])
