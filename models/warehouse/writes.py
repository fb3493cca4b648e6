"""Writing one run's rows, and benchmark runs, the same SQL on every backend (the DuckDB file and DuckLake): called
inside the caller's transaction (`transaction`), so a failure anywhere leaves nothing behind.

Recording a run replaces the current run of its (stage, dataset, partition_key, source_dataset) and every current
run of its backbone name with other (non-NULL) weights: their metric rows move to the history tables. DuckLake has
no primary keys, so uniqueness (of a run id, of an experiment row) is kept here by the statements themselves
(MERGE, a count before the insert), never by a constraint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import duckdb
import polars as pl

from models.warehouse.benchmark import BenchmarkRow, BenchmarkRun, benchmark_frame
from models.warehouse.records import RunRecord, as_utc_naive, canonical_json


@contextlib.contextmanager
def transaction(connection: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Commit when the block succeeds, roll back on any error (a failing rollback never hides the cause)."""
    connection.begin()
    try:
        yield
        connection.commit()
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            connection.rollback()
        raise


def experiment_config_hash(run: RunRecord) -> str:
    """The `experiments` row's hash: of the experiment's own configuration (method, shots, seed, options), the same
    whichever dataset or stage recorded it. (A run's config_hash also covers its dataset's templates and its stage's
    settings; storing that here made the row depend on which run happened to be recorded last.)"""
    from models.provenance import stable_hash

    return stable_hash({"method": run.method, "shots": int(run.shots), "seed": int(run.seed),
                        "options": run.options})


def write_run(connection: duckdb.DuckDBPyConnection, run: RunRecord, metric_rows: pl.DataFrame,
              per_class_rows: pl.DataFrame, location: str) -> None:
    """Insert `run` and its rows, superseding the runs it replaces; ValueError if its run id is recorded already."""
    existing = connection.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run.run_id]).fetchone()
    if existing[0]:
        raise ValueError(f"run.run_id: {run.run_id!r} is already recorded in {location}")
    upsert_experiment(connection, run)
    supersede_current_runs(connection, run)
    insert_run(connection, run)
    insert_rows(connection, "metrics", metric_rows)
    insert_rows(connection, "per_class_metrics", per_class_rows)


def upsert_experiment(connection: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
    connection.execute(
        """
        MERGE INTO experiments
        USING (SELECT ? AS experiment_key, ? AS method, ? AS shots, ? AS seed, ?::JSON AS options,
                      ? AS config_hash) AS incoming
        ON experiments.experiment_key = incoming.experiment_key
        WHEN MATCHED THEN UPDATE SET method = incoming.method, shots = incoming.shots, seed = incoming.seed,
                                     options = incoming.options, config_hash = incoming.config_hash
        WHEN NOT MATCHED THEN INSERT (experiment_key, method, shots, seed, options, config_hash)
            VALUES (incoming.experiment_key, incoming.method, incoming.shots, incoming.seed, incoming.options,
                    incoming.config_hash)
        """,
        [run.experiment_key, run.method, int(run.shots), int(run.seed),
         canonical_json(run.options, "run.options"), experiment_config_hash(run)],
    )


def supersede_current_runs(connection: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
    superseded_at = datetime.now(UTC).replace(tzinfo=None)
    # Two kinds of run leave the current results: the earlier runs of the same partition, and every run of the
    # same backbone name computed with other weights (the backbone was retrained; its old results must not mix
    # with the new ones). A NULL hash is unknown, never "other weights": `<>` with NULL is not true.
    connection.execute(
        """
        CREATE OR REPLACE TEMP TABLE superseded_runs AS
        SELECT run_id FROM runs
        WHERE is_current
          AND ((stage = $stage AND dataset = $dataset AND partition_key = $partition_key
                AND source_dataset IS NOT DISTINCT FROM $source_dataset)
               OR (backbone = $backbone AND backbone_weights_sha256 <> $weights))
        """,
        {"stage": run.stage, "dataset": run.dataset, "partition_key": run.partition_key,
         "source_dataset": run.source_dataset, "backbone": run.backbone, "weights": run.backbone_weights_sha256},
    )
    for table, columns in (
        ("metrics", "run_id, dataset, experiment_key, split, metric, value"),
        ("per_class_metrics", "run_id, dataset, split, label, classname, accuracy, f1, support"),
    ):
        connection.execute(
            f"INSERT INTO {table}_history SELECT {columns}, ?, ? FROM {table} "
            "WHERE run_id IN (SELECT run_id FROM superseded_runs)",
            [superseded_at, run.run_id],
        )
        connection.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT run_id FROM superseded_runs)")
    connection.execute("UPDATE runs SET is_current = false WHERE run_id IN (SELECT run_id FROM superseded_runs)")
    connection.execute("DROP TABLE superseded_runs")


def insert_run(connection: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
    connection.execute(
        """
        INSERT INTO runs (run_id, stage, dataset, experiment_key, partition_key, method, shots, seed, options,
                          dagster_run_id, code_version, config_hash, git_commit, backbone,
                          backbone_weights_sha256, data_hash, templates, started_at, finished_at, is_current,
                          source_dataset, compute)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, true, ?, ?)
        """,
        [
            run.run_id, run.stage, run.dataset, run.experiment_key, run.partition_key, run.method, int(run.shots),
            int(run.seed), canonical_json(run.options, "run.options"), run.dagster_run_id, run.code_version,
            run.config_hash, run.git_commit, run.backbone, run.backbone_weights_sha256, run.data_hash,
            canonical_json(run.templates, "run.templates"),
            as_utc_naive(run.started_at, "run.started_at"), as_utc_naive(run.finished_at, "run.finished_at"),
            run.source_dataset, run.compute,
        ],
    )


def insert_rows(connection: duckdb.DuckDBPyConnection, table: str, rows: pl.DataFrame) -> None:
    """Append a frame's rows to `table`, matching columns by name."""
    if rows.height:
        connection.register("incoming_rows", rows.to_arrow())
        connection.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming_rows")
        connection.unregister("incoming_rows")


def validated_benchmarks(runs: Sequence[tuple[BenchmarkRun, Sequence[BenchmarkRow]]]
                         ) -> tuple[list[pl.DataFrame], list[str]]:
    """Each benchmark run's rows as a checked frame (ValueError naming rows[i].field), and the run ids, in order;
    ValueError for a run id given more than once. Writes nothing: call it before touching the database."""
    frames = [benchmark_frame(run, list(rows)) for run, rows in runs]
    run_ids = [run.bench_run_id for run, _ in runs]
    repeated = sorted({run_id for run_id in run_ids if run_ids.count(run_id) > 1})
    if repeated:
        raise ValueError(f"run.bench_run_id: {repeated[0]!r} is given more than once")
    return frames, run_ids


def insert_benchmarks(connection: duckdb.DuckDBPyConnection, frames: Sequence[pl.DataFrame], run_ids: Sequence[str],
                      location: str) -> None:
    """Insert validated benchmark frames (`validated_benchmarks`) into `benchmark_results`; ValueError, before any
    insert, if one of `run_ids` is recorded already in the warehouse `location` names."""
    for run_id in run_ids:
        existing = connection.execute("SELECT count(*) FROM benchmark_results WHERE bench_run_id = ?",
                                      [run_id]).fetchone()
        if existing[0]:
            raise ValueError(f"run.bench_run_id: {run_id!r} is already recorded in {location}")
    insert_rows(connection, "benchmark_results", pl.concat(frames, how="vertical_relaxed"))
