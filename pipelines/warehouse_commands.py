"""`promptlab warehouse merge | status | recover | sql-init`: the runs whose rows wait in pending batches, the read
snapshot, rebuilding a damaged database file, and SQL that opens the results read-only in the DuckDB CLI, on either
backend ($PROMPTLAB_WAREHOUSE).

A run whose warehouse was held by a reader (a notebook, `duckdb -readonly`, a dashboard) keeps its rows in a
pending batch (models/warehouse/pending.py). They are merged by the next run, by the warehouse_merge_sensor, at the
end of `promptlab run`, or by `promptlab warehouse merge`. Exit codes of `merge`: 0 nothing left waiting, 1 a batch
was rejected (named, with its reason), 75 batches still wait because the database is held, the disk is full or
the file is damaged. `status` exits 2 when the database or its snapshot cannot be opened (it says which, and why);
`recover` then rebuilds the database from the snapshot and the pending batches, and exits 1 when something could
not be restored (it names it). A DuckLake warehouse has nothing pending: every run commits whole or not at all.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from models.warehouse import (
    LakeStatus,
    MergeOutcome,
    ResultsWarehouse,
    Warehouse,
    WarehouseStatus,
    workspace_warehouse_of,
)

EXIT_REJECTED = 1
EXIT_NOT_RESTORED = 1  # `recover`: something could not be restored (named)
EXIT_DAMAGED = 2  # `status`: the database or its snapshot cannot be opened
EXIT_STILL_PENDING = 75  # EX_TEMPFAIL: try again once the reader closes


def add_warehouse_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("warehouse", help="merge results waiting in pending batches; show what waits")
    actions = parser.add_subparsers(dest="warehouse_command", required=True)
    actions.add_parser("merge", help="merge every pending batch into the warehouse and refresh its snapshot")
    actions.add_parser("status", help="pending and rejected batches, the age of the read snapshot and whether the "
                       "database and snapshot open (DuckDB file); runs and snapshots (DuckLake)")
    actions.add_parser("recover", help="rebuild a damaged or missing database file from its snapshot and the pending "
                       "batches, keeping the damaged file; says what it could not restore")
    sql_init = actions.add_parser("sql-init", help="SQL that opens the results read-only with every view: "
                                  "`duckdb -init <file>`")
    sql_init.add_argument("--output", type=Path, help="write it to this file (default: print it)")


def workspace_warehouse() -> ResultsWarehouse:
    """The warehouse of the default workspace ($PROMPTLAB_WORKSPACE or ./workspace)."""
    from pipelines.resources import PromptLabResource

    return workspace_warehouse_of(PromptLabResource().workspace())


def describe_status(status: WarehouseStatus | LakeStatus) -> list[str]:
    if isinstance(status, LakeStatus):
        latest = f", the latest at {status.latest_snapshot_at}" if status.latest_snapshot_at else ""
        return [f"lake:     {status.location}", f"runs:     {status.runs} ({status.current_runs} current)",
                f"snapshots: {status.snapshots}{latest}", "pending:  none (every run commits whole or not at all)"]
    if status.snapshot_age_seconds is None:
        snapshot = ("none: `promptlab warehouse recover` rebuilds the database from the pending batches alone"
                    if status.database_damage else "none yet (taken by the next merge)")
    elif status.snapshot_damage:
        snapshot = f"DAMAGED: {status.snapshot_damage}"
    else:
        if status.database_damage:
            freshness = "intact: `promptlab results` and the report read it, with the pending batches"
        elif status.snapshot_behind_database:
            freshness = "OLDER than the database: run `promptlab warehouse merge`"
        else:
            freshness = "up to date with the database"
        snapshot = f"taken {status.snapshot_age_seconds:.0f} s ago, {freshness}"
    database = f"database: {status.database_path}"
    if status.database_damage:
        database += (f" (DAMAGED: {status.database_damage}; runs keep their rows pending meanwhile; "
                     "`promptlab warehouse recover` rebuilds it from the snapshot and the pending batches)")
    elif status.snapshot_damage:
        database += " (opens; `promptlab warehouse merge` takes a new snapshot)"
    waiting_in = f" in {status.pending[0].parent}" if status.pending else ""
    lines = [database, f"snapshot: {status.snapshot_path} ({snapshot})",
             f"pending:  {len(status.pending)} batch(es){waiting_in}"]
    lines += [f"  {path.name}" for path in status.pending]
    lines.append(f"rejected: {len(status.rejected)} batch(es)")
    lines += [f"  {rejected.path}: {rejected.reason}" for rejected in status.rejected]
    return lines


def describe_merge(outcome: MergeOutcome) -> list[str]:
    lines = [f"merged {len(outcome.merged)} run(s)" + (f": {', '.join(outcome.merged)}" if outcome.merged else "")]
    for rejected in outcome.rejected:
        lines.append(f"REJECTED {rejected.path}: {rejected.reason}")
    if outcome.pending:
        lines.append(f"{len(outcome.pending)} batch(es) still pending ({outcome.blocked_by}); their rows are in "
                     "`promptlab results` and the report already, and merge once the warehouse is free")
    return lines


def merge_exit_code(outcome: MergeOutcome) -> int:
    if outcome.rejected:
        return EXIT_REJECTED
    return EXIT_STILL_PENDING if outcome.pending else 0


def run_warehouse_command(arguments: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    warehouse = workspace_warehouse()
    if arguments.warehouse_command == "status":
        status = warehouse.status()
        for line in describe_status(status):
            log(line)
        if isinstance(status, WarehouseStatus) and (status.database_damage or status.snapshot_damage):
            return EXIT_DAMAGED
        return EXIT_REJECTED if isinstance(status, WarehouseStatus) and status.rejected else 0
    if arguments.warehouse_command == "recover":
        if not isinstance(warehouse, Warehouse):
            log(f"{warehouse.address}: a DuckLake warehouse has no file to rebuild (its catalog database is "
                "recovered with that database's own tools)")
            return EXIT_NOT_RESTORED
        recovery = warehouse.recover()
        for line in recovery.describe():
            log(line)
        return 0 if recovery.damage is None or recovery.complete else EXIT_NOT_RESTORED
    if arguments.warehouse_command == "sql-init":
        sql = warehouse.init_sql()
        if arguments.output is None:
            log(sql.rstrip("\n"))
        else:
            arguments.output.write_text(sql)
            log(f"wrote {arguments.output}: `duckdb -init {arguments.output}` opens {warehouse.name} read-only")
        return 0
    outcome = warehouse.merge_pending()
    for line in describe_merge(outcome):
        log(line)
    return merge_exit_code(outcome)


def merge_after_run(log: Callable[[str], None] = print) -> None:
    """The end of `promptlab run`: merge what its stages left pending and say what still waits."""
    warehouse = workspace_warehouse()
    if not warehouse.pending_batches():
        return
    for line in describe_merge(warehouse.merge_pending()):
        log(f"warehouse: {line}")
