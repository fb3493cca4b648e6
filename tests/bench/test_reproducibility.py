"""The reproducibility check's comparison (bench/reproducibility.py): two warehouses holding the same results under
other run ids and times compare equal; a changed bit in a metric, a prediction or the report is found and named."""

import struct
from datetime import UTC, datetime, timedelta

import polars as pl

from bench.reproducibility import differences, report_contents, report_differences, warehouse_contents
from models.report import build_report
from models.warehouse import MetricRow, RunRecord, Warehouse

STARTED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def record(root, run_ids: tuple[str, str], minutes: int, accuracy: float = 0.5, confidence: float = 0.75):
    warehouse = Warehouse(root / "warehouse" / "promptlab.duckdb", root / "warehouse" / "predictions")
    for number, (run_id, experiment) in enumerate(zip(run_ids, ("zeroshot", "coop_16shot_seed1"))):
        started = STARTED + timedelta(minutes=minutes + number)
        run = RunRecord(run_id, "evaluation", "Shapes", experiment, f"Shapes|{experiment}", experiment.split("_")[0],
                        16, 1, {"epochs": 2}, f"dagster-{run_id}", "code1", "cfg", "abc123", "tiny-clip", "ab" * 32,
                        "data", ["a photo of a {}."], started, started + timedelta(seconds=30))
        predictions = pl.DataFrame({"split": ["test", "test"], "relative_path": ["a.png", "b.png"], "label": [0, 1],
                                    "predicted_label": [0, 0], "confidence": [confidence, 0.5]})
        warehouse.record_run(run, [MetricRow("test", "top1_accuracy", accuracy + number * 0.25)],
                             predictions=predictions)
    build_report(warehouse, root / "reports" / "report.html")
    return warehouse


def contents(root):
    return warehouse_contents(root / "warehouse" / "promptlab.duckdb", root / "warehouse" / "predictions")


def report(root):
    return report_contents(root / "reports" / "report.html", root / "warehouse" / "promptlab.duckdb")


def test_the_same_results_under_other_run_ids_and_times_compare_equal(tmp_path):
    record(tmp_path / "one", ("run-a", "run-b"), minutes=0)
    record(tmp_path / "other", ("run-x", "run-y"), minutes=90)
    assert differences(contents(tmp_path / "one"), contents(tmp_path / "other")) == []
    assert report_differences(report(tmp_path / "one"), report(tmp_path / "other")) == []
    assert any(name.startswith("predictions:evaluation|Shapes|Shapes|coop") for name in contents(tmp_path / "one"))


def test_one_bit_of_a_metric_or_a_confidence_is_a_difference(tmp_path):
    record(tmp_path / "one", ("run-a", "run-b"), minutes=0)
    next_up = struct.unpack(">d", struct.pack(">q", struct.unpack(">q", struct.pack(">d", 0.5))[0] + 1))[0]
    record(tmp_path / "metric", ("run-x", "run-y"), minutes=0, accuracy=next_up)
    record(tmp_path / "confidence", ("run-p", "run-q"), minutes=0, confidence=0.75 + 2 ** -50)
    found = differences(contents(tmp_path / "one"), contents(tmp_path / "metric"))
    assert len(found) == 1 and found[0].startswith("table:metrics: 2 rows only in the first, 2 only in the second")
    found = differences(contents(tmp_path / "one"), contents(tmp_path / "confidence"))
    assert {line.split(":")[0] for line in found} == {"predictions"} and len(found) == 2
    assert report_differences(report(tmp_path / "one"), report(tmp_path / "metric")) == []  # 50.0 % both: same HTML
    changed = report(tmp_path / "one").replace("50.0", "50.1", 1)
    assert report_differences(report(tmp_path / "one"), changed)[0].startswith("report line")


def test_a_timing_metric_must_be_there_but_its_value_is_not_compared(tmp_path):
    from models.warehouse import Warehouse

    for name, speed in (("one", 10.0), ("other", 12.5), ("none", None)):
        warehouse = Warehouse(tmp_path / name / "warehouse" / "promptlab.duckdb",
                              tmp_path / name / "warehouse" / "predictions")
        run = RunRecord(f"run-{name}", "test_time", "Shapes", "tpt-zeroshot-s1", "Shapes|tpt-zeroshot-s1", "coop", 0,
                        1, {}, None, "code1", "cfg", "abc123", "tiny-clip", "ab" * 32, "data", ["{}"], STARTED,
                        STARTED)
        metrics = [MetricRow("test", "top1_accuracy", 0.5)]
        warehouse.record_run(run, metrics + ([MetricRow("test", "images_per_second", speed)] if speed else []))
    assert differences(contents(tmp_path / "one"), contents(tmp_path / "other")) == []
    assert differences(contents(tmp_path / "one"), contents(tmp_path / "none"))
