"""The warehouse on DuckLake: many writing processes and hosts, readers that never block them.

DuckLake keeps tables as Parquet files under a data path and their catalog (which files make which snapshot) in a
database. With PostgreSQL as the catalog any number of processes on any number of hosts write at once; SQLite
serves processes of one host, in write-ahead-log mode (set on first use): an open reader never makes a writer wait,
and writers take turns only for the moment of a commit. Every transaction reads one snapshot, so a reader sees whole
runs only and holds no lock a writer waits for.

Same API and same SQL as the DuckDB-file Warehouse (`models/warehouse/database.py`): `record_run`,
`record_benchmark(s)`, `query`, `read_connection`, `ensure_schema`; the same tables (DuckLake has no primary
keys: writes.py keeps run ids and experiment rows unique), and the same views and macros, created as temporary
views in each reading connection (`read_connection`, and `promptlab warehouse sql-init` for the DuckDB CLI).
Predictions are rows of the table `run_predictions` (every run's, the view `predictions` keeps the current runs).

Concurrent writers. Each record transaction first updates the one row of `writer_serial`: DuckLake refuses to
commit a transaction whose tables another committed meanwhile changed, so two records never commit from the same
snapshot; the one that lost retries from the new snapshot (and supersedes the winner's run of the same partition,
exactly as one after the other). A transaction commits whole or not at all: a process killed before its commit
leaves nothing.

Extensions load offline from their PyPI packages (`duckdb-extension-ducklake`, `-postgres-scanner`,
`-sqlite-scanner`), which must be built for the installed DuckDB (pyproject.toml pins all of them together).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import random
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import polars as pl

from models.warehouse.benchmark import BENCHMARK_SCHEMA, BenchmarkRow, BenchmarkRun
from models.warehouse.database import MergeOutcome, Queries, RecordOutcome
from models.warehouse.published import replace_published_results
from models.warehouse.records import (PREDICTION_SCHEMA, MetricRow, PerClassRow, RunRecord, metric_frame,
                                      per_class_frame, prediction_frame, validate_run)
from models.warehouse.schema import SCHEMA_TABLES, SCHEMA_VIEWS, TEST_TIME_VIEWS, sql_string
from models.warehouse.writes import insert_benchmarks, insert_rows, transaction, validated_benchmarks, write_run

if TYPE_CHECKING:
    from models.catalog.published import PublishedResults

logger = logging.getLogger(__name__)

LAKE_ALIAS = "promptlab_lake"
CATALOG_SCANNERS = {"postgres": "postgres_scanner", "sqlite": "sqlite_scanner"}

# Tables only DuckLake needs: predictions as rows (the file warehouse keeps one Parquet file per run), the row every
# writer updates (see the module docstring) and the versions of the schema applied so far.
LAKE_TABLES = """
CREATE TABLE IF NOT EXISTS writer_serial (writes BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS schema_versions (schema_hash VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL);
"""
PREDICTIONS_VIEW = ("CREATE OR REPLACE VIEW predictions AS SELECT * FROM run_predictions "
                    "WHERE run_id IN (SELECT run_id FROM runs WHERE is_current)")


class LakeConfigurationError(ValueError):
    """The lake's address or its extensions are wrong (names what to fix)."""


class LakeUnavailableError(RuntimeError):
    """The lake's catalog cannot be reached or keeps refusing commits."""


def extension_file(name: str) -> Path:
    """The `<name>.duckdb_extension` file shipped by the PyPI package duckdb-extension-<name>, for this DuckDB."""
    package = f"duckdb_extension_{name}"
    requirement = f"duckdb-extension-{name.replace('_', '-')}=={duckdb.__version__}"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LakeConfigurationError(f"the DuckDB extension {name!r} is not installed: pip install '{requirement}'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "extensions"
    file = folder / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not file.exists():
        built_for = sorted(path.name for path in folder.glob("v*"))
        raise LakeConfigurationError(
            f"{package} is built for DuckDB {', '.join(built_for) or 'no version'}, this is DuckDB "
            f"{duckdb.__version__} ({file} is missing): pin both to one version, e.g. pip install '{requirement}'")
    return file


@dataclass(frozen=True)
class LakeLocation:
    """Where a lake is: its catalog (`postgres:<libpq connection string>` or `sqlite:<file>`) and its data path (a
    folder, or object storage where DuckDB reads it)."""

    catalog: str
    data_path: str

    @classmethod
    def parse(cls, url: str, data_path: str | Path) -> LakeLocation:
        """`ducklake:postgres:dbname=promptlab host=db.internal user=promptlab` or `ducklake:sqlite:/shared/lake.sqlite`."""
        if not url.startswith("ducklake:"):
            raise LakeConfigurationError(f"warehouse {url!r}: a lake's address starts with 'ducklake:'")
        catalog = url.removeprefix("ducklake:")
        kind, _, target = catalog.partition(":")
        if kind not in CATALOG_SCANNERS or not target.strip():
            raise LakeConfigurationError(
                f"warehouse {url!r}: expected ducklake:postgres:<connection string> or ducklake:sqlite:<file> "
                f"(a DuckDB-file catalog admits one process: use the default warehouse for that)")
        if kind == "sqlite":
            catalog = f"sqlite:{Path(target).expanduser().absolute()}"
        data = str(data_path)
        if "://" not in data:
            data = str(Path(data).expanduser().absolute()) + "/"
        return cls(catalog, data)

    @property
    def kind(self) -> str:
        return self.catalog.partition(":")[0]

    def describe(self) -> str:
        """The address without a password."""
        catalog = re.sub(r"(password\s*=\s*)\S+", r"\1***", self.catalog)
        return f"ducklake:{catalog} (data {self.data_path})"


def _strip_primary_keys(statement: str) -> str:
    statement = re.sub(r",\s*PRIMARY KEY\s*\([^)]*\)", "", statement)
    return re.sub(r"\s+PRIMARY KEY\b", "", statement)


def _body(statement: str) -> str:
    """A statement without its leading comment lines."""
    lines = statement.strip().splitlines()
    while lines and lines[0].lstrip().startswith("--"):
        lines.pop(0)
    return "\n".join(lines).strip().rstrip(";")


def _split(sql: str) -> list[str]:
    return [body for statement in duckdb.extract_statements(sql) if (body := _body(statement.query))]


def lake_table_statements() -> list[str]:
    """The warehouse's tables as DuckLake creates them: the same columns, no primary keys."""
    statements = _split(SCHEMA_TABLES) + [s for s in _split(BENCHMARK_SCHEMA) if not _is_view_or_macro(s)]
    return [_strip_primary_keys(statement) for statement in statements] + _split(LAKE_TABLES)


def _is_view_or_macro(statement: str) -> bool:
    return bool(re.match(r"CREATE\s+OR\s+REPLACE\s+(VIEW|MACRO)\b", statement, re.IGNORECASE))


def temporary_view_statements() -> list[str]:
    """Every view and macro of the warehouse, as temporary objects of one connection (in dependency order)."""
    statements = (_split(SCHEMA_VIEWS) + [s for s in _split(BENCHMARK_SCHEMA) if _is_view_or_macro(s)]
                  + [PREDICTIONS_VIEW] + _split(TEST_TIME_VIEWS))
    return [re.sub(r"^CREATE\s+OR\s+REPLACE\s+(VIEW|MACRO)\b", r"CREATE OR REPLACE TEMP \1", statement,
                   flags=re.IGNORECASE) for statement in statements]


def _schema_hash() -> str:
    return hashlib.sha256("\n".join(lake_table_statements()).encode()).hexdigest()[:16]


def _is_conflict(error: duckdb.Error) -> bool:
    """A commit refused because another writer committed first, or the SQLite catalog was locked for a moment."""
    message = str(error)
    return isinstance(error, duckdb.TransactionException) or "Transaction conflict" in message or \
        "database is locked" in message


@dataclass(frozen=True)
class LakeStatus:
    location: str
    runs: int
    current_runs: int
    snapshots: int
    latest_snapshot_at: Any


class LakeWarehouse(Queries):
    """The results warehouse on a DuckLake catalog. Holds its address only, never a connection."""

    pending_dir = None  # nothing waits: every record commits or fails

    def __init__(self, location: LakeLocation, *, commit_retries: int = 40, retry_backoff_seconds: float = 0.02,
                 ) -> None:
        self.location = location
        self.commit_retries = commit_retries
        self.retry_backoff_seconds = retry_backoff_seconds
        self._schema_ready = False

    # -------------------------------------------------------------------------------------------- naming
    @property
    def name(self) -> str:
        return self.location.describe()

    @property
    def address(self) -> str:
        """Where the results are, for logs and metadata: the catalog and data path, without a password."""
        return self.name

    def __repr__(self) -> str:
        return f"LakeWarehouse({self.name})"

    def pending_batches(self) -> list[Path]:
        return []

    def merge_pending(self) -> MergeOutcome:
        return MergeOutcome()

    # ------------------------------------------------------------------------------------- connections
    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        if self.location.kind == "sqlite":
            catalog = Path(self.location.catalog.partition(":")[2])
            if read_only and not catalog.exists():
                raise FileNotFoundError(f"warehouse {self.name} does not exist yet; record a run or call "
                                        "ensure_schema()")
            sqlite_write_ahead_log(catalog)
        for attempt in range(self.commit_retries + 1):
            try:
                return self._connect_once(read_only)
            except LakeUnavailableError as error:
                # Writers that find an empty catalog at the same moment all create DuckLake's tables; all but one
                # fail, and then find the lake the winner created.
                if read_only or attempt == self.commit_retries or "Failed to initialize DuckLake" not in str(error):
                    raise
                time.sleep(self.retry_backoff_seconds * (1 + attempt) * (1 + random.random()))
        raise AssertionError("unreachable")

    def _connect_once(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        connection = duckdb.connect()  # in memory: the lake is attached to it
        try:
            connection.execute("SET autoinstall_known_extensions = false")
            connection.execute("SET autoload_known_extensions = false")
            for extension in ("ducklake", CATALOG_SCANNERS[self.location.kind]):
                connection.execute(f"LOAD {sql_string(str(extension_file(extension)))}")
            self._attach(connection, read_only)
            connection.execute(f"USE {LAKE_ALIAS}")
        except duckdb.Error as error:
            connection.close()
            raise LakeUnavailableError(f"warehouse {self.name} cannot be opened: {error}") from error
        except BaseException:
            connection.close()
            raise
        return connection

    def _attach(self, connection: duckdb.DuckDBPyConnection, read_only: bool) -> None:
        """Attach the lake where its catalog says its data is; the data path is given only to the writer that
        creates the lake (DuckLake records it), so a process whose own default differs (another host, another
        working copy) reads and writes the same files."""
        attach = f"ATTACH {sql_string('ducklake:' + self.location.catalog)} AS {LAKE_ALIAS}"
        try:
            connection.execute(attach + (" (READ_ONLY)" if read_only else ""))
        except duckdb.Error as error:
            if read_only or "data_path is not set" not in str(error):
                raise
            connection.execute(f"{attach} (DATA_PATH {sql_string(self.location.data_path)})")

    def _committed(self, connection: duckdb.DuckDBPyConnection, write: Any, what: str) -> None:
        """Run `write(connection)` in one transaction, retrying from a fresh snapshot while commits conflict."""
        for attempt in range(self.commit_retries + 1):
            try:
                with transaction(connection):
                    write(connection)
                return
            except duckdb.Error as error:
                if not _is_conflict(error) or attempt == self.commit_retries:
                    if _is_conflict(error):
                        raise LakeUnavailableError(f"{what}: {self.commit_retries + 1} commits to {self.name} "
                                                   f"conflicted with other writers; the last: {error}") from error
                    raise
                delay = min(1.0, self.retry_backoff_seconds * 2 ** min(attempt, 6))
                time.sleep(delay * random.uniform(0.5, 1.5))  # staggered: writers that collided do not collide again

    # ------------------------------------------------------------------------------------------ schema
    def ensure_schema(self, published: PublishedResults | None = None) -> bool:
        """Create the tables when this version of the schema is not applied yet, and replace the published results
        with `published` (default: the catalog's published_results.yaml, read only when it changed; left as they
        are, logged, when it is malformed) when they hold another file; safe from many processes."""
        return self._ensure_tables(published if published is not None else self._catalog_published_if_changed())

    def _ensure_tables(self, published: PublishedResults | None = None) -> bool:
        """The tables (once per process: each record makes this call), and `published` when given: in the schema's
        own transaction when it creates the tables (one snapshot for both)."""
        if self._schema_ready and published is None:
            return True
        if self.location.kind == "sqlite":
            Path(self.location.catalog.removeprefix("sqlite:")).parent.mkdir(parents=True, exist_ok=True)
        if "://" not in self.location.data_path:
            Path(self.location.data_path).mkdir(parents=True, exist_ok=True)
        schema_hash = _schema_hash()
        with contextlib.closing(self._connect(read_only=False)) as connection:
            if self._schema_ready or self._applied(connection, schema_hash):
                if published is not None:
                    self._committed(connection, lambda c: replace_published_results(c, published),
                                    "replacing the published results")
                self._schema_ready = True
                return True

            def create(connection: duckdb.DuckDBPyConnection) -> None:
                for statement in lake_table_statements():
                    connection.execute(statement)
                connection.register("empty_predictions", pl.DataFrame(schema=PREDICTION_SCHEMA).to_arrow())
                connection.execute("CREATE TABLE IF NOT EXISTS run_predictions AS SELECT * FROM empty_predictions")
                connection.unregister("empty_predictions")
                if not connection.execute("SELECT count(*) FROM writer_serial").fetchone()[0]:
                    connection.execute("INSERT INTO writer_serial VALUES (0)")
                if published is not None:
                    replace_published_results(connection, published)
                if not self._applied(connection, schema_hash):
                    connection.execute("INSERT INTO schema_versions VALUES (?, now()::TIMESTAMP)", [schema_hash])

            self._committed(connection, create, "creating the schema")
        self._schema_ready = True
        return True

    @staticmethod
    def _applied(connection: duckdb.DuckDBPyConnection, schema_hash: str) -> bool:
        tables = {row[0] for row in connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = ?", [LAKE_ALIAS]).fetchall()}
        if "schema_versions" not in tables:
            return False
        return bool(connection.execute("SELECT count(*) FROM schema_versions WHERE schema_hash = ?",
                                       [schema_hash]).fetchone()[0])

    # ------------------------------------------------------------------------------------------ writes
    def record_run(
        self,
        run: RunRecord,
        metrics: Sequence[MetricRow],
        per_class: Sequence[PerClassRow] = (),
        predictions: pl.DataFrame | None = None,
    ) -> RecordOutcome:
        """Record one run in one transaction (see Warehouse.record_run for what it supersedes). Inputs are
        validated before anything is written (ValueError naming the field; a run id recorded already fails too)."""
        validate_run(run)
        metric_rows = metric_frame(run, list(metrics))
        per_class_rows = per_class_frame(run, list(per_class))
        prediction_rows = None if predictions is None else prediction_frame(run, predictions)
        self._ensure_tables()

        def write(connection: duckdb.DuckDBPyConnection) -> None:
            connection.execute("UPDATE writer_serial SET writes = writes + 1")  # every writer conflicts: serial
            write_run(connection, run, metric_rows, per_class_rows, self.name)
            if prediction_rows is not None:
                insert_rows(connection, "run_predictions", prediction_rows)

        with contextlib.closing(self._connect(read_only=False)) as connection:
            self._committed(connection, write, f"run {run.run_id}")
        return RecordOutcome(run.run_id, True, None, self.name, MergeOutcome((run.run_id,)))

    def record_benchmark(self, run: BenchmarkRun, rows: Sequence[BenchmarkRow]) -> None:
        self.record_benchmarks([(run, rows)])

    def record_benchmarks(self, runs: Sequence[tuple[BenchmarkRun, Sequence[BenchmarkRow]]]) -> None:
        """Several benchmark runs in one transaction, all or nothing (see Warehouse.record_benchmarks)."""
        frames, run_ids = validated_benchmarks(runs)
        if not frames:
            return
        self._ensure_tables()

        def write(connection: duckdb.DuckDBPyConnection) -> None:
            connection.execute("UPDATE writer_serial SET writes = writes + 1")
            insert_benchmarks(connection, frames, run_ids, self.name)

        with contextlib.closing(self._connect(read_only=False)) as connection:
            self._committed(connection, write, "benchmark runs " + ", ".join(run_ids))

    # ------------------------------------------------------------------------------------------- reads
    def exists(self) -> bool:
        try:
            with self.read_connection():
                return True
        except FileNotFoundError:
            return False

    # query(): from Queries, on the lake's latest snapshot

    @contextlib.contextmanager
    def read_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection with the warehouse's views. The whole block reads one snapshot (whole runs
        only), whatever commits meanwhile, and no writer waits for it (PostgreSQL, or SQLite in WAL mode)."""
        connection = self._connect(read_only=True)
        try:
            tables = {row[0] for row in connection.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_catalog = ?", [LAKE_ALIAS]).fetchall()}
            if "runs" not in tables:
                raise FileNotFoundError(f"warehouse {self.name} has no tables yet; record a run or call "
                                        "ensure_schema()")
            connection.begin()
            for statement in temporary_view_statements():
                connection.execute(statement)
            yield connection
        finally:
            connection.close()

    def init_sql(self) -> str:
        """SQL that opens this lake read-only with every view, for `duckdb -init <file>`."""
        lines = ["SET autoinstall_known_extensions = false;", "SET autoload_known_extensions = false;"]
        lines += [f"LOAD {sql_string(str(extension_file(name)))};"
                  for name in ("ducklake", CATALOG_SCANNERS[self.location.kind])]
        lines += [f"ATTACH {sql_string('ducklake:' + self.location.catalog)} AS {LAKE_ALIAS} (READ_ONLY);",
                  f"USE {LAKE_ALIAS};"]
        lines += [statement + ";" for statement in temporary_view_statements()]
        return "\n".join(lines) + "\n"

    def status(self) -> LakeStatus:
        with self.read_connection() as connection:
            runs, current = connection.execute("SELECT count(*), count(*) FILTER (WHERE is_current) FROM runs"
                                               ).fetchone()
            snapshots, latest = connection.execute(
                f"SELECT count(*), max(snapshot_time)::VARCHAR FROM ducklake_snapshots('{LAKE_ALIAS}')").fetchone()
        return LakeStatus(self.name, runs, current, snapshots, latest)


def sqlite_write_ahead_log(catalog: Path) -> None:
    """Put a SQLite catalog in WAL mode (kept in the file): in the default rollback mode a reader's open
    transaction makes every writer's commit fail with `database is locked`. Switching needs a moment without other
    connections; when another process holds the file the next connection tries again."""
    catalog.parent.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.closing(sqlite3.connect(catalog, timeout=10)) as database:
            if database.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                database.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as error:
        logger.warning("SQLite catalog %s stays in rollback-journal mode for now: %s", catalog, error)


def lake_data_path_from_environment(database_path: Path) -> str:
    """The lake's data path: $PROMPTLAB_WAREHOUSE_DATA_PATH, else `lake-data/` beside the workspace's database file."""
    return os.environ.get("PROMPTLAB_WAREHOUSE_DATA_PATH") or str(Path(database_path).parent / "lake-data")
