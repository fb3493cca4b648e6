"""Independent partitions on several worker processes (`promptlab run --workers N`).

Each worker is a fresh Python process (spawn) that imports the definitions once and executes the jobs of the
partitions it is handed in process (`run_job`), against the same Dagster instance (DAGSTER_HOME) and workspace as
the parent: its runs are tagged with its own pid, so a worker killed mid-run is found and its run marked failed like
any other abandoned run (pipelines/run_guard.py). Results reach the warehouse through pending batches merged under
its file lock (models/warehouse), so workers never block one another.

- Torch threads: every worker (and the parent) computes with $PROMPTLAB_TORCH_THREADS threads, set by `promptlab
  run --threads` (default with N workers: the cores divided by N, at least 1), so N workers do not oversubscribe
  the cores. Float results depend on the thread count in their last bits (a reduction split over more threads adds
  in another order), so it is part of every run's recorded `compute` ("cpu fp32, 1 thread"): runs with the same
  thread count give the same bits whatever the number of workers.
- GPU slots: on a CUDA machine a partition holds one of `gpu_slots` slots (default 1: the resource's device is one GPU,
  as the `gpu` pool's limit of dagster_home_template.yaml) while it runs, so N workers never put more than that many
  torch jobs on the device at once; CPU machines have no such limit (the threads above divide the cores).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

THREADS_ENV = "PROMPTLAB_TORCH_THREADS"

_instance = None
_gpu_slots = None


@dataclass
class JobOutcome:
    job_name: str
    partition_key: str | None
    success: bool
    seconds: float
    lines: list[str] = field(default_factory=list)  # what run_job logged, printed by the parent


def default_threads(workers: int) -> int:
    """Torch threads per worker so that `workers` workers fill the cores without oversubscribing them."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _initialize(gpu_slots) -> None:
    global _gpu_slots
    _gpu_slots = gpu_slots


def run_chain(job_names: tuple[str, ...], partition_key: str | None) -> list[JobOutcome]:
    """Run the jobs one after another on one partition, in this worker; stop at the first failure."""
    global _instance
    import dagster as dg

    from pipelines.cli import run_job

    if _instance is None:
        _instance = dg.DagsterInstance.get()
    outcomes = []
    slot = _gpu_slots
    if slot is not None:
        slot.acquire()
    try:
        for job_name in job_names:
            lines: list[str] = []
            started = time.perf_counter()
            result = run_job(_instance, job_name, partition_key, lines.append)
            outcomes.append(JobOutcome(job_name, partition_key, result.success, time.perf_counter() - started,
                                       lines))
            if not result.success:
                break
    finally:
        if slot is not None:
            slot.release()
    return outcomes


class WorkerPool:
    """N spawned workers running job chains; `map_chains` returns as they finish, calling `stop_check` after each
    (a StopRequested raised there cancels what has not started and kills the workers)."""

    def __init__(self, workers: int, gpu_slots: int | None = None):
        self.workers = workers
        context = multiprocessing.get_context("spawn")
        self._manager = None
        slots = None
        if gpu_slots is not None:
            self._manager = context.Manager()
            slots = self._manager.Semaphore(gpu_slots)
        self._executor = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_initialize,
                                             initargs=(slots,))

    def map_chains(self, chains: list[tuple[tuple[str, ...], str | None]], on_outcome: Callable[[JobOutcome], None],
                   stop_check: Callable[[], None]) -> None:
        futures: dict[Future, tuple] = {self._executor.submit(run_chain, jobs, key): (jobs, key)
                                        for jobs, key in chains}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            stop_check()  # first, and between completions: a signal (Ctrl-C reaches the workers too) stops all
            for future in done:
                for outcome in future.result():
                    on_outcome(outcome)

    def close(self, kill: bool = False) -> None:
        processes = list((getattr(self._executor, "_processes", None) or {}).values())
        if kill:  # their unfinished runs are then failed as abandoned (run_guard.fail_abandoned_runs)
            for process in processes:
                process.kill()
            for process in processes:
                process.join(timeout=10)
        self._executor.shutdown(wait=not kill, cancel_futures=True)
        if self._manager is not None:
            self._manager.shutdown()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(kill=error is not None)


def gpu_slot_count() -> int | None:
    """One slot on a CUDA machine (the `gpu` pool's default limit: the resource's device is one GPU), None on a
    CPU-only one."""
    import torch

    return 1 if torch.cuda.is_available() else None
