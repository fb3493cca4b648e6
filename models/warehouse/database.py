"""The Warehouse: the DuckDB file, its read snapshot, its pending batches and its predictions directory.

Writes. DuckDB allows one writing process, and any process holding the file, even read-only (a notebook, the
DuckDB CLI, a dashboard), blocks writers. So `record_run` first writes the run as a pending batch
(models/warehouse/pending.py), durable on disk, and only then merges the pending batches, oldest first, each in
one transaction. When the file stays locked through a short backoff the run's rows simply stay pending: the call
returns normally and says so (`RecordOutcome`). The next `record_run`, `merge_pending()` (`promptlab warehouse
merge`, the `warehouse_merge_sensor`, the end of `promptlab run`) merges them once the file is free. Mergers take
an flock on `<pending>/.merge.lock`, and every merged batch is noted in `merged_batches` in its own transaction,
so two mergers or a crash between a commit and the deletion of a batch never insert a run twice.

Reads. After each merge the merger copies the closed, checkpointed file to `<name>-snapshot.duckdb` (temporary
file + rename), still under the flock, and only then deletes the merged batches: until the snapshot holds a run,
its batch stays. Readers open the snapshot, never the main file, so a reader can neither block a writer nor see
half a merge. `query()` also applies the pending batches to a private copy of the snapshot (rebuilt only when the
snapshot or the set of batches changed), so its answers include every recorded run.

Failures. The batch is written first and is small, so a full disk or a damaged database file never loses a run's
rows: they stay pending (the outcome says why) until the disk has room or `recover()` (`promptlab warehouse
recover`) has rebuilt the file from the snapshot and the batches. Readers never need to write beside the database:
a snapshot that cannot be caught up, or a database that cannot be opened, leaves them reading the snapshot there is.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import polars as pl

from models.warehouse import pending as batches
from models.warehouse.benchmark import BENCHMARK_SCHEMA, BenchmarkRow, BenchmarkRun
from models.warehouse.pending import PendingBatch, PendingBatchError, RejectedBatch
from models.warehouse.records import (EMPTY_PREDICTIONS_FILE, PREDICTION_SCHEMA, PREDICTIONS_FILE_PREFIX, MetricRow,
                                      PerClassRow, RunRecord, metric_frame, per_class_frame, prediction_frame,
                                      validate_run)
from models.warehouse.published import (RECORDED_FILE_SQL, catalog_published_file, catalog_published_results,
                                        catalog_published_results_or_log, file_sha256, holds_file,
                                        replace_published_results)
from models.warehouse.schema import SCHEMA_TABLES, SCHEMA_VIEWS, TEST_TIME_VIEWS, sql_string
from models.warehouse.writes import insert_benchmarks, transaction, validated_benchmarks, write_run

if TYPE_CHECKING:
    from models.catalog.published import PublishedResults

logger = logging.getLogger(__name__)
# Below this much free space beside the database, ensure_schema leaves the published-results tables for later.
PUBLISHED_SYNC_MIN_FREE_BYTES = 64 << 20


def _free_bytes(directory) -> int:
    import shutil

    try:
        return shutil.disk_usage(directory).free
    except OSError:  # the folder does not exist yet: nothing to protect
        return PUBLISHED_SYNC_MIN_FREE_BYTES

# Errors that say a batch's rows can never go in as they are (as opposed to a disk or I/O failure worth retrying).
_PERMANENT_BATCH_ERRORS = (PendingBatchError, ValueError, duckdb.ConstraintException, duckdb.ConversionException)


class WarehouseLockedError(RuntimeError):
    """The database file stayed locked by another process through every retry."""


class WarehouseDamagedError(RuntimeError):
    """A database or snapshot file DuckDB cannot open or read (truncated, overwritten, not a DuckDB file); the
    message names the file and what to do."""


RECOVER_HINT = ("`promptlab warehouse recover` rebuilds it from the snapshot and the pending batches (the damaged "
                "file is kept beside it)")


@dataclass(frozen=True)
class MergeOutcome:
    """What one merge did: run ids merged (oldest first), batches still waiting, batches set aside, and why it
    stopped early (`blocked_by`: the lock that stayed busy, or the error that interrupted it), if it did."""

    merged: tuple[str, ...] = ()
    pending: tuple[Path, ...] = ()
    rejected: tuple[RejectedBatch, ...] = ()
    blocked_by: str | None = None


@dataclass(frozen=True)
class RecordOutcome:
    """Where the rows of one recorded run are: merged into the database, or waiting in `batch_path`."""

    run_id: str
    merged: bool
    batch_path: Path | None
    database_path: Path | str  # a DuckLake warehouse: its address
    merge: MergeOutcome

    def describe(self) -> str:
        if self.merged:
            text = f"run {self.run_id}: rows merged into {self.database_path}"
        else:
            text = (f"run {self.run_id}: rows are pending in {self.batch_path} ({self.merge.blocked_by}); they are "
                    f"merged into {self.database_path} by the next run, `promptlab warehouse merge` or the "
                    "warehouse_merge_sensor once that is resolved, and Warehouse.query / the report include them now")
        if self.merge.rejected:
            text += "; REJECTED batches (never merged, see reason.txt): " + ", ".join(
                str(rejected.path) for rejected in self.merge.rejected)
        return text


@dataclass(frozen=True)
class WarehouseStatus:
    database_path: Path
    snapshot_path: Path
    pending: tuple[Path, ...]
    rejected: tuple[RejectedBatch, ...]
    snapshot_age_seconds: float | None  # None: no snapshot yet
    snapshot_behind_database: bool  # the database file changed after the snapshot was taken
    database_damage: str | None = None  # why DuckDB cannot open or read the database file; None: it can, or it is held
    snapshot_damage: str | None = None  # the same for the snapshot


@dataclass(frozen=True)
class RecoveryOutcome:
    """What `Warehouse.recover()` did: where the damaged file went, which runs the snapshot gave back, the merge of
    the pending batches, and the prediction files of runs nothing could restore."""

    database_path: Path
    damage: str | None  # why the database could not be used; None: it was intact and nothing was done
    damaged_copy: Path | None = None
    snapshot_runs: int = 0  # runs restored from the snapshot
    snapshot_problem: str | None = None  # why the snapshot could not be used (missing, damaged)
    merge: MergeOutcome = MergeOutcome()
    unrestored_predictions: tuple[Path, ...] = ()  # prediction files of runs neither the snapshot nor a batch holds

    @property
    def complete(self) -> bool:
        """Everything recorded is back: nothing left pending, rejected or unrestored."""
        return (self.snapshot_problem is None and not self.merge.pending and not self.merge.rejected
                and not self.unrestored_predictions)

    def describe(self) -> list[str]:
        if self.damage is None:
            return [f"{self.database_path} opens and reads: nothing to recover"]
        lines = [f"{self.database_path} could not be used: {self.damage}"]
        if self.damaged_copy is not None:
            lines.append(f"moved it aside to {self.damaged_copy} (kept, never deleted)")
        if self.snapshot_problem is None:
            lines.append(f"restored {self.snapshot_runs} run(s) from the snapshot")
        else:
            lines.append(f"NOT restored from the snapshot ({self.snapshot_problem}): the database was rebuilt from the "
                         "pending batches alone; runs merged before are lost unless listed below")
        lines.append(f"merged {len(self.merge.merged)} pending batch(es)"
                     + (f": {', '.join(self.merge.merged)}" if self.merge.merged else ""))
        lines += [f"REJECTED {rejected.path}: {rejected.reason}" for rejected in self.merge.rejected]
        if self.merge.pending:
            lines.append(f"{len(self.merge.pending)} batch(es) still pending ({self.merge.blocked_by})")
        if self.unrestored_predictions:
            lines.append(f"NOT restored: {len(self.unrestored_predictions)} run(s) whose prediction file remains but "
                         "whose run record and metrics were in the damaged file only (re-run their partitions; the "
                         "files stay where they are):")
            lines += [f"  {path}" for path in self.unrestored_predictions]
        return lines


def _is_lock_conflict(error: duckdb.Error) -> bool:
    message = str(error)
    # Another process holds the file lock, or this process holds it with the other access mode.
    return "Could not set lock" in message or "different configuration" in message


def _is_disk_full(error: BaseException) -> bool:
    return getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error)


def _glob_literal(path: str) -> str:
    """`path` as a DuckDB glob pattern that matches itself only: each glob character becomes a one-character class
    (a workspace named `proj [v2]` or `*?`). DuckDB has no escape for a backslash: `?` matches it."""
    return re.sub(r"([\[\]*?])", r"[\1]", path).replace("\\", "?")


def _file_identity(file: Path | Any) -> tuple[int, int, int] | None:
    """(inode, mtime, size) of a path or an open file; None when there is none. A replaced file gets a new inode."""
    if file is None:
        return None
    try:
        stat = os.fstat(file.fileno()) if hasattr(file, "fileno") else os.stat(file)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _replace_with_copy(source: Path, target: Path) -> None:
    """Copy `source` over `target` atomically: readers holding the old `target` keep reading it."""
    temporary = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
    try:
        shutil.copyfile(source, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


class _ReadCopies:
    """Per process: one private copy of the snapshot with the pending batches applied, per warehouse, rebuilt only
    when the snapshot file or the set of pending batches changed."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.directory: Path | None = None
        self.copies: dict[Path, tuple[tuple, Path]] = {}

    def folder(self) -> Path:
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="promptlab-read-copies-"))
            atexit.register(shutil.rmtree, self.directory, True)
        return self.directory


_read_copies = _ReadCopies()


class _CopyConnection:
    """A writable connection to a copy of a database in this process's temporary folder, moved in whole over the
    database when closed (what was committed; readers keep the file they opened). DuckDB (1.5) cannot keep a
    write-ahead log in a folder whose path holds `?` (it names it `<path up to ?>.wal?<rest>`), so a warehouse there
    writes this way, under the merge lock like every writer."""

    def __init__(self, target: Path) -> None:
        self._target = target
        self._work = _read_copies.folder() / f"write-{uuid.uuid4().hex}.duckdb"
        try:
            if target.exists():
                shutil.copyfile(target, self._work)
            self._connection: duckdb.DuckDBPyConnection | None = duckdb.connect(str(self._work))
        except BaseException:
            self._work.unlink(missing_ok=True)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def __enter__(self) -> _CopyConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._connection is None:
            return
        self._connection.close()
        self._connection = None
        try:
            _replace_with_copy(self._work, self._target)
        finally:
            self._work.unlink(missing_ok=True)


class Queries:
    """`query` and `sync_published_results` for a warehouse class with a `read_connection()` context manager and an
    `ensure_schema(published)` (both backends)."""

    def read_connection(self) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        raise NotImplementedError

    def ensure_schema(self, published: PublishedResults | None = None) -> bool:
        raise NotImplementedError

    def sync_published_results(self, published: PublishedResults | None = None) -> bool:
        """Make the published-results tables hold `published` (default: the catalog's published_results.yaml,
        CatalogError when it changed and is malformed): nothing is written when they hold that file already, else the
        schema is ensured with it. True when the tables hold it afterwards; False when the warehouse could not be
        written now (held by another process: logged), and they keep what they held."""
        if published is None:
            if self._holds_file(catalog_published_file()):
                return True
            published = catalog_published_results()
        elif self._holds_file(published.path, published.sha256):
            return True
        return self.ensure_schema(published)

    def _holds_file(self, path: Path, sha256: str | None = None) -> bool:
        """Whether the published-results tables hold the file at `path` (sha256: of its bytes now, by default);
        False as well when they cannot be read (no warehouse yet, one from before these tables, a damaged file)."""
        try:
            recorded = self.query(RECORDED_FILE_SQL)
        except (OSError, duckdb.Error, RuntimeError):
            return False
        return holds_file(recorded, path, file_sha256(path) if sha256 is None else sha256)

    def _catalog_published_if_changed(self) -> PublishedResults | None:
        """For ensure_schema: the catalog's published results when the tables do not hold its file yet (None, logged,
        when it is malformed); None when they do."""
        return None if self._holds_file(catalog_published_file()) else catalog_published_results_or_log()

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> pl.DataFrame:
        """Run `sql` on what `read_connection()` reads (every view of the warehouse) and return its rows."""
        with self.read_connection() as connection:
            result = connection.execute(sql, params) if params is not None else connection.execute(sql)
            return result.pl()


class Warehouse(Queries):
    """The results warehouse. Holds paths only, never a connection."""

    def __init__(
        self,
        database_path: Path,
        predictions_dir: Path,
        *,
        lock_retries: int = 4,
        lock_backoff_seconds: float = 0.05,
        merge_lock_wait_seconds: float = 30.0,
    ) -> None:
        self.database_path = Path(database_path).absolute()
        self.predictions_dir = Path(predictions_dir).absolute()
        # A reader keeps the file for minutes; retrying longer would only delay the run, whose rows wait safely.
        self.lock_retries = lock_retries
        self.lock_backoff_seconds = lock_backoff_seconds
        # Mergers hold the merge lock for one merge (a transaction per batch and a file copy), never longer.
        self.merge_lock_wait_seconds = merge_lock_wait_seconds

    # ------------------------------------------------------------------------------------------------- paths
    @property
    def name(self) -> str:
        """How messages name it."""
        return self.database_path.name

    @property
    def address(self) -> str:
        """Where the results are, for logs and metadata: the database file's path."""
        return str(self.database_path)

    def exists(self) -> bool:
        """Whether any run was recorded: the database file, or a pending batch."""
        return self.database_path.exists() or bool(self.pending_batches())

    @property
    def snapshot_path(self) -> Path:
        """The read-only copy readers open: `<name>-snapshot.duckdb` beside the database."""
        return self.database_path.with_name(f"{self.database_path.stem}-snapshot.duckdb")

    @property
    def pending_dir(self) -> Path:
        return self.database_path.with_name(f"{self.database_path.stem}-pending")

    @property
    def rejected_dir(self) -> Path:
        return self.database_path.with_name(f"{self.database_path.stem}-rejected")

    @property
    def _merge_lock_path(self) -> Path:
        return self.pending_dir / ".merge.lock"

    def prediction_file(self, run_id: str) -> Path:
        """Where the predictions of `run_id` live once merged."""
        return self.predictions_dir / f"{PREDICTIONS_FILE_PREFIX}{run_id}.parquet"

    def pending_batches(self) -> list[Path]:
        """Batches waiting to be merged, oldest first."""
        return batches.batch_folders(self.pending_dir)

    # ----------------------------------------------------------------------------------------- connections
    def _connect(self, read_only: bool, path: Path | None = None, retries: int | None = None
                 ) -> duckdb.DuckDBPyConnection:
        path = path or self.database_path
        retries = self.lock_retries if retries is None else retries
        if read_only and not path.exists():
            raise FileNotFoundError(f"warehouse database {path} does not exist; record a run or call ensure_schema()")
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        last_error: duckdb.Error | None = None
        for attempt in range(retries + 1):
            try:
                if not read_only and "?" in str(path):
                    return _CopyConnection(path)
                return duckdb.connect(str(path), read_only=read_only)
            except duckdb.Error as error:
                if _is_disk_full(error):
                    raise
                if not _is_lock_conflict(error):
                    raise WarehouseDamagedError(self._damage_message(path, error)) from error
                last_error = error
                if attempt < retries:
                    time.sleep(self.lock_backoff_seconds * 2**attempt)
        raise WarehouseLockedError(
            f"warehouse database {path} is locked by another connection (tried {retries + 1} times; "
            f"close read-only sessions such as the DuckDB CLI, or read {self.snapshot_path.name}): {last_error}"
        )

    def _damage_message(self, path: Path, error: BaseException) -> str:
        if path == self.database_path:
            return f"warehouse database {path} cannot be opened (damaged, or not a DuckDB file): {error}; {RECOVER_HINT}"
        return (f"{path} cannot be opened (damaged, or not a DuckDB file): {error}; `promptlab warehouse merge` "
                "takes a new snapshot once the database opens, or `promptlab warehouse recover` rebuilds it")

    def _damage_of(self, path: Path) -> str | None:
        """Why DuckDB cannot open or read `path`; None when it can, when it is missing, or when another process
        holds it (a holder opened it, so it opens)."""
        if not path.exists():
            return None
        try:
            connection = duckdb.connect(str(path), read_only=True)
        except duckdb.Error as error:
            return None if _is_lock_conflict(error) else str(error)
        with connection:
            try:
                connection.execute("SELECT count(*) FROM runs").fetchone()
            except duckdb.CatalogException:
                pass  # a file without the schema yet is not damaged
            except duckdb.Error as error:
                return str(error)
        return None

    # ---------------------------------------------------------------------------------------------- schema
    def _ensure_empty_predictions_file(self) -> None:
        empty_file = self.predictions_dir / EMPTY_PREDICTIONS_FILE
        if empty_file.exists():
            return
        self.predictions_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.predictions_dir / f".tmp-{uuid.uuid4().hex}.parquet"
        pl.DataFrame(schema=PREDICTION_SCHEMA).write_parquet(temporary)
        os.replace(temporary, empty_file)

    def _predictions_source_sql(self) -> str:
        files = sql_string(f"{_glob_literal(str(self.predictions_dir))}/{PREDICTIONS_FILE_PREFIX}*.parquet")
        return f"SELECT {', '.join(PREDICTION_SCHEMA)} FROM read_parquet({files}, hive_partitioning = false)"

    def _create_schema(self, connection: duckdb.DuckDBPyConnection) -> None:
        connection.execute(SCHEMA_TABLES)
        connection.execute(SCHEMA_VIEWS)
        connection.execute(BENCHMARK_SCHEMA)
        # The glob always matches the empty typed file; the filter keeps the current runs only (superseded
        # runs keep their files for history).
        connection.execute(
            f"CREATE OR REPLACE VIEW predictions AS {self._predictions_source_sql()} "
            "WHERE run_id IN (SELECT run_id FROM runs WHERE is_current)"
        )
        connection.execute(TEST_TIME_VIEWS)

    def ensure_schema(self, published: PublishedResults | None = None) -> bool:
        """Create the tables, views, predictions directory and snapshot if missing, and replace the published
        results with `published` (default: the catalog's published_results.yaml, read only when it changed; left as
        they are, logged, when it is malformed) when they hold another file; safe to call any number of times.
        Returns False, without raising, when another process holds the database, the disk is full or the file is
        damaged (logged; the next merge creates the schema, and a run's rows wait pending meanwhile)."""
        published = published if published is not None else self._catalog_published_if_changed()
        if published is not None and _free_bytes(self.database_path.parent) < PUBLISHED_SYNC_MIN_FREE_BYTES:
            # Replacing the tables rewrites database blocks: on a nearly full disk that would take the room a run's
            # pending batch needs. They are synced by a later call, once there is room.
            logger.warning("published results not synced into %s now: less than %d MiB free", self.database_path,
                           PUBLISHED_SYNC_MIN_FREE_BYTES >> 20)
            published = None
        try:
            self._ensure_empty_predictions_file()
            with batches.exclusive_file_lock(self._merge_lock_path, self.merge_lock_wait_seconds) as acquired:
                if not acquired:
                    return False
                try:  # one attempt: every merge creates the schema too, so waiting here would only slow the run
                    connection = self._connect(read_only=False, retries=0)
                except WarehouseLockedError as error:
                    logger.info("schema not ensured now: %s", error)
                    return False
                with connection, transaction(connection):
                    self._create_schema(connection)
                    if published is not None:
                        replace_published_results(connection, published)
                self._refresh_snapshot_or_log()
        except (OSError, duckdb.Error, WarehouseDamagedError) as error:
            logger.error("schema of %s not ensured now: %s", self.database_path, error)
            return False
        return True

    # ---------------------------------------------------------------------------------------------- writes
    def record_run(
        self,
        run: RunRecord,
        metrics: Sequence[MetricRow],
        per_class: Sequence[PerClassRow] = (),
        predictions: pl.DataFrame | None = None,
    ) -> RecordOutcome:
        """Record one run, replacing the current run of its (stage, dataset, partition_key, source_dataset) and
        every current run of its backbone name with other (non-NULL) weights.

        Inputs are validated before anything is written (ValueError naming the field; a run id recorded already
        fails too). The run is written as a durable pending batch, then merged with every earlier pending batch,
        each in one transaction. A database held by another process, a full disk or a damaged database file never
        fails the call once the batch is written: the rows stay pending and the outcome says where and why. Rows
        that can never go in (a run id recorded already) remove the batch and raise, so that call leaves nothing
        behind.
        """
        validate_run(run)
        metric_rows_frame = metric_frame(run, list(metrics))
        per_class_rows_frame = per_class_frame(run, list(per_class))
        predictions_frame = None if predictions is None else prediction_frame(run, predictions)
        self._refuse_pending_run_id(run.run_id)

        # First, before anything large is written (the database, its snapshot): the batch is a few small files.
        batch_path = batches.write_batch(self.pending_dir, run, metric_rows_frame, per_class_rows_frame,
                                         predictions_frame)
        try:
            merge = self._merge(own_batch=batch_path)  # a run id recorded already fails here (ValueError)
            merged = run.run_id in merge.merged
            if not merged and not batch_path.exists():
                # another process's merge took this batch while this one waited for the merge lock (parallel
                # workers): it was merged, or set aside as rejected, and then it says why
                rejected = sorted(self.rejected_dir.glob(f"{batch_path.name}*"))
                if rejected:
                    raise ValueError(f"run {run.run_id}: its batch was rejected by a concurrent merge; see "
                                     f"{rejected[0]}")
                merged = True
            elif not merged:
                self._refuse_recorded_run_id(run.run_id)  # the merge could not check it: the snapshot can
        except BaseException:
            shutil.rmtree(batch_path, ignore_errors=True)
            raise
        outcome = RecordOutcome(run.run_id, merged, None if merged else batch_path, self.database_path, merge)
        if not merged or merge.rejected:
            logger.warning(outcome.describe())
        return outcome

    def merge_pending(self) -> MergeOutcome:
        """Merge every pending batch, oldest first, then refresh the snapshot. Never raises for a locked database
        (the outcome says what blocked it); a batch that can never be merged is moved to the rejected folder and
        named in the outcome; a disk or database failure on a batch raises, naming the batch."""
        return self._merge(own_batch=None)

    def _refuse_pending_run_id(self, run_id: str) -> None:
        pending = [folder for folder in self.pending_batches() if batches.batch_run_id(folder) == run_id]
        if pending:
            raise ValueError(f"run.run_id: {run_id!r} is already recorded (pending in {pending[0]})")

    def _refuse_recorded_run_id(self, run_id: str) -> None:
        try:
            connection = self._connect(read_only=True, path=self.snapshot_path)
        except (FileNotFoundError, WarehouseLockedError, WarehouseDamagedError, duckdb.Error):
            return  # nothing to check against now: the merge rejects a duplicate, naming its batch
        with connection:
            if connection.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchone()[0]:
                raise ValueError(f"run.run_id: {run_id!r} is already recorded in {self.database_path}")

    def _merge(self, own_batch: Path | None) -> MergeOutcome:
        merged: list[str] = []
        rejected: list[RejectedBatch] = []
        committed: list[Path] = []  # batches whose rows are in the database: deleted once the snapshot holds them
        with batches.exclusive_file_lock(self._merge_lock_path, self.merge_lock_wait_seconds) as acquired:
            if not acquired:
                return MergeOutcome(pending=tuple(self.pending_batches()),
                                    blocked_by=f"another process kept merging for {self.merge_lock_wait_seconds:g} s")
            batches.remove_stale_temporaries(self.pending_dir)
            folders = self.pending_batches()
            blocked_by = None
            if folders or own_batch is None:
                try:
                    self._ensure_empty_predictions_file()
                    connection = self._connect(read_only=False)
                except WarehouseLockedError as error:
                    logger.debug("merge postponed: %s", error)
                    return MergeOutcome(pending=tuple(folders), blocked_by=f"{self.database_path.name} is held by "
                                        "another process, e.g. a read-only DuckDB session")
                except (WarehouseDamagedError, OSError, duckdb.Error) as error:  # damaged, or a full disk
                    logger.error("merge postponed: %s", error)
                    return MergeOutcome(pending=tuple(folders), blocked_by=str(error))
                try:
                    with connection:
                        try:
                            with transaction(connection):
                                self._create_schema(connection)
                        except (OSError, duckdb.Error) as error:
                            if own_batch is None:
                                raise
                            folders, blocked_by = [], f"the schema of {self.database_path.name} failed: {error}"
                            logger.error(blocked_by)
                        for folder in folders:
                            try:
                                run_id = self._merge_batch(connection, folder)
                            except FileNotFoundError:
                                continue  # removed meanwhile by the failed call that wrote it
                            except _PERMANENT_BATCH_ERRORS as error:
                                if folder == own_batch:
                                    raise
                                rejected.append(batches.reject_batch(folder, self.rejected_dir, str(error)))
                                logger.error("pending batch %s rejected: %s", folder, error)
                                continue
                            except Exception as error:
                                if own_batch is None:
                                    raise RuntimeError(f"merging pending batch {folder} failed: {error}") from error
                                # e.g. a full disk: this run's rows and every later batch wait, whole, on disk
                                blocked_by = f"merging pending batch {folder} failed: {error}"
                                logger.error(blocked_by)
                                break
                            committed.append(folder)
                            if run_id is not None:
                                merged.append(run_id)
                finally:
                    # Whatever was committed is in the file: the snapshot must show it before its batches go. A
                    # failed copy leaves the previous snapshot and keeps those batches, so every read still has
                    # their rows; it never undoes a merge.
                    if self._refresh_snapshot_or_log():
                        self._finish_batches(committed)
                    elif committed:
                        blocked_by = blocked_by or (
                            f"{self.snapshot_path.name} could not be refreshed (see the log); the merged batches stay "
                            "until it is, so every read still has their rows")
            return MergeOutcome(tuple(merged), tuple(self.pending_batches()), tuple(rejected), blocked_by)

    def _merge_batch(self, connection: duckdb.DuckDBPyConnection, folder: Path) -> str | None:
        """Merge one batch in one transaction. Returns the run id, or None for a batch merged before (the snapshot
        was not refreshed then, or a crash came between a commit and the deletion of the batch)."""
        already = connection.execute("SELECT count(*) FROM merged_batches WHERE batch = ?", [folder.name]).fetchone()
        if already[0]:
            return None
        batch = batches.read_batch(folder)
        with transaction(connection):
            self._write_batch(connection, batch)
        try:  # the rows are in: their predictions join the others now (a rename, needing no room)
            self._place_predictions(folder)
        except OSError as error:  # moved when the batch is cleared
            logger.warning("predictions of run %s not moved yet: %s", batch.run.run_id, error)
        return batch.run.run_id

    def _write_batch(self, connection: duckdb.DuckDBPyConnection, batch: PendingBatch) -> None:
        write_run(connection, batch.run, batch.metrics, batch.per_class, str(self.database_path))
        connection.execute("INSERT INTO merged_batches VALUES (?, ?, ?)",
                           [batch.name, batch.run.run_id, datetime.now(UTC).replace(tzinfo=None)])

    def _finish_batches(self, folders: Sequence[Path]) -> None:
        for folder in folders:
            try:
                self._finish_batch(folder)
            except OSError as error:  # the rows are in: the next merge finishes moving and deleting the files
                logger.warning("batch %s merged, but not cleared yet: %s", folder, error)

    def _place_predictions(self, folder: Path) -> None:
        predictions = folder / batches.PREDICTIONS_FILE
        if predictions.exists():
            os.replace(predictions, self.prediction_file(batches.batch_run_id(folder)))

    def _finish_batch(self, folder: Path) -> None:
        """Delete a merged batch once the snapshot holds it (its predictions may still be in it)."""
        self._place_predictions(folder)
        shutil.rmtree(folder)

    @property
    def _wal_path(self) -> Path:
        return self.database_path.with_name(self.database_path.name + ".wal")

    def _refresh_snapshot(self) -> bool:
        """Copy the database to the snapshot; call under the merge lock with no connection open in this process.
        False when the file is missing or cannot be checkpointed now; OSError when the copy fails (a full disk)."""
        if not self.database_path.exists():
            return False
        wal = self._wal_path
        if wal.exists() and wal.stat().st_size:
            # A writer died before checkpointing, or a full disk stopped the checkpoint: the main file alone is
            # incomplete until a clean close.
            try:
                self._connect(read_only=False).close()
            except WarehouseLockedError as error:
                logger.warning("snapshot not refreshed: %s", error)
                return False
            if wal.exists() and wal.stat().st_size:
                logger.error("snapshot %s not refreshed: %s could not be checkpointed (is the disk full?)",
                             self.snapshot_path, self.database_path)
                return False
        _replace_with_copy(self.database_path, self.snapshot_path)
        return True

    def _refresh_snapshot_or_log(self) -> bool:
        try:
            return self._refresh_snapshot()
        except (OSError, duckdb.Error, WarehouseDamagedError) as error:
            logger.error("snapshot %s not refreshed: %s", self.snapshot_path, error)
            return False

    def record_benchmark(self, run: BenchmarkRun, rows: Sequence[BenchmarkRow]) -> None:
        """Record every measurement of one benchmark run in one transaction, all or nothing (record_benchmarks)."""
        self.record_benchmarks([(run, rows)])

    def record_benchmarks(self, runs: Sequence[tuple[BenchmarkRun, Sequence[BenchmarkRow]]]) -> None:
        """Record several benchmark runs in one transaction, all or nothing.

        Every row of every run is validated first (ValueError naming rows[i].field); a run id recorded already, or
        given twice, fails. Unlike record_run this writes directly: a held database raises WarehouseLockedError
        (the benchmark's JSON result file is its durable record).
        """
        frames, run_ids = validated_benchmarks(runs)
        if not frames:
            return
        self._ensure_empty_predictions_file()
        with batches.exclusive_file_lock(self._merge_lock_path, self.merge_lock_wait_seconds) as acquired:
            if not acquired:
                raise WarehouseLockedError(f"warehouse database {self.database_path}: another process kept "
                                           f"merging for {self.merge_lock_wait_seconds:g} s")
            with self._connect(read_only=False) as connection, transaction(connection):
                self._create_schema(connection)
                insert_benchmarks(connection, frames, run_ids, str(self.database_path))
            self._refresh_snapshot_or_log()

    # ----------------------------------------------------------------------------------------------- reads
    # query(): from Queries, on the read copy (every recorded run, merged or still pending)

    def init_sql(self) -> str:
        """SQL that opens the snapshot read-only, for `duckdb -init <file>` (readers of the snapshot never hold the
        file runs write; it has the views)."""
        if not self.snapshot_path.exists():
            raise FileNotFoundError(f"{self.snapshot_path} does not exist yet: run `promptlab run` (or "
                                    "`promptlab warehouse merge`) first")
        return f"ATTACH {sql_string(str(self.snapshot_path))} AS promptlab (READ_ONLY);\nUSE promptlab;\n"

    @contextlib.contextmanager
    def read_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection to the read copy, closed after the block.

        The read copy is the snapshot, or a private copy of it with the pending batches applied when there are
        any. The database file itself is opened only to take the first snapshot of a warehouse written before
        snapshots existed, so a reader never blocks a writer. Nothing is written beside the database: a snapshot
        that cannot be caught up (a full disk, a damaged database) is read as it is. WarehouseDamagedError when
        the file to read cannot be opened, naming it and what to do.
        """
        try:
            connection = self._connect(read_only=True, path=self._read_copy_path())
        except FileNotFoundError:  # another thread replaced the read copy between building and opening it
            connection = self._connect(read_only=True, path=self._read_copy_path())
        except duckdb.Error as error:  # the snapshot could not be copied into a read copy with the pending batches
            if _is_lock_conflict(error) or _is_disk_full(error):
                raise
            raise WarehouseDamagedError(self._damage_message(self.snapshot_path, error)) from error
        try:
            yield connection
        finally:
            connection.close()

    def _read_copy_path(self) -> Path:
        folders = self.pending_batches()
        if not self.database_path.exists():
            if not folders:  # a deleted database holds no results, whatever an older snapshot says
                raise FileNotFoundError(f"warehouse database {self.database_path} does not exist; record a run or "
                                        "call ensure_schema()")
        elif self._snapshot_is_behind():
            self._catch_up_snapshot()
        base = self.snapshot_path if self.database_path.exists() else None
        if base is not None and not base.exists():
            logger.warning("%s has no snapshot (another process holds it for writing); reading the file itself%s",
                           self.database_path, f", without {len(folders)} pending batch(es)" if folders else "")
            return self.database_path
        if not folders:
            return self.snapshot_path
        cached = _read_copies.copies.get(self.database_path)
        if cached and cached[0] == (_file_identity(base), tuple(folder.name for folder in folders)):
            return cached[1]
        # Batches are read before the snapshot is opened: a batch that vanishes meanwhile was merged, and its
        # merger refreshed the snapshot before deleting it, so the snapshot opened next holds its rows.
        loaded: list[PendingBatch] = []
        for folder in folders:
            try:
                loaded.append(batches.read_batch(folder))
            except FileNotFoundError:
                continue
            except PendingBatchError as error:
                logger.warning("%s; left out of this read (the next merge rejects it)", error)
        return self._pending_read_copy(loaded, base)

    def _snapshot_is_behind(self) -> bool:
        """No snapshot, or the database changed after it was taken (a writer died between its commit and the copy,
        the file was replaced by hand). During a merge it is behind for a moment: the merger refreshes it."""
        try:
            return self.database_path.stat().st_mtime_ns > self.snapshot_path.stat().st_mtime_ns
        except FileNotFoundError:
            return True

    def _catch_up_snapshot(self) -> None:
        try:
            self._copy_database_to_snapshot()
        except (OSError, duckdb.Error, WarehouseDamagedError) as error:  # a full disk, a damaged file: read the
            # snapshot there is
            logger.warning("snapshot %s not caught up with %s, reading it as it is: %s", self.snapshot_path.name,
                           self.database_path.name, error)

    def _copy_database_to_snapshot(self) -> None:
        with batches.exclusive_file_lock(self._merge_lock_path, self.merge_lock_wait_seconds) as acquired:
            if not acquired or not self._snapshot_is_behind():
                return  # a merge kept the lock (use the snapshot there is), or refreshed it meanwhile
            wal = self.database_path.with_name(self.database_path.name + ".wal")
            try:  # a shared lock keeps any writer out while the file is copied
                guard = self._connect(read_only=True, retries=0)
            except WarehouseLockedError:
                return
            with guard:
                if wal.exists() and wal.stat().st_size:
                    return  # not checkpointed: only the next merge (a clean close) makes the file whole
                try:  # opening reads the catalog only: a truncated file may still open
                    guard.execute("SELECT count(*) FROM runs").fetchone()
                except duckdb.CatalogException:
                    pass
                except duckdb.Error as error:
                    raise WarehouseDamagedError(self._damage_message(self.database_path, error)) from error
                _replace_with_copy(self.database_path, self.snapshot_path)

    def _pending_read_copy(self, loaded: list[PendingBatch], base: Path | None) -> Path:
        with _read_copies.guard, contextlib.ExitStack() as stack:
            snapshot = stack.enter_context(open(base, "rb")) if base is not None else None
            key = (_file_identity(snapshot), tuple(batch.name for batch in loaded))
            cached = _read_copies.copies.get(self.database_path)
            if cached and cached[0] == key and cached[1].exists():
                return cached[1]
            target = _read_copies.folder() / f"{self.database_path.stem}-{uuid.uuid4().hex}.duckdb"
            if snapshot:
                with open(target, "wb") as copy:
                    shutil.copyfileobj(snapshot, copy, 1 << 20)
            with duckdb.connect(str(target)) as connection:
                with transaction(connection):
                    self._create_schema(connection)
                applied = [batch for batch in loaded if self._apply_to_read_copy(connection, batch)]
                frames = [batch.predictions for batch in applied if batch.predictions is not None]
                connection.register("incoming_predictions",
                                    pl.concat(frames).to_arrow() if frames
                                    else pl.DataFrame(schema=PREDICTION_SCHEMA).to_arrow())
                # Pending predictions are copied in: their files move when merged, and this copy may outlive that.
                connection.execute("CREATE TABLE pending_predictions AS SELECT * FROM incoming_predictions")
                connection.unregister("incoming_predictions")
                connection.execute(
                    "CREATE OR REPLACE VIEW predictions AS SELECT * FROM ("
                    f"{self._predictions_source_sql()} "
                    "WHERE run_id NOT IN (SELECT run_id FROM pending_predictions) "
                    f"UNION ALL SELECT {', '.join(PREDICTION_SCHEMA)} FROM pending_predictions) "
                    "WHERE run_id IN (SELECT run_id FROM runs WHERE is_current)"
                )
            if cached:
                cached[1].unlink(missing_ok=True)
            _read_copies.copies[self.database_path] = (key, target)
            return target

    def _apply_to_read_copy(self, connection: duckdb.DuckDBPyConnection, batch: PendingBatch) -> bool:
        """Apply one pending batch to a private read copy; False when the snapshot holds it already (merged
        meanwhile) or it cannot go in (the merge will reject it, naming it)."""
        merged = connection.execute("SELECT count(*) FROM merged_batches WHERE batch = ?", [batch.name]).fetchone()
        if merged[0]:
            return False
        try:
            with transaction(connection):
                self._write_batch(connection, batch)
        except _PERMANENT_BATCH_ERRORS as error:
            logger.warning("pending batch %s left out of this read: %s", batch.path, error)
            return False
        return True

    def status(self) -> WarehouseStatus:
        snapshot_age = behind = None
        if self.snapshot_path.exists():
            snapshot_mtime = self.snapshot_path.stat().st_mtime_ns
            snapshot_age = max(0.0, time.time() - snapshot_mtime / 1e9)
            behind = self.database_path.exists() and self.database_path.stat().st_mtime_ns > snapshot_mtime
        return WarehouseStatus(self.database_path, self.snapshot_path, tuple(self.pending_batches()),
                               tuple(batches.rejected_batches(self.rejected_dir)), snapshot_age, bool(behind),
                               self._damage_of(self.database_path), self._damage_of(self.snapshot_path))

    # --------------------------------------------------------------------------------------------- recovery
    def recover(self) -> RecoveryOutcome:
        """Rebuild a database file DuckDB cannot open or read (or a missing one): the damaged file (and its WAL) is
        moved aside, never deleted; the snapshot, when intact, becomes the database; the pending batches are merged
        into it; prediction files of runs that neither holds are named (their records were in the damaged file
        only). A database that opens and reads is left alone. WarehouseLockedError when a merge keeps the lock."""
        with batches.exclusive_file_lock(self._merge_lock_path, self.merge_lock_wait_seconds) as acquired:
            if not acquired:
                raise WarehouseLockedError(f"warehouse database {self.database_path}: another process kept merging "
                                           f"for {self.merge_lock_wait_seconds:g} s; try again once it is done")
            wal = self._wal_path
            if self.database_path.exists():
                damage = self._damage_of(self.database_path)
            elif self.snapshot_path.exists() or self.pending_batches() or wal.exists():
                damage = "the file is missing"
            else:
                damage = None
            if damage is None:
                return RecoveryOutcome(self.database_path, None)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            snapshot_problem = self._damage_of(self.snapshot_path) if self.snapshot_path.exists() else "there is none"
            restored = self.database_path.with_name(f".{self.database_path.name}.recovering-{uuid.uuid4().hex}")
            snapshot_runs = 0
            try:
                if snapshot_problem is None:
                    shutil.copyfile(self.snapshot_path, restored)  # first: a full disk stops here, nothing moved
                    with duckdb.connect(str(restored), read_only=True) as connection:
                        snapshot_runs = connection.execute("SELECT count(*) FROM runs").fetchone()[0]
                elif self.snapshot_path.exists():  # kept for a person; the merge below takes a new snapshot
                    os.replace(self.snapshot_path, self.snapshot_path.with_name(
                        f"{self.snapshot_path.stem}-damaged-{stamp}.duckdb"))
                damaged_copy = self.database_path.with_name(f"{self.database_path.stem}-damaged-{stamp}.duckdb")
                if self.database_path.exists():
                    os.replace(self.database_path, damaged_copy)
                if wal.exists():  # never replayed into the rebuilt file
                    os.replace(wal, damaged_copy.with_name(damaged_copy.name + ".wal"))
                if snapshot_problem is None:
                    os.replace(restored, self.database_path)
            finally:
                restored.unlink(missing_ok=True)
        merge = self._merge(own_batch=None)
        return RecoveryOutcome(self.database_path, damage, damaged_copy if damaged_copy.exists() else None,
                               snapshot_runs, snapshot_problem, merge, self._unrestored_predictions())

    def _unrestored_predictions(self) -> tuple[Path, ...]:
        """Prediction files of runs the database does not hold."""
        if not self.predictions_dir.is_dir():
            return ()
        files = {path.name[len(PREDICTIONS_FILE_PREFIX):-len(".parquet")]: path
                 for path in self.predictions_dir.glob(f"{PREDICTIONS_FILE_PREFIX}*.parquet")
                 if path.name != EMPTY_PREDICTIONS_FILE}
        try:
            with self._connect(read_only=True, retries=0) as connection:
                recorded = {row[0] for row in connection.execute("SELECT run_id FROM runs").fetchall()}
        except (FileNotFoundError, WarehouseLockedError, WarehouseDamagedError, duckdb.Error):
            recorded = set()
        return tuple(sorted(path for run_id, path in files.items() if run_id not in recorded))
