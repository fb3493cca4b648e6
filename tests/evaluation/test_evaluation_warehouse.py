import errno
import math
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from evaluation_synthetic import make_per_class, make_predictions, make_run

from models.evaluation.metrics import classification_metrics
from models.warehouse import (
    EMPTY_PREDICTIONS_FILE,
    MetricRow,
    PerClassRow,
    Warehouse,
    WarehouseLockedError,
    metric_rows,
    per_class_rows,
)
from models.warehouse import writes

TABLES = {"experiments", "runs", "metrics", "metrics_history", "per_class_metrics", "per_class_metrics_history"}
VIEWS = {"predictions", "current_results", "results_by_config", "base_to_new_results", "base_to_new_averages"}


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "warehouse" / "promptlab.duckdb", tmp_path / "warehouse" / "predictions")


def _metrics(top1: float) -> list[MetricRow]:
    return [MetricRow("test", "top1_accuracy", top1), MetricRow("test", "macro_f1", top1 - 0.05)]


def _count(warehouse: Warehouse, sql: str) -> int:
    return warehouse.query(sql).item()


def _files(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()} if directory.exists() else set()


def test_ensure_schema_is_idempotent_and_keeps_data(warehouse):
    warehouse.ensure_schema()
    warehouse.ensure_schema()
    names = warehouse.query("SELECT table_name, table_type FROM information_schema.tables")
    tables = set(names.filter(pl.col("table_type") == "BASE TABLE")["table_name"])
    views = set(names.filter(pl.col("table_type") == "VIEW")["table_name"])
    assert TABLES <= tables and VIEWS <= views
    warehouse.record_run(make_run("run-a"), _metrics(0.5))
    warehouse.ensure_schema()
    assert _count(warehouse, "SELECT count(*) FROM metrics") == 2
    assert _count(warehouse, "SELECT count(*) FROM runs WHERE is_current") == 1


def test_recording_a_partition_again_replaces_current_rows_and_keeps_history(warehouse):
    first, second = make_run("run-1"), make_run("run-2", start_minute=5)
    assert first.partition_key == second.partition_key
    warehouse.record_run(first, _metrics(0.50), make_per_class(accuracy=0.5))
    warehouse.record_run(second, _metrics(0.60), make_per_class(accuracy=0.6))

    metrics = warehouse.query("SELECT run_id, metric, value FROM metrics ORDER BY metric")
    assert metrics["run_id"].to_list() == ["run-2", "run-2"]
    assert metrics["value"].to_list() == pytest.approx([0.55, 0.60])
    history = warehouse.query("SELECT * FROM metrics_history ORDER BY metric")
    assert history["run_id"].to_list() == ["run-1", "run-1"]
    assert history["value"].to_list() == pytest.approx([0.45, 0.50])
    assert set(history["superseded_by_run_id"]) == {"run-2"}
    runs = warehouse.query("SELECT run_id, is_current FROM runs ORDER BY run_id")
    assert runs.rows() == [("run-1", False), ("run-2", True)]
    assert set(warehouse.query("SELECT run_id FROM per_class_metrics")["run_id"]) == {"run-2"}
    assert set(warehouse.query("SELECT run_id FROM per_class_metrics_history")["run_id"]) == {"run-1"}
    assert _count(warehouse, "SELECT count(*) FROM experiments") == 1
    results = warehouse.query("SELECT * FROM results_by_config WHERE metric = 'top1_accuracy'")
    assert results.height == 1 and results["mean"][0] == pytest.approx(0.60) and results["n_seeds"][0] == 1

    warehouse.record_run(make_run("run-3", start_minute=9), _metrics(0.70))
    assert _count(warehouse, "SELECT count(*) FROM metrics") == 2
    assert _count(warehouse, "SELECT count(*) FROM metrics_history") == 4
    assert warehouse.query("SELECT run_id FROM runs WHERE is_current").rows() == [("run-3",)]


def test_other_partitions_datasets_and_stages_are_not_superseded(warehouse):
    warehouse.record_run(make_run("seed-1", seed=1), _metrics(0.5))
    warehouse.record_run(make_run("seed-2", seed=2), _metrics(0.6))
    warehouse.record_run(replace(make_run("pets", seed=1), dataset="oxford_pets"), _metrics(0.7))
    warehouse.record_run(make_run("pseudo", stage="pseudolabels", seed=1), [MetricRow("pool", "accuracy", 0.9)])
    assert _count(warehouse, "SELECT count(*) FROM runs WHERE is_current") == 4
    assert _count(warehouse, "SELECT count(*) FROM metrics_history") == 0
    summary = warehouse.query(
        "SELECT mean, std, n_seeds FROM results_by_config "
        "WHERE dataset = 'caltech101' AND stage = 'evaluation' AND metric = 'top1_accuracy'"
    ).row(0, named=True)
    assert summary["mean"] == pytest.approx(0.55)
    assert summary["std"] == pytest.approx(math.sqrt(0.005))  # sample std of (0.5, 0.6)
    assert summary["n_seeds"] == 2


def test_runs_of_retrained_backbone_weights_become_history(warehouse):
    weights_a, weights_b = "a" * 64, "b" * 64
    old_runs = [replace(make_run("a-seed-1", seed=1), backbone_weights_sha256=weights_a),
                replace(make_run("a-seed-2", seed=2), backbone_weights_sha256=weights_a),
                replace(make_run("a-pseudo", stage="pseudolabels", seed=1), backbone_weights_sha256=weights_a)]
    for run in old_runs:
        warehouse.record_run(run, _metrics(0.5), make_per_class(accuracy=0.5))
    other_backbone = replace(make_run("vit-seed-1", seed=1), backbone="vit-b-16", backbone_weights_sha256="c" * 64,
                             partition_key="vit|coop-16shots-seed1")
    unknown_weights = replace(make_run("unknown-seed-1", seed=1), backbone_weights_sha256=None,
                              partition_key="unknown|coop-16shots-seed1")
    warehouse.record_run(other_backbone, _metrics(0.8))
    warehouse.record_run(unknown_weights, _metrics(0.3))

    # The retrained tiny-clip is run on one other partition only: every run of the old weights leaves the views.
    new_run = replace(make_run("b-seed-3", seed=3), backbone_weights_sha256=weights_b)
    warehouse.record_run(new_run, _metrics(0.7))

    old_ids = {run.run_id for run in old_runs}
    runs = dict(warehouse.query("SELECT run_id, is_current FROM runs").rows())
    assert runs == {**dict.fromkeys(old_ids, False), "vit-seed-1": True, "unknown-seed-1": True, "b-seed-3": True}
    assert set(warehouse.query("SELECT DISTINCT run_id FROM current_results")["run_id"]) == {
        "vit-seed-1", "unknown-seed-1", "b-seed-3"}
    tiny_clip = warehouse.query("SELECT stage, mean, n_seeds FROM results_by_config "
                                "WHERE backbone = 'tiny-clip' AND metric = 'top1_accuracy' ORDER BY mean")
    assert tiny_clip.rows() == [("evaluation", pytest.approx(0.5), 2)]  # the unknown-weights run and the new one
    assert "pseudolabels" not in set(warehouse.query("SELECT stage FROM results_by_config")["stage"])
    history = warehouse.query("SELECT run_id, value, superseded_by_run_id FROM metrics_history "
                              "WHERE metric = 'top1_accuracy' ORDER BY run_id")
    assert history.rows() == [(run_id, pytest.approx(0.5), "b-seed-3") for run_id in sorted(old_ids)]
    assert set(warehouse.query("SELECT run_id FROM per_class_metrics_history")["run_id"]) == old_ids
    assert _count(warehouse, "SELECT count(*) FROM per_class_metrics") == 0
    assert _count(warehouse, f"SELECT count(*) FROM metrics WHERE run_id IN {tuple(sorted(old_ids))}") == 0
    vit = warehouse.query("SELECT mean FROM results_by_config WHERE backbone = 'vit-b-16' "
                          "AND metric = 'top1_accuracy'")
    assert vit["mean"].to_list() == pytest.approx([0.8])

    # Recording more runs of the same new weights supersedes nothing more.
    warehouse.record_run(replace(make_run("b-seed-4", seed=4), backbone_weights_sha256=weights_b), _metrics(0.6))
    assert _count(warehouse, "SELECT count(*) FROM runs WHERE is_current") == 4


def test_failure_midway_leaves_the_database_as_it_was_and_keeps_the_run_pending(warehouse, monkeypatch):
    warehouse.record_run(make_run("good"), _metrics(0.5), make_per_class(), make_predictions())
    original_insert = writes.insert_rows

    def insert_then_fail(connection, table, frame):
        original_insert(connection, table, frame)
        if table == "per_class_metrics":  # the metric and per-class rows are in the transaction now
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writes, "insert_rows", insert_then_fail)
    outcome = warehouse.record_run(make_run("bad", start_minute=3), _metrics(0.9), make_per_class(),
                                   make_predictions())
    monkeypatch.undo()

    assert not outcome.merged and "No space left on device" in outcome.merge.blocked_by
    with duckdb.connect(str(warehouse.database_path), read_only=True) as database:  # the file itself
        assert database.execute("SELECT run_id, is_current FROM runs").fetchall() == [("good", True)]
        assert database.execute("SELECT count(*) FROM metrics_history").fetchone() == (0,)
        assert database.execute("SELECT count(*) FROM per_class_metrics WHERE run_id = 'bad'").fetchone() == (0,)
    assert _files(warehouse.predictions_dir) == {EMPTY_PREDICTIONS_FILE, "run_id=good.parquet"}
    # The rows wait whole on disk, and reads include them already.
    assert warehouse.pending_batches() == [outcome.batch_path]
    assert warehouse.query("SELECT run_id FROM runs WHERE is_current").rows() == [("bad",)]
    # They land once the fault is gone.
    assert warehouse.merge_pending().merged == ("bad",)
    assert _files(warehouse.predictions_dir) == {EMPTY_PREDICTIONS_FILE, "run_id=good.parquet", "run_id=bad.parquet"}
    assert warehouse.query("SELECT count(*) FROM metrics_history WHERE run_id = 'good'").item() == 2


@pytest.mark.parametrize(
    ("metrics", "per_class", "predictions", "field"),
    [
        ([MetricRow("test", "top1_accuracy", math.nan)], (), None, r"metrics\[0\]\.value"),
        ([MetricRow("test", "", 0.5)], (), None, r"metrics\[0\]\.metric"),
        ([MetricRow("test", "a", 0.5), MetricRow("test", "a", 0.6)], (), None, "duplicate metric"),
        ([], [PerClassRow("test", 0, "cat", 1.5, 0.5, 3)], None, r"per_class\[0\]\.accuracy"),
        ([], (), make_predictions().rename({"confidence": "score"}), "predictions: missing column"),
        ([], (), make_predictions().with_columns(pl.lit(1).alias("extra")), "predictions: unknown column"),
        ([], (), make_predictions().with_columns(pl.lit(1.5).alias("confidence")), "predictions.confidence"),
        ([], (), make_predictions().with_columns(pl.lit("x").alias("label")), "predictions.label"),
        ([], (), make_predictions().with_columns(pl.lit("other").alias("dataset")), "predictions.dataset"),
    ],
)
def test_invalid_inputs_raise_before_anything_is_written(warehouse, metrics, per_class, predictions, field):
    warehouse.ensure_schema()
    with pytest.raises(ValueError, match=field):
        warehouse.record_run(make_run("run-x"), metrics, per_class, predictions)
    assert _count(warehouse, "SELECT count(*) FROM runs") == 0
    assert _count(warehouse, "SELECT count(*) FROM experiments") == 0
    assert _files(warehouse.predictions_dir) == {EMPTY_PREDICTIONS_FILE}


def test_invalid_run_fields_and_duplicate_run_id(warehouse):
    with pytest.raises(ValueError, match="run.run_id"):
        warehouse.record_run(make_run("has/slash"), _metrics(0.5))
    with pytest.raises(ValueError, match="run.finished_at"):
        run = make_run("backwards")
        warehouse.record_run(replace(run, finished_at=run.started_at - timedelta(seconds=1)), _metrics(0.5))
    with pytest.raises(ValueError, match="run.options"):
        warehouse.record_run(replace(make_run("nan-option"), options={"lr": math.nan}), _metrics(0.5))
    warehouse.record_run(make_run("once"), _metrics(0.5))
    with pytest.raises(ValueError, match="already recorded"):
        warehouse.record_run(make_run("once"), _metrics(0.6))
    assert warehouse.query("SELECT value FROM metrics WHERE metric = 'top1_accuracy'").item() == 0.5


def test_predictions_view_is_typed_when_empty_and_follows_current_runs(warehouse):
    warehouse.ensure_schema()
    empty = warehouse.query("SELECT * FROM predictions")
    assert empty.height == 0
    assert empty.schema == pl.Schema({"run_id": pl.String, "dataset": pl.String, "split": pl.String,
                                      "relative_path": pl.String, "label": pl.Int64, "predicted_label": pl.Int64,
                                      "confidence": pl.Float64})

    predictions = make_predictions(6)
    warehouse.record_run(make_run("first"), _metrics(0.5), predictions=predictions)
    stored = warehouse.query("SELECT * FROM predictions ORDER BY relative_path")
    assert stored.drop("run_id", "dataset").equals(predictions.sort("relative_path"))
    assert set(stored["run_id"]) == {"first"} and set(stored["dataset"]) == {"caltech101"}
    assert warehouse.prediction_file("first").exists()

    # A newer run of the partition without predictions hides the old file but keeps it on disk for history.
    warehouse.record_run(make_run("second", start_minute=1), _metrics(0.6))
    assert _count(warehouse, "SELECT count(*) FROM predictions") == 0
    assert warehouse.prediction_file("first").exists()
    history = warehouse.query(f"SELECT count(*) FROM read_parquet('{warehouse.prediction_file('first')}')").item()
    assert history == 6


def test_metrics_helpers_round_trip_through_the_warehouse(warehouse):
    probabilities = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]]
    result = classification_metrics(np.array(probabilities), np.array([0, 1, 1, 0]), ["cat", "dog", "owl"])
    warehouse.record_run(make_run("helpers"), metric_rows("test", result.scalar_metrics()),
                         per_class_rows("test", result.per_class))
    stored = dict(warehouse.query("SELECT metric, value FROM metrics").rows())
    assert stored == pytest.approx(result.scalar_metrics())
    per_class = warehouse.query("SELECT label, classname, accuracy, f1, support FROM per_class_metrics ORDER BY label")
    assert per_class.rows() == [(0, "cat", 1.0, 1.0, 2), (1, "dog", 0.5, 2 / 3, 2), (2, "owl", None, 0.0, 0)]


def test_timestamps_are_stored_in_utc_and_json_fields_are_canonical(warehouse):
    plus_two = timezone(timedelta(hours=2))
    run = replace(make_run("tz"), started_at=datetime(2025, 3, 1, 12, 0, tzinfo=plus_two),
                  finished_at=datetime(2025, 3, 1, 12, 5, tzinfo=plus_two), options={"b": 1, "a": [1, 2]})
    warehouse.record_run(run, _metrics(0.5))
    row = warehouse.query("SELECT started_at, finished_at, CAST(options AS VARCHAR) AS options FROM runs").row(0)
    assert row == (datetime(2025, 3, 1, 10, 0), datetime(2025, 3, 1, 10, 5), '{"a":[1,2],"b":1}')


def test_read_only_connection_between_writes_does_not_break_the_next_write(warehouse):
    warehouse.record_run(make_run("one", seed=1), _metrics(0.5), predictions=make_predictions())
    reader = duckdb.connect(str(warehouse.database_path), read_only=True)
    assert reader.execute("SELECT count(*) FROM metrics").fetchone() == (2,)
    assert reader.execute("SELECT count(*) FROM predictions").fetchone() == (6,)
    reader.close()
    warehouse.record_run(make_run("two", seed=2), _metrics(0.6))
    reader = duckdb.connect(str(warehouse.database_path), read_only=True)
    try:
        assert reader.execute("SELECT count(*) FROM runs WHERE is_current").fetchone() == (2,)
        assert reader.execute("SELECT count(*) FROM current_results").fetchone() == (4,)
    finally:
        reader.close()


def test_lock_held_by_another_process_leaves_the_run_pending_then_the_next_run_merges_it(tmp_path):
    warehouse = Warehouse(tmp_path / "locked.duckdb", tmp_path / "predictions", lock_retries=2,
                          lock_backoff_seconds=0.01)
    warehouse.record_run(make_run("before"), _metrics(0.5))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys\n"
         f"connection = duckdb.connect({str(warehouse.database_path)!r}, read_only=True)\n"
         "print('ready', flush=True)\n"
         "sys.stdin.readline()\n"
         "connection.close()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        outcome = warehouse.record_run(make_run("during", start_minute=1), _metrics(0.6),
                                       predictions=make_predictions())
        assert not outcome.merged and outcome.batch_path.is_dir()
        assert "locked.duckdb is held by another process" in outcome.describe()
    finally:
        holder.communicate("\n", timeout=30)
    # Nothing reached the database or the predictions directory while it was held.
    with duckdb.connect(str(warehouse.database_path), read_only=True) as connection:
        assert connection.execute("SELECT run_id FROM runs").fetchall() == [("before",)]
    assert _files(warehouse.predictions_dir) == {EMPTY_PREDICTIONS_FILE}
    warehouse.record_run(make_run("after", start_minute=2), _metrics(0.7))
    assert warehouse.pending_batches() == []
    assert warehouse.query("SELECT run_id, is_current FROM runs ORDER BY run_id").rows() == [
        ("after", True), ("before", False), ("during", False)]
    assert _files(warehouse.predictions_dir) == {EMPTY_PREDICTIONS_FILE, "run_id=during.parquet"}


def test_query_on_a_missing_database_names_the_file(tmp_path):
    missing = Warehouse(tmp_path / "nowhere.duckdb", tmp_path / "predictions")
    with pytest.raises(FileNotFoundError, match="nowhere.duckdb"):
        missing.query("SELECT 1")


def test_numpy_scalars_are_accepted(warehouse):
    run = replace(make_run("numpy"), shots=np.int64(4), seed=np.int32(2))
    warehouse.record_run(run, [MetricRow("test", "top1_accuracy", np.float32(0.25))],
                         [PerClassRow("test", np.int64(0), "cat", np.float64(0.5), None, np.int64(2))])
    assert warehouse.query("SELECT shots, seed FROM runs").row(0) == (4, 2)
    assert warehouse.query("SELECT value FROM metrics").item() == pytest.approx(0.25)


def test_the_experiment_row_does_not_depend_on_which_dataset_recorded_it_last(tmp_path):
    """Runs of one experiment on two datasets (their config hashes differ: templates), recorded in either order,
    leave the same `experiments` row."""
    rows = []
    for order in (("caltech101", "eurosat"), ("eurosat", "caltech101")):
        warehouse = Warehouse(tmp_path / "-".join(order) / "w.duckdb", tmp_path / "-".join(order) / "predictions")
        for minute, dataset in enumerate(order):
            run = replace(make_run(f"run-{dataset}", dataset=dataset, start_minute=minute),
                          config_hash=f"config-with-{dataset}-templates")
            warehouse.record_run(run, [MetricRow("test", "top1_accuracy", 0.5)])
        rows.append(warehouse.query("SELECT * FROM experiments").rows())
    assert rows[0] == rows[1] and len(rows[0]) == 1
    assert "config-with" not in rows[0][0][-1]
