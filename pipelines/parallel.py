"""Independent partitions on several worker processes (`promptlab run --workers N`).

Each worker is a fresh Python process (spawn) that imports the definitions once and executes the jobs of the
partitions it is handed in process (`run_job`), against the same Dagster instance (DAGSTER_HOME) and workspace as
the parent: its runs are tagged with its own pid, so a worker killed mid-run is found and its run marked failed like
any other abandoned run (pipelines/run_guard.py). Results reach the warehouse through pending batches merged under
its file lock (models/warehouse), so workers never block one another.

- Torch threads: every worker (and the parent) computes with $PROMPTLAB_TORCH_THREADS threads (job_runner.THREADS_ENV), set by `promptlab
  run --threads` (default with N workers: the cores divided by N, at least 1), so N workers do not oversubscribe
  the cores. Float results depend on the thread count in their last bits (a reduction split over more threads adds
  in another order), so it is part of every run's recorded `compute` ("cpu fp32, 1 thread"): runs with the same
  thread count give the same bits whatever the number of workers.
- GPU slots: on a CUDA machine a partition holds one of `gpu_slots` slots (default 1: the resource's device is one GPU,
  as the `gpu` pool's limit of dagster_home_template.yaml) while it runs, so N workers never put more than that many
  torch jobs on the device at once; CPU machines have no such limit (the threads above divide the cores).
- Parent death: a worker dies with the process that started it, even one killed with -9 (a `ParentLink` handed to
  every worker: the kernel's parent-death signal, and a watchdog on its parent's pid), and it holds the run's locks
  (pipelines/run_guard.py) with it: it shares the parent's open lock files, so the kernel releases a run's locks
  only when the last of its processes is gone, and no new run starts beside a worker of the old one.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

_instance = None
_gpu_slots = None
_held_lock_descriptors: tuple[int, ...] = ()
PR_SET_PDEATHSIG = 1  # linux/prctl.h


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


class ParentLink:
    """What ties a spawned process to the one that starts it. Pickled as each process is spawned, when it records
    the parent's pid, whether the spawning thread is the main thread and, with `hold_run_locks`, the descriptors of
    the run locks the parent holds at that moment (run_guard.held_lock_descriptors), which multiprocessing passes
    to the child under their numbers."""

    def __init__(self, hold_run_locks: bool):
        self.hold_run_locks = hold_run_locks

    def __reduce__(self):
        from multiprocessing.reduction import DupFd

        from pipelines.run_guard import held_lock_descriptors

        descriptors = held_lock_descriptors() if self.hold_run_locks else ()
        return (_linked_to_parent, (os.getpid(), threading.current_thread() is threading.main_thread(),
                                    tuple(DupFd(descriptor) for descriptor in descriptors)))


@dataclass(frozen=True)
class _ParentInChild:
    pid: int
    spawned_by_main_thread: bool
    lock_descriptors: tuple[int, ...]


def _linked_to_parent(pid: int, spawned_by_main_thread: bool, duplicates: tuple) -> _ParentInChild:
    return _ParentInChild(pid, spawned_by_main_thread, tuple(duplicate.detach() for duplicate in duplicates))


def follow_parent(parent: _ParentInChild, poll_seconds: float = 0.2) -> None:
    """In the child: die when the parent dies. The kernel's parent-death signal (Linux) kills at once, but it fires
    when the parent's *thread* that spawned us ends, so it is armed only when that thread is the main one (which
    ends with the process); a watchdog thread that sees our parent pid change covers the rest (another spawning
    thread, another OS, a parent gone before the signal was armed). Keeps the inherited lock descriptors open
    (not inheritable further) for as long as this process lives."""
    global _held_lock_descriptors
    for descriptor in parent.lock_descriptors:
        os.set_inheritable(descriptor, False)
    _held_lock_descriptors = parent.lock_descriptors
    if parent.spawned_by_main_thread and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent.pid:  # died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent.pid:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="promptlab-parent-watch", daemon=True).start()


def _initialize(gpu_slots, parent: _ParentInChild) -> None:
    global _gpu_slots
    follow_parent(parent)
    _gpu_slots = gpu_slots


def run_chain(job_names: tuple[str, ...], partition_key: str | None) -> list[JobOutcome]:
    """Run the jobs one after another on one partition, in this worker; stop at the first failure."""
    global _instance
    import dagster as dg

    from pipelines.job_runner import run_job

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
    (a StopRequested raised there cancels what has not started and kills the workers). The workers die with this
    process and hold the run locks it holds when they are spawned (ParentLink)."""

    def __init__(self, workers: int, gpu_slots: int | None = None):
        from multiprocessing.managers import SyncManager

        self.workers = workers
        context = multiprocessing.get_context("spawn")
        self._manager = None
        slots = None
        if gpu_slots is not None:
            self._manager = SyncManager(ctx=context)
            # the semaphore's server dies with us too, holding no lock
            self._manager.start(follow_parent, (ParentLink(hold_run_locks=False),))
            slots = self._manager.Semaphore(gpu_slots)
        self._executor = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_initialize,
                                             initargs=(slots, ParentLink(hold_run_locks=True)))

    def submit(self, function: Callable, *arguments) -> Future:
        """`function(*arguments)` on a worker (a module-level function: the worker imports it by name)."""
        return self._executor.submit(function, *arguments)

    def map_chains(self, chains: list[tuple[tuple[str, ...], str | None]], on_outcome: Callable[[JobOutcome], None],
                   stop_check: Callable[[], None]) -> None:
        futures: dict[Future, tuple] = {self.submit(run_chain, jobs, key): (jobs, key) for jobs, key in chains}
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
