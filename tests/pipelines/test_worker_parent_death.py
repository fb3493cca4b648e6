"""The workers of `promptlab run --workers N` die with their parent, even one killed with -9, record nothing after
it, and hold the run's locks while they live: a new run cannot start beside a worker of a killed one. The pool
runs micro workloads (tests/pipelines/worker_workloads.py) instead of Dagster jobs: a few seconds each."""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from models.provenance import PACKAGE_ROOT
from pipelines.parallel import WorkerPool
from pipelines.run_guard import LOCK_FILE_NAME, LockHeld, run_locks
from worker_workloads import wait_for_file

HERE = Path(__file__).parent


def _process_start(pid: int) -> str | None:
    """The process's start time (to tell it from a later process with its pid), None when gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] in "ZX" else fields[19]


def _children_of(parent: int) -> dict[int, str]:
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == parent and fields[0] not in "ZX":
            children[int(entry.name)] = fields[19]
    return children


def _living(processes: dict[int, str]) -> list[int]:
    return sorted(pid for pid, start in processes.items() if _process_start(pid) == start)


def _new_run_starts(home: Path, workspace: Path) -> bool:
    try:
        with run_locks(home, workspace, log=lambda line: None):
            return True
    except LockHeld:
        return False


# spawned by the main thread, the workers die by the kernel's parent-death signal; by another thread, by their
# watchdog on the parent's pid (the signal would fire when that thread ends, so it is not armed)
@pytest.mark.parametrize("spawner", ["main thread", "another thread"])
def test_a_parent_killed_with_9_takes_its_workers_with_it_and_its_run_stays_locked_until_they_are_gone(
        tmp_path, spawner):
    home, workspace, folder = tmp_path / "dagster_home", tmp_path / "workspace", tmp_path / "partitions"
    (folder / "workers").mkdir(parents=True)
    (folder / "rows").mkdir()
    arguments = (str(home), str(workspace), str(folder), 40, 0.3)
    parent_code = (f"import sys, threading\nsys.path.insert(0, {str(HERE)!r})\n"
                   "from worker_workloads import run_partitions\n"
                   + (f"run_partitions(*{arguments!r})\n" if spawner == "main thread" else
                      f"spawner = threading.Thread(target=run_partitions, args={arguments!r})\n"
                      "spawner.start()\nspawner.join()\n"))
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=PACKAGE_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    processes: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 60
        # under way: both workers have taken a partition and some rows are recorded
        while len(list((folder / "workers").iterdir())) < 2 or not list((folder / "rows").iterdir()):
            assert parent.poll() is None and time.monotonic() < deadline, parent.communicate()[0][-3000:]
            time.sleep(0.05)
        processes = _children_of(parent.pid)  # the workers and multiprocessing's resource tracker
        assert {int(path.name) for path in (folder / "workers").iterdir()} <= set(processes)
        parent.kill()
        parent.wait()
        died = time.time()

        living, started_beside = _living(processes), None
        deadline = time.monotonic() + 5
        while living and time.monotonic() < deadline:
            if started_beside is None and _new_run_starts(home, workspace):
                time.sleep(0.5)  # a worker that was killed meanwhile may still be exiting (its files closed first)
                started_beside = _living(processes)
            time.sleep(0.05)
            living = _living(processes)
        assert not started_beside, f"a new run started while {started_beside} of the killed run lived"
        assert living == [], f"{living} outlived their killed parent by 5 s"
        assert _new_run_starts(home, workspace)  # the last of them is gone: so is the lock
        recorded = {path.name: float(path.read_text()) for path in (folder / "rows").iterdir()
                    if not path.name.startswith(".")}
        # the watchdog polls the parent every 0.2 s: a partition ending inside that window may still finish
        assert recorded and not [key for key, at in recorded.items() if at > died + 0.25], (died, recorded)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in _living(processes):
            os.kill(pid, signal.SIGKILL)


def test_a_worker_holds_the_run_locks_while_it_lives_even_once_its_parent_let_go_of_them(tmp_path):
    home, workspace = tmp_path / "dagster_home", tmp_path / "workspace"
    started, go = tmp_path / "started", tmp_path / "go"
    parents_hold = ExitStack()
    parents_hold.enter_context(run_locks(home, workspace, log=lambda line: None))
    pool = WorkerPool(1)
    try:
        future = pool.submit(wait_for_file, str(started), str(go))
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline and not future.done(), future.exception()
            time.sleep(0.05)
        worker = int(started.read_text())
        parents_hold.close()  # the parent lets go (as when it dies) while its worker lives
        assert _process_start(worker) is not None and not _new_run_starts(home, workspace)
        go.touch()
        assert future.result(timeout=30) == worker
    finally:
        go.touch()
        pool.close()
        parents_hold.close()
    assert _process_start(worker) is None  # closed with the pool: the last holder is gone, so is the lock
    assert _new_run_starts(home, workspace)


def test_a_run_refused_by_a_lock_whose_recorded_holder_is_gone_is_told_a_worker_holds_it(tmp_path):
    home, workspace = tmp_path / "dagster_home", tmp_path / "workspace"
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    with run_locks(home, workspace, log=lambda line: None):
        lock = home / LOCK_FILE_NAME
        lock.write_text(json.dumps({**json.loads(lock.read_text()), "pid": gone}))  # as if its holder were killed
        try:
            with run_locks(home, workspace, log=lambda line: None):
                refusal = ""
        except LockHeld as error:
            refusal = str(error)
    assert f"pid {gone} " in refusal and "that process is gone: a worker it started still holds the lock" in refusal
