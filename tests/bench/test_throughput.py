"""The throughput benchmark: its warehouse table (validated, all or nothing), its report section, the re-encoding
baseline (same logits and training as the cached path), and a tiny end-to-end run."""

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.measure import check_cocoop_equivalence
from bench.reencoding import ReencodingClassifier
from bench.throughput import BenchOptions, run_benchmark
from models.experiments import build_classifier
from models.prompting.features import encode_images
from models.prompting.training import OptimizationConfig, train_prompt_parameters
from models.report import build_report
from models.warehouse import BenchmarkRow, BenchmarkRun, MetricRow, RunRecord, Warehouse

CLASSNAMES = ["red", "green", "blue"]
TEMPLATES = ["a photo of a {}."]
STARTED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def warehouse_at(root: Path) -> Warehouse:
    return Warehouse(root / "warehouse" / "promptlab.duckdb", root / "warehouse" / "predictions")


def bench_run(run_id: str = "bench-1", minutes: int = 0) -> BenchmarkRun:
    return BenchmarkRun(run_id, STARTED + timedelta(minutes=minutes), STARTED + timedelta(minutes=minutes + 1),
                        "abc123", "code1", "cpu (2 threads)", "2.14.1", "tiny-clip", "ab" * 32, "random (seed 0)",
                        "Shapes (16 training images)")


def bench_rows(cached_speed: float = 1200.0) -> list[BenchmarkRow]:
    return [
        BenchmarkRow("coop", "cached", 32, 256, 256 / cached_speed, cached_speed, 900.0, 12.5,
                     baseline_variant="re-encoded", target_speedup=5.0, details={"epochs": 2}),
        BenchmarkRow("coop", "re-encoded", 32, 256, 1.0, 256.0, 950.0, 40.0),
        BenchmarkRow("vpt_shallow", "image-prompted", 4, 256, 2.0, 128.0, 980.0, 60.0),
        BenchmarkRow("cocoop", "batched", 32, 32, 0.1, 320.0, 990.0, 5.0, baseline_variant="per-image",
                     target_speedup=3.0),
        BenchmarkRow("cocoop", "per-image", 32, 32, 0.4, 80.0, 991.0, 4.0),
    ]


def benchmark_row_count(warehouse: Warehouse) -> int:
    if not warehouse.database_path.exists():
        return 0
    exists = warehouse.query("SELECT count(*) AS n FROM information_schema.tables "
                             "WHERE table_name = 'benchmark_results'")["n"][0]
    return int(warehouse.query("SELECT count(*) AS n FROM benchmark_results")["n"][0]) if exists else 0


# ------------------------------------------------------------------------------------------------- warehouse
def test_record_benchmark_writes_the_run_and_the_latest_view_computes_speedups(tmp_path):
    warehouse = warehouse_at(tmp_path)
    warehouse.record_benchmark(bench_run("bench-old", minutes=0), bench_rows(cached_speed=512.0))
    warehouse.record_benchmark(bench_run("bench-new", minutes=10), bench_rows(cached_speed=1024.0))
    assert benchmark_row_count(warehouse) == 10
    latest = warehouse.query("SELECT * FROM latest_benchmark ORDER BY method, variant")
    assert set(latest["bench_run_id"]) == {"bench-new"}
    by_key = {(r["method"], r["variant"]): r for r in latest.iter_rows(named=True)}
    assert by_key[("coop", "cached")]["speedup"] == pytest.approx(4.0)
    assert by_key[("coop", "cached")]["meets_target"] is False
    assert by_key[("cocoop", "batched")]["speedup"] == pytest.approx(4.0)
    assert by_key[("cocoop", "batched")]["meets_target"] is True
    assert by_key[("coop", "re-encoded")]["speedup"] is None
    row = by_key[("coop", "cached")]
    assert (row["git_commit"], row["device"], row["torch_version"], row["backbone_weights_sha256"]) == (
        "abc123", "cpu (2 threads)", "2.14.1", "ab" * 32)
    assert json.loads(row["details"]) == {"epochs": 2}


@pytest.mark.parametrize("field_name, value, message", [
    ("images_per_second", float("nan"), r"rows\[2\]\.images_per_second"),
    ("images_per_second", 0.0, r"rows\[2\]\.images_per_second"),
    ("variant", "warm", r"rows\[2\]\.variant"),
    ("batch_size", 0, r"rows\[2\]\.batch_size"),
    ("peak_rss_mb", -1.0, r"rows\[2\]\.peak_rss_mb"),
    ("method", "", r"rows\[2\]\.method"),
    ("details", {"bad": object()}, r"rows\[2\]\.details"),
    ("baseline_variant", "cached", r"rows\[2\]\.baseline_variant"),
])
def test_a_bad_row_fails_naming_the_field_and_nothing_is_written(tmp_path, field_name, value, message):
    warehouse = warehouse_at(tmp_path)
    rows = bench_rows()
    rows[2] = replace(rows[2], **{field_name: value})
    with pytest.raises(ValueError, match=message):
        warehouse.record_benchmark(bench_run(), rows)
    assert benchmark_row_count(warehouse) == 0


def test_a_bad_run_field_or_a_repeated_run_id_writes_nothing(tmp_path):
    warehouse = warehouse_at(tmp_path)
    with pytest.raises(ValueError, match=r"run\.device"):
        warehouse.record_benchmark(replace(bench_run(), device=""), bench_rows())
    with pytest.raises(ValueError, match=r"rows\[0\]\.baseline_variant"):
        warehouse.record_benchmark(bench_run(), bench_rows()[:1])  # its re-encoded baseline is missing
    assert benchmark_row_count(warehouse) == 0
    warehouse.record_benchmark(bench_run(), bench_rows())
    with pytest.raises(ValueError, match="already recorded"):
        warehouse.record_benchmark(bench_run(), bench_rows()[2:3])
    assert benchmark_row_count(warehouse) == 5


def test_several_runs_go_in_together_or_not_at_all(tmp_path):
    warehouse = warehouse_at(tmp_path)
    broken = bench_rows()
    broken[1] = replace(broken[1], images_per_second=-1.0)
    with pytest.raises(ValueError, match=r"rows\[1\]\.images_per_second"):  # the second run is bad: no first run
        warehouse.record_benchmarks([(bench_run("first", minutes=0), bench_rows()), (bench_run("second", minutes=1),
                                                                                      broken)])
    with pytest.raises(ValueError, match="more than once"):
        warehouse.record_benchmarks([(bench_run("same", minutes=0), bench_rows()),
                                     (bench_run("same", minutes=1), bench_rows())])
    assert benchmark_row_count(warehouse) == 0
    warehouse.record_benchmarks([(bench_run("first", minutes=0), bench_rows()), (bench_run("second", minutes=1),
                                                                                  bench_rows())])
    assert benchmark_row_count(warehouse) == 10


def zero_shot_run(run_id: str, minutes: int, backbone: str = "tiny-clip") -> BenchmarkRun:
    return replace(bench_run(run_id, minutes), benchmark="zero-shot-evaluation", backbone=backbone,
                   dataset="Shapes (320 test images)", load_average=1.25)


def zero_shot_rows(cold_speed: float = 900.0) -> list[BenchmarkRow]:
    return [
        BenchmarkRow("zero_shot", "promptlab-cold", 64, 320, 320 / cold_speed, cold_speed, 900.0, 30.0,
                     baseline_variant="clip-benchmark", target_speedup=1.0, details={"predictions_differing": 0}),
        BenchmarkRow("zero_shot", "promptlab-warm", 64, 320, 0.003, 100_000.0, 900.0, 30.0,
                     baseline_variant="clip-benchmark", target_speedup=10.0),
        BenchmarkRow("zero_shot", "clip-benchmark", 64, 320, 0.4, 800.0, 900.0, 30.0),
    ]


def test_each_benchmark_keeps_its_latest_run_per_backbone_device_and_dataset(tmp_path):
    warehouse = warehouse_at(tmp_path)
    warehouse.record_benchmark(bench_run("training-old", minutes=0), bench_rows(cached_speed=512.0))
    warehouse.record_benchmark(zero_shot_run("zero-shot-tiny", minutes=5), zero_shot_rows(cold_speed=720.0))
    warehouse.record_benchmark(replace(bench_run("training-vitb16", minutes=7), backbone="ViT-B-16"), bench_rows())
    warehouse.record_benchmark(bench_run("training-new", minutes=10), bench_rows(cached_speed=1024.0))
    latest = warehouse.query("SELECT * FROM latest_benchmark")
    assert set(latest["bench_run_id"]) == {"zero-shot-tiny", "training-vitb16", "training-new"}
    cold = latest.filter((latest["variant"] == "promptlab-cold")).row(0, named=True)
    assert cold["benchmark"] == "zero-shot-evaluation" and cold["load_average"] == 1.25
    assert cold["speedup"] == pytest.approx(0.9) and cold["meets_target"] is False
    warm = latest.filter((latest["variant"] == "promptlab-warm")).row(0, named=True)
    assert warm["speedup"] == pytest.approx(125.0) and warm["meets_target"] is True
    assert set(latest.filter(latest["benchmark"] == "training")["load_average"]) == {None}


def test_a_variant_of_another_benchmark_or_a_bad_load_is_refused(tmp_path):
    warehouse = warehouse_at(tmp_path)
    with pytest.raises(ValueError, match=r"rows\[0\]\.variant: 'promptlab-cold' is not one of the training"):
        warehouse.record_benchmark(bench_run(), zero_shot_rows())
    with pytest.raises(ValueError, match=r"run\.benchmark: 'inference'"):
        warehouse.record_benchmark(replace(bench_run(), benchmark="inference"), bench_rows())
    with pytest.raises(ValueError, match=r"run\.load_average"):
        warehouse.record_benchmark(replace(zero_shot_run("z", 0), load_average=float("nan")), zero_shot_rows())
    assert benchmark_row_count(warehouse) == 0


def test_a_warehouse_from_before_benchmarks_were_named_reads_its_rows_as_the_training_benchmark(tmp_path):
    import duckdb

    from models.warehouse.benchmark import BENCHMARK_SCHEMA, benchmark_frame

    warehouse = warehouse_at(tmp_path)
    warehouse.ensure_schema()
    old_schema = BENCHMARK_SCHEMA.split("-- warehouses written before")[0].replace(
        "    benchmark VARCHAR NOT NULL DEFAULT 'training',\n    load_average DOUBLE,\n", "")
    assert "load_average" not in old_schema
    with duckdb.connect(str(warehouse.database_path)) as connection:
        connection.execute("DROP VIEW IF EXISTS latest_benchmark; DROP TABLE benchmark_results")
        connection.execute(old_schema)
        old_rows = benchmark_frame(bench_run("from-before"), bench_rows()).drop("benchmark", "load_average")
        connection.register("old_rows", old_rows.to_arrow())
        connection.execute("INSERT INTO benchmark_results BY NAME SELECT * FROM old_rows")
    warehouse.record_benchmark(zero_shot_run("zero-shot", 5), zero_shot_rows())
    latest = warehouse.query("SELECT bench_run_id, benchmark, count(*) AS n FROM latest_benchmark "
                             "GROUP BY ALL ORDER BY bench_run_id")
    assert latest.rows() == [("from-before", "training", 5), ("zero-shot", "zero-shot-evaluation", 3)]


# ---------------------------------------------------------------------------------------------------- report
def record_one_evaluation(warehouse: Warehouse) -> None:
    warehouse.record_run(RunRecord("run-1", "evaluation", "Shapes", "coop_16shot_seed1", "Shapes|coop", "coop", 16,
                                   1, {}, None, "code1", "cfg", "abc123", "tiny-clip", "ab" * 32, "data",
                                   TEMPLATES, STARTED, STARTED),
                         [MetricRow("test", "top1_accuracy", 0.5)])


def test_the_report_shows_the_latest_benchmark_or_how_to_run_one(tmp_path):
    warehouse = warehouse_at(tmp_path)
    record_one_evaluation(warehouse)
    build_report(warehouse, tmp_path / "before.html")
    before = (tmp_path / "before.html").read_text()
    assert "<h2>Throughput</h2>" in before and "make bench" in before
    warehouse.record_benchmark(bench_run(), bench_rows(cached_speed=1024.0))
    build_report(warehouse, tmp_path / "after.html")
    after = (tmp_path / "after.html").read_text()
    section = after[after.index("<h2>Throughput</h2>"):]
    section = section[: section.index("</section>")]
    assert "bench-1" in section and "1024.0" in section and "256.0" in section
    assert "4.00x over re-encoded" in section and "5x: missed" in section and "3x: met" in section
    assert "coop cached reached 4.00x of its 5x target" in section
    assert "<img" in section
    warehouse.record_benchmark(zero_shot_run("zero-shot-1", 5), zero_shot_rows(cold_speed=720.0))
    build_report(warehouse, tmp_path / "both.html")
    both = (tmp_path / "both.html").read_text()
    section = both[both.index("<h2>Throughput</h2>"):]
    section = section[: section.index("</section>")]
    assert "bench-1" in section and "zero-shot-1" in section and "CLIP_benchmark" in section
    assert "0.90x over clip-benchmark" in section and "1-minute load 1.25" in section
    assert "zero_shot promptlab-cold reached 0.90x of its 1x target" in section


# --------------------------------------------------------------------------------------- re-encoding baseline
@pytest.fixture(scope="module")
def toy_images():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(12)]
    return images, torch.tensor([i % 3 for i in range(12)])


@pytest.mark.parametrize("method", ["coop", "prograd"])
def test_the_reencoding_wrapper_gives_the_cached_paths_logits_and_training(random_tiny_clip, toy_images, method):
    backbone = random_tiny_clip
    images, labels = toy_images
    features = encode_images(backbone.model, backbone.preprocess_eval, images)
    pixels = torch.stack([backbone.preprocess_eval(image) for image in images])
    cached = build_classifier(backbone.model, backbone.tokenizer, method, {"n_context": 4}, CLASSNAMES, TEMPLATES)
    uncached = ReencodingClassifier(
        build_classifier(backbone.model, backbone.tokenizer, method, {"n_context": 4}, CLASSNAMES, TEMPLATES),
        backbone.model)
    with torch.no_grad():
        torch.testing.assert_close(uncached(pixels), cached(features), rtol=1e-5, atol=1e-5)
    config = OptimizationConfig(epochs=2, batch_size=4, learning_rate=0.05, seed=3)
    cached_history = train_prompt_parameters(cached, features, labels, config)
    uncached_history = train_prompt_parameters(uncached, pixels, labels, config)
    assert cached_history.steps == uncached_history.steps == 6
    assert not torch.equal(cached.context, cached.context.new_zeros(cached.context.shape))
    torch.testing.assert_close(uncached.classifier.context, cached.context, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(uncached_history.epoch_losses, cached_history.epoch_losses, rtol=1e-5)
    assert not backbone.model.training  # the frozen tower stays in eval mode while the wrapper trains


def test_cocoop_equivalence_check_passes_and_catches_a_difference(random_tiny_clip, toy_images):
    backbone = random_tiny_clip
    images, labels = toy_images
    features = encode_images(backbone.model, backbone.preprocess_eval, images[:4])
    classifier = build_classifier(backbone.model, backbone.tokenizer, "cocoop", {}, CLASSNAMES, TEMPLATES).train()
    check = check_cocoop_equivalence(classifier, features, labels[:4])
    assert check["max_logit_difference"] <= 1e-5 and check["batch"] == 4
    with pytest.raises(ValueError, match="differ"):
        check_cocoop_equivalence(classifier, features, labels[:4], tolerance=-1.0)


# ----------------------------------------------------------------------------------------------- end to end
def tiny_options(tmp_path: Path, **changes) -> BenchOptions:
    return replace(BenchOptions(workspace=tmp_path / "workspace", methods=("coop", "vpt_shallow"), device="cpu",
                                epochs=1, repeats=1, min_seconds=0.0, max_epochs=1, images_per_class=2,
                                isolate=False, output=tmp_path / "results" / "latest.json"), **changes)


def test_a_tiny_benchmark_writes_every_row_to_the_warehouse_and_the_json(tmp_path):
    result = run_benchmark(tiny_options(tmp_path))
    warehouse = warehouse_at(tmp_path / "workspace")
    latest = warehouse.query("SELECT * FROM latest_benchmark ORDER BY method, variant")
    assert [(r["method"], r["variant"]) for r in latest.iter_rows(named=True)] == [
        ("coop", "cached"), ("coop", "re-encoded"), ("vpt_shallow", "image-prompted")]
    assert set(latest["bench_run_id"]) == {result.run.bench_run_id}
    assert latest["batch_size"].to_list() == [32, 32, 4]  # the catalog's published batch sizes
    assert all(value > 0 for value in latest["images_per_second"])
    assert latest["weights_source"][0].startswith("random")  # the empty workspace has no pretrained tiny-clip
    written = json.loads((tmp_path / "results" / "latest.json").read_text())
    assert written["run"]["bench_run_id"] == result.run.bench_run_id
    assert [s["method"] for s in written["speedups"]] == ["coop"]
    assert written["speedups"][0]["speedup"] == pytest.approx(
        latest["images_per_second"][0] / latest["images_per_second"][1])


def test_batched_and_per_image_cocoop_are_measured_side_by_side_after_the_equivalence_check(tmp_path):
    result = run_benchmark(tiny_options(tmp_path, methods=("cocoop",), record=False))
    rows = {row.variant: row for row in result.rows}
    assert set(rows) == {"cached", "re-encoded", "batched", "per-image"}
    assert (rows["batched"].baseline_variant, rows["batched"].target_speedup) == ("per-image", 3.0)
    assert (rows["cached"].baseline_variant, rows["cached"].target_speedup) == ("re-encoded", None)
    from models.embedded.benchmark import embedded_classnames

    # CoCoOp's batch: the bench's 32, or fewer when the Shapes sample (2 images per class) is smaller
    expected_batch = min(32, 2 * len(embedded_classnames("Shapes")))
    assert rows["batched"].batch_size == rows["per-image"].batch_size == expected_batch
    assert result.checks["cocoop_equivalence"]["max_logit_difference"] <= 1e-5
    assert len(rows["batched"].details["timings_seconds"]) == len(rows["per-image"].details["timings_seconds"])


def test_a_failed_measurement_records_nothing(tmp_path, monkeypatch):
    calls = []

    def fail_on_the_second(plan, measurement, backbone=None):
        calls.append(measurement)
        if len(calls) == 2:
            raise RuntimeError("simulated measurement failure")
        return {measurement.variant: {"n_images": 4, "seconds": 1.0, "images_per_second": 4.0, "peak_rss_mb": 1.0,
                                      "rss_delta_mb": 0.0, "peak_cuda_mb": None, "details": {}}}

    monkeypatch.setattr("bench.throughput.run_measurement", fail_on_the_second)
    with pytest.raises(RuntimeError, match="simulated"):
        run_benchmark(tiny_options(tmp_path))
    assert len(calls) == 2
    assert benchmark_row_count(warehouse_at(tmp_path / "workspace")) == 0
    assert not (tmp_path / "results" / "latest.json").exists()


def test_an_isolated_measurement_runs_in_a_fresh_process_and_reports_its_memory(tmp_path):
    result = run_benchmark(tiny_options(tmp_path, methods=("vpt_shallow",), isolate=True))
    (row,) = result.rows
    assert (row.method, row.variant, row.batch_size) == ("vpt_shallow", "image-prompted", 4)
    assert row.details["isolation"] == "fresh subprocess"
    # a fresh interpreter with torch loaded: well above nothing, and the training adds a non-negative amount
    assert row.peak_rss_mb > 100 and row.rss_delta_mb >= 0
    assert row.peak_rss_mb - row.rss_delta_mb == pytest.approx(row.details["rss_baseline_mb"], abs=0.1)
    assert benchmark_row_count(warehouse_at(tmp_path / "workspace")) == 1


def test_published_prompt_depths_are_lowered_to_the_tower_they_prompt():
    from dataclasses import dataclass

    from bench.throughput import fit_prompt_depths

    @dataclass(frozen=True)
    class DeepParameters:
        text_prompt_depth: int = 9
        vision_prompt_depth: int = 12
        prompt_depth: int = 2
        n_context: int = 16

    fitted, adjusted = fit_prompt_depths(DeepParameters, {"prompt_depth": 12}, text_layers=3, vision_layers=4,
                                         unqualified_limit=4)
    assert fitted == {"text_prompt_depth": 3, "vision_prompt_depth": 4, "prompt_depth": 4}
    assert adjusted == {"text_prompt_depth": [9, 3], "vision_prompt_depth": [12, 4], "prompt_depth": [12, 4]}
    fitted, adjusted = fit_prompt_depths(DeepParameters, {}, text_layers=12, vision_layers=12, unqualified_limit=12)
    assert fitted == {} and adjusted == {}  # depths that fit are left as published


@pytest.mark.parametrize("load, warned", [(3.5, True), (0.2, False)])
def test_a_busy_machine_is_warned_about_before_measuring(monkeypatch, capsys, load, warned):
    import bench.throughput as throughput

    monkeypatch.setattr(throughput.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(throughput.os, "cpu_count", lambda: 2)
    assert throughput.machine_load_warning() == load
    assert ("the machine is busy (1-minute load 3.5 on 2 cores)" in capsys.readouterr().err) is warned
