"""Micro workloads for the worker pool's tests (tests/pipelines/test_worker_parent_death.py), standing in for a
partition's job chain: module-level functions, so that a spawned worker imports them by name (this folder is on its
sys.path)."""

import os
import time
from pathlib import Path


def run_partitions(home: str, workspace: str, folder: str, partitions: int, seconds: float) -> None:
    """What a `promptlab run --workers 2` parent does, with micro partitions: hold the run locks, hand the partitions
    to two workers, wait for them all."""
    from pipelines.parallel import WorkerPool
    from pipelines.run_guard import run_locks

    with run_locks(home, workspace), WorkerPool(2) as pool:
        for future in [pool.submit(record_partition, folder, f"p{index:02d}", seconds) for index in range(partitions)]:
            future.result()


def record_partition(folder: str, key: str, seconds: float) -> str:
    """Say which worker took the partition, compute for `seconds`, then record its rows: a file that appears whole,
    holding the time it was recorded."""
    folder = Path(folder)
    (folder / "workers" / str(os.getpid())).touch()
    time.sleep(seconds)
    temporary = folder / "rows" / f".{key}"
    temporary.write_text(repr(time.time()))
    temporary.rename(folder / "rows" / key)
    return key


def wait_for_file(started: str, go: str, timeout: float = 60.0) -> int:
    """Say it started, then wait until `go` exists; returns this worker's pid."""
    Path(started).write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout
    while not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.getpid()
