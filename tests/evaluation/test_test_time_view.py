"""The view test_time_seed_results: tuned runs with their reference rows, in domain and on the shifted variants, the
reference rows scored on the images the tuned runs scored."""

from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
from evaluation_synthetic import make_run
from report_numbers import numbers_before, numbers_by_section

from models.evaluation.test_time_table import tpt_tables
from models.report import build_report
from models.warehouse import MetricRow, Warehouse

IMAGES = [f"shape/test_{i}.png" for i in range(4)]


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    warehouse = Warehouse(tmp_path / "promptlab.duckdb", tmp_path / "predictions")
    warehouse.ensure_schema()
    return warehouse


def _record(warehouse, run_id, correct, images=IMAGES, **fields):
    """A run whose test predictions are right on the images flagged in `correct`; top-1 = their mean."""
    run = make_run(run_id, **{k: v for k, v in fields.items() if k in ("stage", "dataset", "method", "shots", "seed",
                                                                        "options")})
    extra = {k: v for k, v in fields.items() if k in ("experiment_key", "partition_key", "source_dataset")}
    predictions = pl.DataFrame({"split": ["test"] * len(images), "relative_path": images, "label": [0] * len(images),
                                "predicted_label": [0 if ok else 1 for ok in correct],
                                "confidence": [0.9] * len(images)})
    warehouse.record_run(replace(run, **extra), [MetricRow("test", "top1_accuracy", sum(correct) / len(correct))],
                         predictions=predictions)


def fill_test_time_warehouse(warehouse: Warehouse) -> Warehouse:
    """Zero-shot on three datasets, a CoOp checkpoint in domain and transferred to ShapesNoisy, and TPT from zero-shot
    and from that checkpoint on Shapes and ShapesNoisy (the first two images only)."""
    for dataset in ("Shapes", "ShapesNoisy", "Digits"):
        _record(warehouse, f"zs-{dataset}", [True, False, True, True], dataset=dataset, method="zero_shot", shots=0,
                seed=0, experiment_key="zeroshot", partition_key=f"{dataset}|zeroshot")
    _record(warehouse, "coop-in", [True, True, False, False], dataset="Shapes", experiment_key="coop-k16-s1",
            partition_key="Shapes|coop-k16-s1")
    _record(warehouse, "coop-dg", [False, True, True, True], stage="domain_generalization", dataset="ShapesNoisy",
            experiment_key="coop-k16-s1", partition_key="Shapes|coop-k16-s1", source_dataset="Shapes")
    _record(warehouse, "coop-other", [True] * 4, dataset="Shapes", experiment_key="coop-k4-s1",  # no run starts there
            partition_key="Shapes|coop-k4-s1")
    for dataset, source in (("Shapes", None), ("ShapesNoisy", "Shapes")):
        for key, method, start in (("tpt-zeroshot-s1", "zero_shot", "zeroshot"),
                                   ("tpt-coop-k16-s1", "coop", "coop-k16-s1")):
            # max_test_images: the tuned runs scored the first two images only
            _record(warehouse, f"{key}-{dataset}", [True, True], images=IMAGES[:2], stage="test_time", dataset=dataset,
                    method=method, shots=0 if method == "zero_shot" else 16, seed=1, experiment_key=start,
                    partition_key=f"Shapes|{key}", source_dataset=source,
                    options={"test_time": {"mode": "tpt", "run": key}})
    return warehouse


def test_tuned_runs_come_with_zero_shot_and_their_starting_checkpoint_on_the_same_images(warehouse):
    fill_test_time_warehouse(warehouse)
    rows = warehouse.query("SELECT source_dataset, dataset, mode, start, seed, value FROM test_time_seed_results "
                           "ORDER BY dataset, mode NULLS FIRST, start").rows()
    assert rows == [
        ("Shapes", "Shapes", None, "coop-k16-s1", 1, 1.0), ("Shapes", "Shapes", None, "zeroshot", 0, 0.5),
        ("Shapes", "Shapes", "tpt", "coop-k16-s1", 1, 1.0), ("Shapes", "Shapes", "tpt", "zeroshot", 1, 1.0),
        ("Shapes", "ShapesNoisy", None, "coop-k16-s1", 1, 0.5), ("Shapes", "ShapesNoisy", None, "zeroshot", 0, 0.5),
        ("Shapes", "ShapesNoisy", "tpt", "coop-k16-s1", 1, 1.0), ("Shapes", "ShapesNoisy", "tpt", "zeroshot", 1, 1.0),
    ]  # on the two scored images; Digits (no test-time run scored it) and the checkpoint no run starts from stay out
    (table,) = tpt_tables(warehouse.query("SELECT * FROM test_time_seed_results"))
    assert table.datasets == ["Shapes", "ShapesNoisy"]
    assert table.rows["TPT + coop-k16"]["shifts"].mean == pytest.approx(1.0)
    assert table.rows["coop-k16"]["average"].mean == pytest.approx(0.75)


def test_the_reports_numbers_are_the_single_file_reports(warehouse, tmp_path):
    """The report over this warehouse (test-time, domain generalization, few-shot checks): numbers unchanged since the
    report became a package (report_numbers.py)."""
    fill_test_time_warehouse(warehouse)
    build_report(warehouse, tmp_path / "report.html")
    expected = numbers_before("test_time")
    expected.pop("Limited-label settings and pseudolabels", None)  # zero-shot's reference rows alone: no section now
    assert numbers_by_section((tmp_path / "report.html").read_text(encoding="utf-8")) == expected
