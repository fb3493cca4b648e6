"""A reader holding the warehouse file never makes a run fail, and never loses or duplicates its rows.

The reader is always another PROCESS holding `duckdb.connect(path, read_only=True)`, as `duckdb -readonly` or a
notebook does: DuckDB's file lock is per process, so a reader in this process would not show the conflict.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from evaluation_synthetic import make_per_class, make_predictions, make_run

from models.report import build_report
from models.warehouse import MetricRow, Warehouse

REPOSITORY = Path(__file__).resolve().parents[2]
HOLD_READ_ONLY = """
import duckdb, sys
connection = duckdb.connect(sys.argv[1], read_only=True)
connection.execute("SELECT count(*) FROM runs").fetchone()
print("ready", flush=True)
sys.stdin.readline()
connection.close()
"""


@contextlib.contextmanager
def reader_process(database_path: Path):
    """Another process holding the database open read-only until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_READ_ONLY, str(database_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield holder
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "warehouse" / "promptlab.duckdb", tmp_path / "warehouse" / "predictions",
                     lock_retries=2, lock_backoff_seconds=0.01)


def _metrics(top1: float) -> list[MetricRow]:
    return [MetricRow("test", "top1_accuracy", top1), MetricRow("test", "macro_f1", top1 - 0.05)]


def _main_file(warehouse: Warehouse, sql: str) -> list[tuple]:
    """Rows of the database file itself (not the snapshot, not the pending batches)."""
    with duckdb.connect(str(warehouse.database_path), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def _snapshot(warehouse: Warehouse, sql: str) -> list[tuple]:
    with duckdb.connect(str(warehouse.snapshot_path), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def test_run_recorded_while_a_reader_holds_the_file_succeeds_and_lands_once_after(warehouse):
    warehouse.record_run(make_run("before"), _metrics(0.5), make_per_class(), make_predictions(6))
    with reader_process(warehouse.database_path):
        outcome = warehouse.record_run(make_run("during", start_minute=1), _metrics(0.7), make_per_class(accuracy=0.7),
                                       make_predictions(4))
        # The call returned normally; the rows are durable on disk and not in the database.
        assert not outcome.merged
        assert sorted(path.name for path in outcome.batch_path.iterdir()) == [
            "metrics.parquet", "per_class.parquet", "predictions.parquet", "run.json"]
        assert pl.read_parquet(outcome.batch_path / "metrics.parquet")["value"].to_list() == pytest.approx(
            [0.7, 0.65])
        assert _main_file(warehouse, "SELECT run_id FROM runs") == [("before",)]
        assert _snapshot(warehouse, "SELECT run_id FROM runs") == [("before",)]
        # Queries (the report, `promptlab results`) already see it, superseding the earlier run of its partition.
        assert warehouse.query("SELECT run_id, is_current FROM runs ORDER BY run_id").rows() == [
            ("before", False), ("during", True)]
        assert warehouse.query("SELECT value FROM metrics WHERE metric = 'top1_accuracy'").item() == 0.7
        assert warehouse.query("SELECT count(*), min(run_id) FROM predictions").row(0) == (4, "during")
    assert warehouse.status().pending == (outcome.batch_path,)

    merge = warehouse.merge_pending()
    assert merge.merged == ("during",) and merge.pending == () and merge.rejected == ()
    assert not outcome.batch_path.exists()
    for read in (_main_file, _snapshot):
        assert read(warehouse, "SELECT run_id, is_current FROM runs ORDER BY run_id") == [
            ("before", False), ("during", True)]
        assert read(warehouse, "SELECT count(*) FROM metrics") == [(2,)]
        assert read(warehouse, "SELECT count(*) FROM metrics_history") == [(2,)]
        assert read(warehouse, "SELECT count(*) FROM per_class_metrics WHERE run_id = 'during'") == [(3,)]
        assert read(warehouse, "SELECT count(*) FROM predictions") == [(4,)]
    assert warehouse.prediction_file("during").exists()

    again = warehouse.merge_pending()
    assert again.merged == () and again.pending == ()
    assert _main_file(warehouse, "SELECT count(*) FROM runs") == [(2,)]
    assert _main_file(warehouse, "SELECT count(*) FROM metrics_history") == [(2,)]


def test_a_reader_opening_the_snapshot_never_blocks_a_writer(warehouse):
    warehouse.record_run(make_run("first", seed=1), _metrics(0.5))
    with reader_process(warehouse.snapshot_path):
        outcome = warehouse.record_run(make_run("second", seed=2), _metrics(0.6))
        assert outcome.merged and outcome.batch_path is None
    assert _main_file(warehouse, "SELECT count(*) FROM runs WHERE is_current") == [(2,)]
    assert _snapshot(warehouse, "SELECT count(*) FROM runs WHERE is_current") == [(2,)]


def test_supersede_order_is_kept_across_pending_batches(warehouse):
    warehouse.record_run(make_run("run-1"), _metrics(0.1))
    with reader_process(warehouse.database_path):
        for minute, run_id in ((1, "run-2"), (2, "run-3"), (3, "run-4")):
            assert not warehouse.record_run(make_run(run_id, start_minute=minute),
                                            _metrics(0.1 * int(run_id[-1]))).merged
        assert len(warehouse.pending_batches()) == 3
        assert warehouse.query("SELECT run_id FROM runs WHERE is_current").rows() == [("run-4",)]
    warehouse.merge_pending()
    history = _main_file(warehouse, "SELECT DISTINCT run_id, superseded_by_run_id FROM metrics_history ORDER BY 1")
    assert history == [("run-1", "run-2"), ("run-2", "run-3"), ("run-3", "run-4")]
    assert _main_file(warehouse, "SELECT run_id FROM runs WHERE is_current") == [("run-4",)]


def test_the_next_run_merges_earlier_pending_batches_first(warehouse):
    warehouse.record_run(make_run("run-1"), _metrics(0.1))
    with reader_process(warehouse.database_path):
        warehouse.record_run(make_run("run-2", start_minute=1), _metrics(0.2))
    outcome = warehouse.record_run(make_run("run-3", start_minute=2), _metrics(0.3))
    assert outcome.merged and outcome.merge.merged == ("run-2", "run-3")
    assert _main_file(warehouse, "SELECT DISTINCT run_id, superseded_by_run_id FROM metrics_history ORDER BY 1") == [
        ("run-1", "run-2"), ("run-2", "run-3")]


def test_a_run_id_is_refused_while_it_is_pending(warehouse):
    warehouse.ensure_schema()
    with reader_process(warehouse.database_path):
        warehouse.record_run(make_run("once"), _metrics(0.5))
        with pytest.raises(ValueError, match=r"run\.run_id: 'once' is already recorded \(pending in"):
            warehouse.record_run(make_run("once"), _metrics(0.6))
    assert len(warehouse.pending_batches()) == 1
    warehouse.merge_pending()
    with pytest.raises(ValueError, match="already recorded"):
        warehouse.record_run(make_run("once"), _metrics(0.6))
    with reader_process(warehouse.database_path):  # the merge cannot check it now: the snapshot does
        with pytest.raises(ValueError, match="already recorded in"):
            warehouse.record_run(make_run("once"), _metrics(0.7))
    assert warehouse.pending_batches() == []
    assert _main_file(warehouse, "SELECT value FROM metrics WHERE metric = 'top1_accuracy'") == [(0.5,)]


MERGE_IN_ANOTHER_PROCESS = """
import sys
from pathlib import Path
from models.warehouse import Warehouse
warehouse = Warehouse(Path(sys.argv[1]), Path(sys.argv[2]))
print(",".join(warehouse.merge_pending().merged), flush=True)
"""


def _merge_processes(warehouse: Warehouse, count: int) -> list[subprocess.Popen]:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    return [subprocess.Popen([sys.executable, "-c", MERGE_IN_ANOTHER_PROCESS, str(warehouse.database_path),
                              str(warehouse.predictions_dir)], stdout=subprocess.PIPE, text=True, env=environment)
            for _ in range(count)]


def test_merges_racing_in_several_processes_insert_each_run_once(warehouse):
    warehouse.ensure_schema()
    run_ids = [f"seed-{seed}" for seed in range(1, 7)]
    with reader_process(warehouse.database_path):
        for seed, run_id in enumerate(run_ids, start=1):
            warehouse.record_run(make_run(run_id, seed=seed), _metrics(0.5), predictions=make_predictions(3))
    mergers = _merge_processes(warehouse, 3)
    merged_here = warehouse.merge_pending().merged
    merged_there = []
    for merger in mergers:
        output, _ = merger.communicate(timeout=120)
        assert merger.returncode == 0
        merged_there += [run_id for run_id in output.strip().split(",") if run_id]
    assert sorted([*merged_here, *merged_there]) == sorted(run_ids)  # each run merged by exactly one process
    assert _main_file(warehouse, "SELECT count(*), count(DISTINCT run_id) FROM runs") == [(6, 6)]
    assert _main_file(warehouse, "SELECT count(*) FROM metrics") == [(12,)]
    assert _main_file(warehouse, "SELECT count(*) FROM predictions") == [(18,)]
    assert warehouse.pending_batches() == []


CRASH_AFTER_COMMIT = """
import os, sys
from pathlib import Path
from models.warehouse import Warehouse
# Die like a killed process right after the commit, before the batch's files are moved and deleted.
Warehouse._finish_batch = lambda self, batch: os._exit(9)
Warehouse(Path(sys.argv[1]), Path(sys.argv[2])).merge_pending()
"""


def test_a_crash_between_commit_and_batch_deletion_does_not_duplicate(warehouse):
    warehouse.ensure_schema()
    with reader_process(warehouse.database_path):
        batch = warehouse.record_run(make_run("crashed"), _metrics(0.5), predictions=make_predictions(5)).batch_path
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    crashed = subprocess.run([sys.executable, "-c", CRASH_AFTER_COMMIT, str(warehouse.database_path),
                              str(warehouse.predictions_dir)], env=environment, timeout=120)
    assert crashed.returncode == 9
    assert batch.is_dir()  # committed, not cleared
    assert _main_file(warehouse, "SELECT run_id FROM runs") == [("crashed",)]

    outcome = warehouse.merge_pending()
    assert outcome.merged == () and outcome.pending == () and outcome.rejected == ()
    assert not batch.exists()
    assert _main_file(warehouse, "SELECT count(*) FROM runs") == [(1,)]
    assert _main_file(warehouse, "SELECT count(*) FROM metrics") == [(2,)]
    assert _main_file(warehouse, "SELECT count(*) FROM predictions") == [(5,)]


def test_a_corrupt_batch_is_rejected_naming_its_folder_and_later_batches_still_merge(warehouse):
    warehouse.ensure_schema()
    with reader_process(warehouse.database_path):
        corrupt = warehouse.record_run(make_run("corrupt", seed=1), _metrics(0.5)).batch_path
        warehouse.record_run(make_run("fine", seed=2), _metrics(0.6))
        (corrupt / "metrics.parquet").write_bytes(b"not parquet")
        # A read leaves the corrupt batch out instead of failing.
        assert warehouse.query("SELECT run_id FROM runs").rows() == [("fine",)]

    outcome = warehouse.merge_pending()
    assert outcome.merged == ("fine",)
    [rejected] = outcome.rejected
    assert str(corrupt) in rejected.reason and "metrics.parquet" in rejected.reason
    assert rejected.path == warehouse.rejected_dir / corrupt.name and not corrupt.exists()
    assert (rejected.path / "reason.txt").read_text().strip() == rejected.reason
    assert (rejected.path / "run.json").exists()  # kept for a person, never deleted
    assert warehouse.status().rejected == (rejected,)
    assert _main_file(warehouse, "SELECT run_id FROM runs") == [("fine",)]


def test_a_batch_recording_a_run_id_twice_is_rejected_not_inserted(warehouse):
    warehouse.record_run(make_run("first"), _metrics(0.5))
    with reader_process(warehouse.database_path):
        twin = warehouse.record_run(make_run("twin", start_minute=1), _metrics(0.6)).batch_path
    # Another process recorded the same run id meanwhile (it passed the check before this batch existed).
    renamed = twin.with_name(twin.name.replace("twin", "first"))
    twin.rename(renamed)
    (renamed / "run.json").write_text((renamed / "run.json").read_text().replace('"twin"', '"first"'))
    for name in ("metrics.parquet", "per_class.parquet"):
        frame = pl.read_parquet(renamed / name)
        frame.with_columns(pl.lit("first").alias("run_id")).write_parquet(renamed / name)
    outcome = warehouse.merge_pending()
    assert outcome.merged == () and len(outcome.rejected) == 1
    assert "already recorded" in outcome.rejected[0].reason
    assert _main_file(warehouse, "SELECT run_id, is_current FROM runs") == [("first", True)]


def test_report_built_while_a_reader_holds_the_file_includes_the_pending_run(warehouse, tmp_path):
    warehouse.record_run(make_run("zero", method="zero_shot", shots=0), _metrics(0.4))
    with reader_process(warehouse.database_path):
        pending = replace(make_run("pets", dataset="oxford_pets", method="zero_shot", shots=0), options={})
        assert not warehouse.record_run(pending, _metrics(0.8)).merged
        summary = build_report(warehouse, tmp_path / "report.html")
    assert summary.num_runs == 2 and set(summary.datasets) == {"caltech101", "oxford_pets"}
    assert "oxford_pets" in (tmp_path / "report.html").read_text()


def test_report_asset_succeeds_while_a_reader_holds_the_file(tmp_path):
    from pipelines.assets.report import cross_dataset_report
    from pipelines.resources import PromptLabResource
    from models.warehouse import workspace_warehouse_of

    resource = PromptLabResource(workspace_dir=str(tmp_path / "workspace"))
    warehouse = workspace_warehouse_of(resource.workspace())
    warehouse.record_run(make_run("zero", method="zero_shot", shots=0), _metrics(0.4))
    with reader_process(warehouse.database_path):
        warehouse.record_run(make_run("pets", dataset="oxford_pets", method="zero_shot", shots=0), _metrics(0.8))
        result = cross_dataset_report(dg.build_asset_context(), promptlab=resource)
    report = Path(result.metadata["path"].path).read_text()
    assert "2 runs recorded" in report and "oxford_pets" in report


def test_sensor_merges_pending_batches_once_the_reader_closes(tmp_path):
    from pipelines.resources import PromptLabResource
    from models.warehouse import workspace_warehouse_of
    from pipelines.warehouse_sensors import warehouse_merge_sensor

    resource = PromptLabResource(workspace_dir=str(tmp_path / "workspace"))
    warehouse = workspace_warehouse_of(resource.workspace())
    warehouse.ensure_schema()
    with reader_process(warehouse.database_path):
        warehouse.record_run(make_run("waiting"), _metrics(0.5))
        held = warehouse_merge_sensor(dg.build_sensor_context(resources={"promptlab": resource}))
        assert "1 batch(es) still pending" in held.skip_message
    merged = warehouse_merge_sensor(dg.build_sensor_context(resources={"promptlab": resource}))
    assert merged.skip_message.startswith("merged 1 run(s): waiting")
    assert _main_file(warehouse, "SELECT run_id FROM runs") == [("waiting",)]
    idle = warehouse_merge_sensor(dg.build_sensor_context(resources={"promptlab": resource}))
    assert idle.skip_message == "no pending warehouse batches"


def test_cli_results_status_and_merge_while_a_reader_holds_the_file(tmp_path, monkeypatch, capsys):
    from pipelines import cli
    from pipelines.warehouse_commands import EXIT_STILL_PENDING, workspace_warehouse

    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(tmp_path / "workspace"))
    warehouse = workspace_warehouse()
    warehouse.record_run(make_run("zero", method="zero_shot", shots=0), _metrics(0.4))
    with reader_process(warehouse.database_path):
        warehouse.record_run(make_run("coop", seed=1), _metrics(0.625))
        capsys.readouterr()
        assert cli.main(["results"]) == 0
        printed = capsys.readouterr().out
        assert "62.5" in printed and "40.0" in printed and "1 run(s) above are not merged" in printed
        assert cli.main(["warehouse", "status"]) == 0
        assert "pending:  1 batch(es)" in capsys.readouterr().out
        assert cli.main(["warehouse", "merge"]) == EXIT_STILL_PENDING
        assert "1 batch(es) still pending" in capsys.readouterr().out
    assert cli.main(["warehouse", "merge"]) == 0
    assert "merged 1 run(s): coop" in capsys.readouterr().out
    assert _main_file(warehouse, "SELECT count(*) FROM runs") == [(2,)]


def test_results_on_a_workspace_without_a_warehouse_says_so(tmp_path, monkeypatch, capsys):
    from pipelines import cli

    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(tmp_path / "empty"))
    assert cli.main(["results"]) == 0
    assert "No results yet" in capsys.readouterr().out


def test_the_snapshot_catches_up_with_a_database_changed_outside_a_merge_and_dies_with_it(warehouse):
    warehouse.record_run(make_run("kept"), _metrics(0.5))
    with duckdb.connect(str(warehouse.database_path)) as connection:  # e.g. a restored backup, a hand edit
        connection.execute("UPDATE metrics SET value = 0.25 WHERE metric = 'top1_accuracy'")
    assert warehouse.status().snapshot_behind_database
    assert warehouse.query("SELECT value FROM metrics WHERE metric = 'top1_accuracy'").item() == 0.25
    assert _snapshot(warehouse, "SELECT value FROM metrics WHERE metric = 'top1_accuracy'") == [(0.25,)]
    warehouse.database_path.unlink()
    with pytest.raises(FileNotFoundError, match="promptlab.duckdb does not exist"):
        warehouse.query("SELECT count(*) FROM runs")


def test_the_end_of_promptlab_run_merges_what_its_stages_left_pending(tmp_path, monkeypatch):
    from pipelines.warehouse_commands import merge_after_run, workspace_warehouse

    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(tmp_path / "workspace"))
    warehouse = workspace_warehouse()
    warehouse.ensure_schema()
    with reader_process(warehouse.database_path):
        warehouse.record_run(make_run("stage-run"), _metrics(0.5))
        held: list[str] = []
        merge_after_run(log=held.append)
        assert held == ["warehouse: merged 0 run(s)", "warehouse: 1 batch(es) still pending (promptlab.duckdb is "
                        "held by another process, e.g. a read-only DuckDB session); their rows are in `promptlab "
                        "results` and the report already, and merge once the warehouse is free"]
    merged: list[str] = []
    merge_after_run(log=merged.append)
    assert merged == ["warehouse: merged 1 run(s): stage-run"]
    assert _main_file(warehouse, "SELECT run_id FROM runs") == [("stage-run",)]


def test_a_report_over_one_dataset_says_dataset_not_datasets(warehouse, tmp_path):
    warehouse.record_run(make_run("zero", method="zero_shot", shots=0), _metrics(0.4))
    build_report(warehouse, tmp_path / "report.html")
    text = (tmp_path / "report.html").read_text()
    assert "over 1 dataset;" in text and "over 1 datasets" not in text


def test_a_batch_merged_by_another_process_while_waiting_for_the_lock_counts_as_recorded(warehouse, monkeypatch):
    """Parallel workers: another process's merge may take this call's batch before this call gets the merge lock; the
    run is recorded once, and the call says merged instead of calling its own run id a duplicate."""
    warehouse.record_run(make_run("first"), _metrics(0.5))
    real_merge = Warehouse._merge

    def another_process_merges_first(self, own_batch):
        real_merge(self, None)  # the concurrent merge: takes every pending batch, this call's too
        return real_merge(self, own_batch)

    monkeypatch.setattr(Warehouse, "_merge", another_process_merges_first)
    outcome = warehouse.record_run(make_run("second", start_minute=1, seed=2), _metrics(0.6))
    assert outcome.merged and outcome.batch_path is None
    assert _main_file(warehouse, "SELECT run_id FROM runs ORDER BY run_id") == [("first",), ("second",)]
    assert warehouse.pending_batches() == []
