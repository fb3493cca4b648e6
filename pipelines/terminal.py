"""What `promptlab run` shows in the terminal: one progress line per stage and the epoch lines of the partition in
progress; Dagster's event log (RUN_START, STEP_OUTPUT, "Type check passed", ...) goes to a file per run instead.

- `console_logger` is the definitions' console logger (pipelines/definitions.py), used by the runs whose config
  names it (the CLI's and its workers', cli.CONSOLE_RUN_CONFIG; the UI's runs keep Dagster's default). Where no
  quiet terminal is set up (`promptlab run --verbose`) it prints every record as Dagster's own does; in a
  quiet `promptlab run` ($PROMPTLAB_QUIET_TERMINAL, inherited by the worker processes) it writes every record to
  the run's event log ($PROMPTLAB_EVENT_LOG) and passes only the assets' own messages at INFO and above (epoch
  lines, what was installed or skipped) to the stage's progress line, and warnings and errors to stderr.
- `StageProgress` is that line: partitions done of total, failures, elapsed, estimated time left; redrawn in place
  with a bar on a terminal, printed as plain lines (at most one every tenth of the stage, or every 30 s) when the
  output is a file or a pipe.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Iterator, TextIO

import dagster as dg

QUIET_ENV = "PROMPTLAB_QUIET_TERMINAL"
EVENT_LOG_ENV = "PROMPTLAB_EVENT_LOG"
PLAIN_LINE_SECONDS = 30.0

_active: "StageProgress | None" = None


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class StageProgress:
    """One stage's progress line. `advance` after each partition; `note` for a message of the partition in progress
    (an epoch line); `say` for lines that stay (a failure); `finish` (on leaving the `with`) prints the last line."""

    def __init__(self, stage: str, total: int, stream: TextIO | None = None, tty: bool | None = None,
                 clock=time.monotonic):
        self.stage, self.total = stage, total
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.started = clock()
        self.done = self.failed = 0
        self.current = ""
        self._last_plain = (-1, self.started)  # (done, time) of the last plain line

    def __enter__(self) -> "StageProgress":
        global _active
        _active = self
        self._draw(force=True)
        return self

    def __exit__(self, *_) -> None:
        global _active
        _active = None
        self.finish()

    def line(self) -> str:
        elapsed = self.clock() - self.started
        parts = [f"{self.stage}: {self.done}/{self.total}"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        parts.append(f"{format_seconds(elapsed)} elapsed")
        if 0 < self.done < self.total:
            parts.append(f"~{format_seconds(elapsed / self.done * (self.total - self.done))} left")
        return ", ".join(parts)

    def _bar(self, width: int = 20) -> str:
        filled = int(width * self.done / self.total) if self.total else width
        return "[" + "#" * filled + "." * (width - filled) + "] "

    def _draw(self, force: bool = False) -> None:
        if self.tty:
            text = self._bar() + self.line() + (f" | {self.current}" if self.current else "")
            self.stream.write("\r\x1b[2K" + text[:max(40, _columns() - 1)])
            self.stream.flush()
            return
        last_done, last_time = self._last_plain
        step = max(1, self.total // 10)
        now = self.clock()
        if force or self.done - last_done >= step or (now - last_time >= PLAIN_LINE_SECONDS and self.done > last_done):
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._last_plain = (self.done, now)

    def advance(self, success: bool) -> None:
        """One partition done (its failure, if any, was said with `say`)."""
        self.done += 1
        self.current = ""
        if not success:
            self.failed += 1
        self._draw()

    def note(self, message: str) -> None:
        """A message of the partition in progress: the tail of the live line, or a plain indented line."""
        if self.tty:
            self.current = " ".join(message.split())
            self._draw()
        else:
            self.stream.write(f"  {message}\n")
            self.stream.flush()

    def say(self, *lines: str) -> None:
        """Lines that must stay on screen (a failure and why), above the live line."""
        if self.tty:
            self.stream.write("\r\x1b[2K")
        for text in lines:
            self.stream.write(text + "\n")
        self.stream.flush()
        if self.tty:
            self._draw()

    def finish(self) -> None:
        if self.tty:
            self.current = ""
            self.stream.write("\r\x1b[2K" + self._bar() + self.line() + "\n")
            self.stream.flush()
        elif self._last_plain[0] != self.done:
            self.stream.write(self.line() + "\n")
            self.stream.flush()


def _columns() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 120


def active_progress() -> StageProgress | None:
    return _active


def stage_progress(stage: str, total: int) -> contextlib.AbstractContextManager[StageProgress | None]:
    """A progress line for a stage in a quiet run; in a verbose one (or outside `promptlab run`) None, and the
    caller logs a line per job as before."""
    return StageProgress(stage, total) if os.environ.get(QUIET_ENV) else contextlib.nullcontext(None)


@contextlib.contextmanager
def quiet_terminal(workspace_root: Path, verbose: bool) -> Iterator[Path | None]:
    """For one `promptlab run`: unless `verbose`, Dagster's events go to workspace/logs/run-<time>-<pid>.log (the
    path is yielded) and the terminal shows progress lines; the environment is restored afterwards."""
    if verbose:
        yield None
        return
    folder = Path(workspace_root) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"run-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
    saved = {name: os.environ.get(name) for name in (QUIET_ENV, EVENT_LOG_ENV)}
    os.environ[QUIET_ENV], os.environ[EVENT_LOG_ENV] = "1", str(path)
    install_python_logging(str(path))
    try:
        yield path
    finally:
        _remove_python_logging()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _PythonLogs(logging.Handler):
    """Python logging of the libraries (GX's INFO lines, open_clip's warning that tiny-clip starts without
    pretrained weights before they are loaded): into the event log, and only errors to stderr. Installed on the
    root logger in a quiet run before any library can call logging.basicConfig (which then does nothing)."""

    def __init__(self, event_log: str | None):
        super().__init__(logging.WARNING)
        self.file = _EventLogFile(event_log) if event_log else None

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is not None:
            self.file.emit(record)
        if record.levelno >= logging.ERROR:
            print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr, flush=True)


def install_python_logging(event_log: str | None) -> None:
    """Once per process: the root logger's handler for a quiet run (see _PythonLogs)."""
    root = logging.getLogger()
    if not any(isinstance(handler, _PythonLogs) for handler in root.handlers):
        root.addHandler(_PythonLogs(event_log))


def _remove_python_logging() -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _PythonLogs)]:
        root.removeHandler(handler)


class _EventLogFile(logging.Handler):
    """Every record, one line each, appended to the run's event log (workers append to the same file)."""

    def __init__(self, path: str):
        super().__init__(logging.DEBUG)
        self.path = path
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as file:
                file.write(self.format(record).replace("\n", "\n    ") + "\n")
        except OSError:  # a full disk must not fail the run: the events are also in the Dagster instance
            pass


class _QuietConsole(logging.Handler):
    """The assets' own messages at INFO and above, never Dagster's events: to the stage's progress line (or stderr
    when no stage is in progress, and for warnings and errors)."""

    def __init__(self):
        super().__init__(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        if meta.get("dagster_event") is not None:
            return
        message = meta.get("orig_message") or record.getMessage()
        where = meta.get("step_key") or meta.get("job_name") or ""
        text = f"{where}: {message}" if where else message
        progress = active_progress()
        if progress is not None:
            if record.levelno >= logging.WARNING:
                progress.say(f"{record.levelname.lower()}: {text}")
            else:
                progress.note(text)
        elif record.levelno >= logging.WARNING or multiprocessing.parent_process() is None:
            # a worker process's epoch lines would break the parent's live line: they stay in the event log
            print(text, file=sys.stderr, flush=True)


@dg.logger(description="Dagster's console output, or in a quiet `promptlab run` the assets' own messages on the "
                       "progress line with every event in the run's event log (pipelines/terminal.py)")
def console_logger(init_context) -> logging.Logger:
    logger = logging.Logger("promptlab", logging.DEBUG)
    if os.environ.get(QUIET_ENV):
        event_log = os.environ.get(EVENT_LOG_ENV)
        install_python_logging(event_log)  # in a worker process: its libraries' logging too
        if event_log:
            logger.addHandler(_EventLogFile(event_log))
        logger.addHandler(_QuietConsole())
        return logger
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s - dagster - %(levelname)s - %(message)s"))
    logger.addHandler(handler)
    return logger
