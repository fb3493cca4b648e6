"""Pending batches: every recorded run is first written as one folder of files, durable before the database is touched.

`<pending dir>/<sequence>-<run_id>/` holds `run.json` (the RunRecord), `metrics.parquet`, `per_class.parquet` and,
when the run stored predictions, `predictions.parquet`. The folder is written under a hidden temporary name, synced
and renamed into place, so a batch is either whole or absent. The sequence (nanoseconds since the epoch, strictly
increasing within a process) orders batches by when they were written; merging them in that order keeps the
supersede order of runs of one partition.

A batch that can never be merged (a file missing or unreadable, a field invalid, a run id recorded already) is
moved to the rejected folder with `reason.txt` beside its files, never deleted: its rows stay on disk for a person.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from models.warehouse.records import (METRIC_SCHEMA, PER_CLASS_SCHEMA, PREDICTION_SCHEMA, RunRecord,
                                      validate_run)

RUN_FILE = "run.json"
METRICS_FILE = "metrics.parquet"
PER_CLASS_FILE = "per_class.parquet"
PREDICTIONS_FILE = "predictions.parquet"
REASON_FILE = "reason.txt"

_DATETIME_FIELDS = ("started_at", "finished_at")


class PendingBatchError(ValueError):
    """A pending batch that can never be merged; the message names its folder."""


@dataclass(frozen=True)
class PendingBatch:
    """One run's rows as read back from its folder."""

    path: Path
    run: RunRecord
    metrics: pl.DataFrame
    per_class: pl.DataFrame
    predictions: pl.DataFrame | None

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class RejectedBatch:
    """A batch set aside: where it now lies and why it cannot be merged."""

    path: Path
    reason: str


_last_sequence = 0
_sequence_guard = threading.Lock()


def _next_sequence() -> int:
    global _last_sequence
    with _sequence_guard:
        _last_sequence = max(time.time_ns(), _last_sequence + 1)
        return _last_sequence


def batch_run_id(folder: Path) -> str:
    """The run id a batch folder is named after (`<sequence>-<run_id>`)."""
    return folder.name.split("-", 1)[1] if "-" in folder.name else folder.name


def batch_folders(pending_dir: Path) -> list[Path]:
    """The complete batches waiting in `pending_dir`, oldest first (temporary and hidden entries are not batches)."""
    if not pending_dir.is_dir():
        return []
    return sorted((entry for entry in pending_dir.iterdir() if not entry.name.startswith(".") and entry.is_dir()),
                  key=lambda entry: entry.name)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _run_to_json(run: RunRecord) -> str:
    record = dataclasses.asdict(run)
    for name in _DATETIME_FIELDS:
        record[name] = record[name].isoformat()
    for name in ("shots", "seed"):  # validated integers, possibly numpy scalars
        record[name] = int(record[name])
    return json.dumps(record, sort_keys=True, indent=1, allow_nan=False)


def _run_from_json(text: str) -> RunRecord:
    record = json.loads(text)
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    names = {item.name for item in dataclasses.fields(RunRecord)}
    unknown = sorted(set(record) - names)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}")
    for name in _DATETIME_FIELDS:
        if isinstance(record.get(name), str):
            record[name] = datetime.fromisoformat(record[name])
    try:
        run = RunRecord(**record)
    except TypeError as error:  # a required field is missing
        raise ValueError(str(error)) from error
    validate_run(run)
    return run


def write_batch(pending_dir: Path, run: RunRecord, metrics: pl.DataFrame, per_class: pl.DataFrame,
                predictions: pl.DataFrame | None) -> Path:
    """Write one run's validated frames as a batch folder and return its path; whole or absent, synced to disk."""
    pending_dir.mkdir(parents=True, exist_ok=True)
    temporary = pending_dir / f".tmp-{uuid.uuid4().hex}"
    temporary.mkdir()
    try:
        files = {RUN_FILE: None, METRICS_FILE: metrics, PER_CLASS_FILE: per_class}
        if predictions is not None:
            files[PREDICTIONS_FILE] = predictions
        for name, frame in files.items():
            if frame is None:
                (temporary / name).write_text(_run_to_json(run), encoding="utf-8")
            else:
                frame.write_parquet(temporary / name)
            _fsync(temporary / name)
        _fsync(temporary)
        folder = pending_dir / f"{_next_sequence():020d}-{run.run_id}"
        os.rename(temporary, folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _fsync(pending_dir)  # the rename itself survives a power cut
    return folder


def _read_frame(folder: Path, name: str, schema: pl.Schema, run_id: str) -> pl.DataFrame:
    try:
        frame = pl.read_parquet(folder / name, glob=False)  # a workspace may be named `proj [v2]`
    except FileNotFoundError:
        raise
    except Exception as error:  # polars says what is wrong with the bytes, not which file
        raise ValueError(f"{name}: {type(error).__name__}: {error}") from error
    if frame.schema != schema:
        raise ValueError(f"{name}: columns {dict(frame.schema)}, expected {dict(schema)}")
    if frame.height and (frame["run_id"] != run_id).any():
        raise ValueError(f"{name}: rows of another run than {run_id!r}")
    return frame


def read_batch(folder: Path) -> PendingBatch:
    """Read a batch folder back; PendingBatchError naming the folder when it cannot be merged as it is.

    FileNotFoundError when the folder itself is gone (merged by another process meanwhile).
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"pending batch {folder} is gone (merged meanwhile)")
    try:
        run = _run_from_json((folder / RUN_FILE).read_text(encoding="utf-8"))
        if batch_run_id(folder) != run.run_id:
            raise ValueError(f"{RUN_FILE} holds run {run.run_id!r}, the folder is named after {batch_run_id(folder)!r}")
        metrics = _read_frame(folder, METRICS_FILE, METRIC_SCHEMA, run.run_id)
        per_class = _read_frame(folder, PER_CLASS_FILE, PER_CLASS_SCHEMA, run.run_id)
        predictions = None
        if (folder / PREDICTIONS_FILE).exists():
            predictions = _read_frame(folder, PREDICTIONS_FILE, pl.Schema(PREDICTION_SCHEMA), run.run_id)
    except Exception as error:
        if not folder.is_dir():
            raise FileNotFoundError(f"pending batch {folder} is gone (merged meanwhile)") from error
        raise PendingBatchError(f"pending batch {folder} cannot be merged: {type(error).__name__}: {error}") from error
    return PendingBatch(folder, run, metrics, per_class, predictions)


def reject_batch(folder: Path, rejected_dir: Path, reason: str) -> RejectedBatch:
    """Move a batch that can never be merged out of the queue, with the reason beside its files."""
    rejected_dir.mkdir(parents=True, exist_ok=True)
    target = rejected_dir / folder.name
    if target.exists():
        target = rejected_dir / f"{folder.name}.{uuid.uuid4().hex[:8]}"
    (folder / REASON_FILE).write_text(reason + "\n", encoding="utf-8")
    os.rename(folder, target)
    return RejectedBatch(target, reason)


def rejected_batches(rejected_dir: Path) -> list[RejectedBatch]:
    if not rejected_dir.is_dir():
        return []
    found = []
    for folder in sorted(entry for entry in rejected_dir.iterdir() if entry.is_dir()):
        reason_file = folder / REASON_FILE
        found.append(RejectedBatch(folder, reason_file.read_text(encoding="utf-8").strip()
                                   if reason_file.exists() else "no reason recorded"))
    return found


def remove_stale_temporaries(pending_dir: Path, older_than_seconds: float = 3600.0) -> None:
    """Delete half-written temporary folders left by a process that died while writing a batch."""
    if not pending_dir.is_dir():
        return
    cutoff = time.time() - older_than_seconds
    for entry in pending_dir.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def exclusive_file_lock(path: Path, wait_seconds: float) -> Iterator[bool]:
    """Hold an flock on `path` (created if missing) for the block; yields False when it stayed busy for
    `wait_seconds`. The kernel releases it when the holder dies, so a crashed merger never blocks the next one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.02)
        try:
            yield True
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
