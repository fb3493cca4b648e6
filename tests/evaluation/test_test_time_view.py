"""The view test_time_seed_results: tuned runs with their reference rows, in domain and on the shifted variants."""

from dataclasses import replace
from pathlib import Path

import pytest
from evaluation_synthetic import make_run

from models.evaluation.test_time_table import tpt_tables
from models.warehouse import MetricRow, Warehouse


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    warehouse = Warehouse(tmp_path / "promptlab.duckdb", tmp_path / "predictions")
    warehouse.ensure_schema()
    return warehouse


def _record(warehouse, run_id, top1, **fields):
    run = make_run(run_id, **{k: v for k, v in fields.items() if k in ("stage", "dataset", "method", "shots", "seed",
                                                                        "options")})
    extra = {k: v for k, v in fields.items() if k in ("experiment_key", "partition_key", "source_dataset")}
    warehouse.record_run(replace(run, **extra), [MetricRow("test", "top1_accuracy", top1)])


def test_tuned_runs_come_with_zero_shot_and_their_starting_checkpoint_on_the_source_and_the_shifts(warehouse):
    for dataset, value in (("Shapes", 0.8), ("ShapesNoisy", 0.4), ("Digits", 0.9)):
        _record(warehouse, f"zs-{dataset}", value, dataset=dataset, method="zero_shot", shots=0, seed=0,
                experiment_key="zeroshot", partition_key=f"{dataset}|zeroshot")
    _record(warehouse, "coop-in", 0.85, dataset="Shapes", experiment_key="coop-k16-s1",
            partition_key="Shapes|coop-k16-s1")
    _record(warehouse, "coop-dg", 0.45, stage="domain_generalization", dataset="ShapesNoisy",
            experiment_key="coop-k16-s1", partition_key="Shapes|coop-k16-s1", source_dataset="Shapes")
    _record(warehouse, "coop-other", 0.99, dataset="Shapes", experiment_key="coop-k4-s1",  # no run starts there
            partition_key="Shapes|coop-k4-s1")
    for dataset, value, source in (("Shapes", 0.82, None), ("ShapesNoisy", 0.5, "Shapes")):
        for key, method, start in (("tpt-zeroshot-s1", "zero_shot", "zeroshot"),
                                   ("tpt-coop-k16-s1", "coop", "coop-k16-s1")):
            _record(warehouse, f"{key}-{dataset}", value, stage="test_time", dataset=dataset, method=method,
                    shots=0 if method == "zero_shot" else 16, seed=1, experiment_key=start,
                    partition_key=f"Shapes|{key}", source_dataset=source,
                    options={"test_time": {"mode": "tpt", "run": key}})
    rows = warehouse.query("SELECT source_dataset, dataset, mode, start, seed, value FROM test_time_seed_results "
                           "ORDER BY dataset, mode NULLS FIRST, start").rows()
    assert rows == [
        ("Shapes", "Shapes", None, "coop-k16-s1", 1, 0.85), ("Shapes", "Shapes", None, "zeroshot", 0, 0.8),
        ("Shapes", "Shapes", "tpt", "coop-k16-s1", 1, 0.82), ("Shapes", "Shapes", "tpt", "zeroshot", 1, 0.82),
        ("Shapes", "ShapesNoisy", None, "coop-k16-s1", 1, 0.45), ("Shapes", "ShapesNoisy", None, "zeroshot", 0, 0.4),
        ("Shapes", "ShapesNoisy", "tpt", "coop-k16-s1", 1, 0.5), ("Shapes", "ShapesNoisy", "tpt", "zeroshot", 1, 0.5),
    ]  # Digits (no test-time run scored it) and the checkpoint no run starts from stay out
    (table,) = tpt_tables(warehouse.query("SELECT * FROM test_time_seed_results"))
    assert table.datasets == ["Shapes", "ShapesNoisy"]
    assert table.rows["TPT + coop-k16"]["shifts"].mean == pytest.approx(0.5)
    assert table.rows["coop-k16"]["average"].mean == pytest.approx((0.85 + 0.45) / 2)
