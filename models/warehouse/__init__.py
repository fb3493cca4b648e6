"""The results warehouse: one DuckDB file, its read snapshot, pending batches and one Parquet file of predictions
per run (the default), or a DuckLake catalog for many writers (`lake`; chosen by $PROMPTLAB_WAREHOUSE, `backend`).

Every result PromptLab produces is written through `Warehouse.record_run`, one row per fact with its full
provenance, so reports and dashboards are SQL over these tables and never parse logs.

- `records`: what a run records (RunRecord, MetricRow, PerClassRow, predictions) and its validation.
- `schema`: the tables, views and macros (the schema is described there).
- `pending`: each run's rows as a durable batch folder, written before the database is touched.
- `database`: the Warehouse: merging batches, the snapshot readers open, queries, recovering a damaged file.
- `writes`: the SQL that records one run, shared by both backends.
- `lake`: the LakeWarehouse, on DuckLake (Parquet files + a PostgreSQL or SQLite catalog): many writers.
- `backend`: which one a workspace uses ($PROMPTLAB_WAREHOUSE).
- `benchmark`: throughput benchmark rows.

On disk, beside `<name>.duckdb`: `<name>-snapshot.duckdb` (what readers open), `<name>-pending/` (batches not
merged yet: the database was held by a reader), `<name>-rejected/` (batches that can never be merged, with the
reason) and the predictions directory.
"""

from models.warehouse.backend import (
    WAREHOUSE_ENV,
    ResultsWarehouse,
    open_warehouse,
    workspace_warehouse_of,
)
from models.warehouse.benchmark import BENCHMARK_VARIANTS, BENCHMARKS, BenchmarkRow, BenchmarkRun
from models.warehouse.database import (MergeOutcome, RecordOutcome, RecoveryOutcome, Warehouse,
                                       WarehouseDamagedError, WarehouseLockedError, WarehouseStatus)
from models.warehouse.lake import LakeLocation, LakeStatus, LakeWarehouse
from models.warehouse.pending import PendingBatchError, RejectedBatch
from models.warehouse.records import (EMPTY_PREDICTIONS_FILE, PREDICTION_SCHEMA, MetricRow, PerClassRow, RunRecord,
                                      metric_rows, per_class_rows)

__all__ = [
    "BENCHMARK_VARIANTS",
    "BENCHMARKS",
    "BenchmarkRow",
    "BenchmarkRun",
    "EMPTY_PREDICTIONS_FILE",
    "LakeLocation",
    "LakeStatus",
    "LakeWarehouse",
    "MergeOutcome",
    "MetricRow",
    "PendingBatchError",
    "PerClassRow",
    "PREDICTION_SCHEMA",
    "RecordOutcome",
    "RecoveryOutcome",
    "RejectedBatch",
    "ResultsWarehouse",
    "RunRecord",
    "WAREHOUSE_ENV",
    "Warehouse",
    "WarehouseDamagedError",
    "WarehouseLockedError",
    "WarehouseStatus",
    "metric_rows",
    "open_warehouse",
    "per_class_rows",
    "workspace_warehouse_of",
]
