"""What keeps `promptlab run` honest about its workspace and its Dagster instance: one run at a time (a lock that
names its holder), runs left unfinished by a killed process marked failed, and SIGINT / SIGTERM that stop it.

A run's lock is a flock on an open file that its worker processes share (pipelines/parallel.py): the kernel releases
it when the last process holding that open file is gone, so the parent never unlocks it explicitly, it closes it."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path

LOCK_FILE_NAME = ".promptlab_run.lock"
_held_locks: list = []  # the open lock files of the run locks this process holds now
# Tags on every run the CLI starts: which process ran it, so a later start can tell a dead run from a live one.
PID_TAG, HOST_TAG, COMMAND_TAG = "promptlab/pid", "promptlab/host", "promptlab/command"


class LockHeld(RuntimeError):
    """Another `promptlab run` holds the workspace or the Dagster instance."""


class StopRequested(BaseException):
    """SIGINT or SIGTERM arrived: a BaseException, like KeyboardInterrupt, so no `except Exception` swallows it."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.during = ""  # " during <job> (run <id>), which is marked failed", when the CLI knows it


def run_tags() -> dict[str, str]:
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(), COMMAND_TAG: " ".join(_command())[:200]}


def _command() -> list[str]:
    return ["promptlab", *sys.argv[1:]] if sys.argv and sys.argv[0].endswith(("promptlab", "cli.py")) else sys.argv


def _describe_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        holder = {}
    if not holder:
        return f"another process holds {path}"
    pid = int(holder.get("pid") or 0)
    gone = (" (that process is gone: a worker it started still holds the lock)"
            if pid > 0 and holder.get("host") == socket.gethostname() and _process_is_gone(pid) else "")
    return (f"pid {holder.get('pid')} on {holder.get('host')} (`{holder.get('command')}`, started "
            f"{holder.get('started_at')}) holds {path}{gone}")


def held_lock_descriptors() -> tuple[int, ...]:
    """The file descriptors of the run locks this process holds: a worker spawned with them holds the run too."""
    return tuple(handle.fileno() for handle in _held_locks)


@contextmanager
def _exclusive_lock(path: Path, wait: bool, log) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # opened without truncating: the holder's record must survive a refused attempt
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if not wait:
                raise LockHeld(f"{_describe_holder(path)}; wait for it to finish (or pass --wait)") from None
            log(f"wait   {_describe_holder(path)}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(_command()),
                                 "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
        handle.flush()
        _held_locks.append(handle)
        try:
            yield
        finally:
            _held_locks.remove(handle)
            handle.seek(0)
            handle.truncate()  # an empty file: this process lets go (the flock is what counts)
            # no LOCK_UN, which would unlock the file for the workers sharing it: closing it below releases the
            # lock only once no worker holds it any more
    finally:
        handle.close()


@contextmanager
def run_locks(dagster_home: Path, workspace_root: Path, wait: bool = False, log=print) -> Iterator[None]:
    """Hold the instance's lock, then the workspace's (always in this order, so two runs cannot each hold one and
    wait for the other). Refuses at once with LockHeld naming the holder, or waits when `wait`."""
    with ExitStack() as stack:
        for directory in (dagster_home, workspace_root):
            stack.enter_context(_exclusive_lock(Path(directory) / LOCK_FILE_NAME, wait, log))
        yield


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def fail_abandoned_runs(instance, log=print, include_own_pid: bool = False) -> list[str]:
    """Mark failed every unfinished run the CLI started on this host whose process is gone (killed with -9, the
    machine rebooted): without it they stay STARTED in the UI forever. `include_own_pid` also takes this process's
    own unfinished runs (when it is stopping). Returns the run ids it marked."""
    import dagster as dg

    unfinished = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.QUEUED,
                  dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.CANCELING]
    host, marked = socket.gethostname(), []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=unfinished, tags={HOST_TAG: host})):
        pid = int(run.tags.get(PID_TAG, "0") or 0)
        own = pid == os.getpid()
        if pid <= 0 or (own and not include_own_pid) or (not own and not _process_is_gone(pid)):
            continue
        reason = ("this `promptlab run` was stopped" if own else
                  f"its process (pid {pid} on {host}, `{run.tags.get(COMMAND_TAG, '?')}`) is gone")
        instance.report_run_failed(run, f"Marked failed by `promptlab run`: the run was left {run.status.value} and "
                                        f"{reason}.")
        marked.append(run.run_id)
        log(f"marked failed: run {run.run_id} ({run.job_name}), left {run.status.value} by pid {pid}")
    return marked


class SignalWatch:
    """Turns SIGINT / SIGTERM into StopRequested. Dagster swaps in its own handler while a job executes (it
    interrupts the step, fails the run, then forgets the signal), so the signal number is also read from a wakeup
    fd, which no handler swap bypasses: `check()` after each job stops the CLI before it starts the next.

    Dagster's handler raises its interrupt wherever the main thread happens to be; raised inside a garbage-collection
    callback (a database connection's finalizer) it is printed as "Exception ignored" and lost, and the job would
    run to its end. So until `check()` has taken the signal, a watcher thread delivers it again every
    `redeliver_seconds` (at most `max_redeliveries` times)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, redeliver_seconds: float = 3.0, max_redeliveries: int = 20):
        self.redeliver_seconds, self.max_redeliveries = redeliver_seconds, max_redeliveries

    def __enter__(self) -> SignalWatch:
        import threading

        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._received: list[int] = []
        self._taken = threading.Event()
        self._closing = threading.Event()
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._previous = {number: signal.signal(number, self._raise) for number in self.SIGNALS}
        self._watcher = threading.Thread(target=self._watch, name="promptlab-signal-watch", daemon=True)
        self._watcher.start()
        return self

    def _raise(self, number, frame) -> None:
        self._taken.set()  # our own handler ran: the main thread has the stop, nothing to deliver again
        raise StopRequested(signal.Signals(number).name)

    def _watch(self) -> None:
        import select

        redelivered = 0
        while not self._closing.is_set():
            readable, _, _ = select.select([self._reader], [], [], self.redeliver_seconds)
            if readable:
                try:
                    self._received += [n for n in self._reader.recv(256) if n in self.SIGNALS]
                except (BlockingIOError, OSError):
                    pass
                continue
            if self._received and not self._taken.is_set() and redelivered < self.max_redeliveries:
                redelivered += 1
                signal.raise_signal(self._received[0])

    def check(self) -> None:
        if self._received:
            self._taken.set()
            raise StopRequested(signal.Signals(self._received[0]).name)

    def __exit__(self, *exc) -> None:
        self._closing.set()
        try:  # wake the watcher's select now (a 0 byte is no signal) instead of at its next timeout
            self._writer.send(b"\0")
        except OSError:
            pass
        self._watcher.join(timeout=self.redeliver_seconds + 1)
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        signal.set_wakeup_fd(self._previous_fd)
        self._reader.close()
        self._writer.close()


def exit_code_for(signal_name: str) -> int:
    """The shell's convention: 128 + the signal number."""
    return 128 + int(getattr(signal, signal_name))
