"""A damaged `promptlab.duckdb` (truncated, header zeroed, emptied): `warehouse status` says so, `results` reads the
intact snapshot, runs keep their rows pending, and `warehouse recover` rebuilds the file from the snapshot and the
pending batches, naming what it could not restore."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest
from evaluation_synthetic import make_per_class, make_predictions, make_run, top1_metrics, warehouse_command

from pipelines.warehouse_commands import EXIT_DAMAGED, EXIT_NOT_RESTORED, workspace_warehouse

DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "header zeroed": lambda data: bytes(4096) + data[4096:],
    "emptied": lambda data: b"",
}


@pytest.fixture
def warehouse(tmp_path, monkeypatch):
    """The CLI's warehouse, holding one merged run with predictions."""
    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.delenv("PROMPTLAB_WAREHOUSE", raising=False)
    warehouse = workspace_warehouse()
    warehouse.record_run(make_run("kept", method="zero_shot", shots=0), top1_metrics(0.4), predictions=make_predictions(3))
    return warehouse


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_database_is_reported_read_around_and_rebuilt(warehouse, damage):
    # A run whose record was in the database only (merged after the last snapshot by an older version): its
    # predictions file is all that remains of it.
    unrestorable = warehouse.prediction_file("lost")
    make_predictions(2).with_columns(pl.lit("lost").alias("run_id"), pl.lit("caltech101").alias("dataset")).select(
        "run_id", "dataset", "split", "relative_path", "label", "predicted_label", "confidence",
    ).write_parquet(unrestorable)
    damaged = DAMAGE[damage](warehouse.database_path.read_bytes())
    warehouse.database_path.write_bytes(damaged)

    code, said = warehouse_command("warehouse", "status")
    assert code == EXIT_DAMAGED and "DAMAGED" in said and "promptlab warehouse recover" in said
    assert "up to date" not in said and "OLDER than the database" not in said

    outcome = warehouse.record_run(make_run("during"), top1_metrics(0.625), make_per_class(), make_predictions(5))
    assert not outcome.merged and outcome.batch_path.is_dir() and "cannot be opened" in outcome.merge.blocked_by

    code, printed = warehouse_command("results")  # the intact snapshot, with the pending run
    assert "40.0" in printed and "62.5" in printed

    code, said = warehouse_command("warehouse", "recover")
    assert code == EXIT_NOT_RESTORED  # the lost run's record is gone
    assert "restored 1 run(s) from the snapshot" in said and "merged 1 pending batch(es): during" in said
    assert "NOT restored: 1 run(s)" in said and str(unrestorable) in said
    [kept_aside] = warehouse.database_path.parent.glob("promptlab-damaged-*.duckdb")
    assert kept_aside.read_bytes() == damaged

    code, said = warehouse_command("warehouse", "status")
    assert code == 0 and "up to date with the database" in said
    with duckdb.connect(str(warehouse.database_path), read_only=True) as database:
        assert database.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall() == [("during",), ("kept",)]
        assert database.execute("SELECT run_id, count(*) FROM predictions GROUP BY ALL ORDER BY 1").fetchall() == [
            ("during", 5), ("kept", 3)]
    assert warehouse.pending_batches() == []
    assert warehouse_command("warehouse", "recover") == (0, f"{warehouse.database_path} opens and reads: nothing to recover")


def test_without_an_intact_snapshot_recover_rebuilds_from_the_pending_batches_and_says_so(warehouse):
    warehouse.database_path.write_bytes(b"")
    warehouse.snapshot_path.write_bytes(b"not a database")
    assert warehouse.status().snapshot_damage
    warehouse.record_run(make_run("during"), top1_metrics(0.625))
    with pytest.raises(Exception, match="promptlab-snapshot.duckdb cannot be opened"):
        warehouse.query("SELECT count(*) FROM runs")

    recovery = warehouse.recover()
    assert recovery.snapshot_problem and not recovery.complete and recovery.merge.merged == ("during",)
    assert "NOT restored from the snapshot" in "\n".join(recovery.describe())
    [database_aside] = warehouse.database_path.parent.glob("promptlab-damaged-*.duckdb")
    [snapshot_aside] = warehouse.database_path.parent.glob("promptlab-snapshot-damaged-*.duckdb")
    assert database_aside.read_bytes() == b"" and snapshot_aside.read_bytes() == b"not a database"
    assert warehouse.query("SELECT run_id FROM runs").rows() == [("during",)]
    assert warehouse.status().snapshot_damage is None and warehouse.status().database_damage is None
