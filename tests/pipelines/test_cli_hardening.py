"""`promptlab run` guards its workspace and Dagster instance: one run at a time (the second is refused naming the
holder), runs left STARTED by a killed process are marked failed on the next start, SIGTERM stops it within
seconds, a failed check's rows are in its message, and every failure ends in one line. Each test has a Dagster
home and workspace of its own; none pretrains anything (the SIGTERM'd run is stopped inside its first job)."""

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from models.provenance import PACKAGE_ROOT
from pipelines import cli
from pipelines.run_guard import HOST_TAG, LOCK_FILE_NAME, PID_TAG, run_locks


@pytest.fixture
def homes(tmp_path, monkeypatch):
    """A fresh DAGSTER_HOME and workspace (the micro catalog of conftest.py stays)."""
    home, workspace = tmp_path / "dagster_home", tmp_path / "workspace"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(workspace))
    return home, workspace


def _python(code: str, stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=PACKAGE_ROOT, stdout=stdout, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})


def _hold_locks_for(home: Path, workspace: Path, seconds: float) -> subprocess.Popen:
    """A process that holds both run locks, then writes `released` beside the home just before letting go."""
    holder = _python(f"import time, pathlib\nfrom pipelines.run_guard import run_locks\n"
                     f"with run_locks({str(home)!r}, {str(workspace)!r}):\n"
                     f"    print('held', flush=True)\n    time.sleep({seconds})\n"
                     f"    pathlib.Path({str(home.parent / 'released')!r}).write_text('')\n")
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_is_refused_at_once_naming_the_holder_or_waits_for_it(homes, capsys):
    home, workspace = homes
    holder = _hold_locks_for(home, workspace, 60)
    try:
        started = time.perf_counter()
        code = cli.main(["run", "--dataset", "Shapes"])
        refused_after = time.perf_counter() - started
        err = capsys.readouterr().err.strip().splitlines()
        assert code == cli.LOCK_HELD_EXIT_CODE and refused_after < 10
        assert len(err) == 1 and f"pid {holder.pid}" in err[0] and str(home / LOCK_FILE_NAME) in err[0]
        assert "--wait" in err[0]
        assert not (workspace / "world").exists()  # nothing started
    finally:
        holder.kill()
        holder.wait()
    # --wait: blocks until the holder lets go, saying whom it waits for
    holder = _hold_locks_for(home, workspace, 2)
    messages = []
    with run_locks(home, workspace, wait=True, log=messages.append):
        assert (home.parent / "released").exists()  # granted only once the holder let go
    holder.wait()
    assert len(messages) == 1 and messages[0].startswith("wait") and f"pid {holder.pid}" in messages[0]


def _add_run(instance, pid: int | None) -> str:
    run_id = str(uuid.uuid4())
    tags = {} if pid is None else {PID_TAG: str(pid), HOST_TAG: __import__("socket").gethostname()}
    instance.add_run(dg.DagsterRun(job_name="curation_job", run_id=run_id, status=dg.DagsterRunStatus.STARTED,
                                   tags=tags))
    return run_id


def test_runs_left_started_by_a_dead_process_are_marked_failed_on_the_next_start(homes):
    home, _ = homes
    instance = dg.DagsterInstance.get()
    dead = _python("pass")
    dead.wait()
    alive = _python("import time; time.sleep(60)")
    try:
        killed_run, running_run, foreign_run = (_add_run(instance, dead.pid), _add_run(instance, alive.pid),
                                                _add_run(instance, None))
        messages = []
        instance = cli.prepared_instance(home, log=messages.append)
        status = {run_id: instance.get_run_by_id(run_id).status
                  for run_id in (killed_run, running_run, foreign_run)}
        assert status == {killed_run: dg.DagsterRunStatus.FAILURE, running_run: dg.DagsterRunStatus.STARTED,
                          foreign_run: dg.DagsterRunStatus.STARTED}  # a live process and an untagged run are kept
        (failure,) = [r for r in instance.all_logs(killed_run) if r.dagster_event
                      and r.dagster_event.event_type_value == "PIPELINE_FAILURE"]
        assert f"pid {dead.pid}" in failure.dagster_event.message and "is gone" in failure.dagster_event.message
        assert messages == [f"marked failed: run {killed_run} (curation_job), left STARTED by pid {dead.pid}"]
    finally:
        alive.kill()
        alive.wait()


def test_sigterm_stops_a_run_within_seconds_with_one_line_and_no_started_run(homes, tmp_path, capsys):
    home, workspace = homes
    log = tmp_path / "run.log"
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", "--dataset", "Shapes",
                                    "--experiment", "zeroshot"], cwd=PACKAGE_ROOT, stdout=output, stderr=output,
                                   env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    try:
        instance = dg.DagsterInstance.get()
        deadline = time.time() + 240
        while not instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
            assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        # while it runs, a second run is refused naming it
        assert cli.main(["run", "--dataset", "Shapes"]) == cli.LOCK_HELD_EXIT_CODE
        assert f"pid {process.pid}" in capsys.readouterr().err
        started = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        stopped_after = time.perf_counter() - started
    finally:
        if process.poll() is None:
            process.kill()
    lines = log.read_text().strip().splitlines()
    assert code == 128 + signal.SIGTERM and stopped_after < 20, lines[-20:]
    # The signal reaches the run during a job (marked failed), or as a job's last step finishes it (a success: the
    # world installs shipped weights in a second), or between two jobs; in each case nothing after it starts and no
    # run is left STARTED.
    job = r"\w+_job(\[\S+\])? \(run ([0-9a-f-]+)\)"
    stopped = re.fullmatch(rf"promptlab run: stopped by SIGTERM( during {job}, which is marked failed| after {job} "
                           r"finished)?; nothing after it ran", lines[-1])
    assert stopped, lines[-1]
    runs = instance.get_runs()
    failed = [run.run_id for run in runs if run.status == dg.DagsterRunStatus.FAILURE]
    if stopped.group(1) is None:  # the signal as a job was starting: that run is marked failed, but not named
        assert len(failed) <= 1, [(run.job_name, run.run_id, run.status) for run in runs]
    else:
        assert failed == ([stopped.group(3)] if stopped.group(3) else []), [
            (run.job_name, run.run_id, run.status) for run in runs]
    assert all(run.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE) for run in runs)
    assert not [p for p in workspace.rglob("*") if ".partial-" in p.name]  # nothing half-written is left
    assert not (workspace / "last_run_summary.json").exists()


def test_a_failed_blocking_check_names_its_rows_under_the_failed_line(homes):
    messages = []
    result = cli.run_job(dg.DagsterInstance.ephemeral(), "curation_job", "Broken", log=messages.append)
    assert not result.success
    assert messages[0].startswith("FAILED curation_job[Broken] (run ")
    details = "\n".join(messages[1:])
    assert "check images_decode failed:" in details and "circle/train_0.png" in details
    assert "check files_exist failed:" in details and "square/missing.png" in details
    assert "check labels_match_classnames failed:" in details and "hexagon" in details


def test_a_locked_warehouse_ends_in_one_line_not_a_traceback(homes, capsys):
    from models.warehouse import Warehouse

    _, workspace = homes
    warehouse = workspace / "warehouse" / "promptlab.duckdb"
    Warehouse(warehouse, workspace / "warehouse" / "predictions").ensure_schema()
    writer = _python(f"import duckdb, time\nconnection = duckdb.connect({str(warehouse)!r})\n"
                     f"print('held', flush=True)\ntime.sleep(60)\n")
    try:
        assert writer.stdout.readline().strip() == "held"
        code = cli.main(["results"])  # old code: the duckdb lock error escaped main as a traceback
    finally:
        writer.kill()
        writer.wait()
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    if code == 0:  # read from a snapshot (of an empty warehouse)
        assert "No results yet" in captured.out
    else:
        assert len(captured.err.strip().splitlines()) == 1 and "promptlab results: error:" in captured.err


def test_any_other_failure_ends_in_one_line_with_its_traceback_saved(homes, capsys, monkeypatch):
    _, workspace = homes

    def fail(log=print, fmt="text"):
        raise RuntimeError("Could not set lock on file\n  promptlab.duckdb")

    monkeypatch.setattr(cli, "print_accuracy_table", fail)
    assert cli.main(["results"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"promptlab results: error: RuntimeError: Could not set lock on file promptlab.duckdb "
                   f"(traceback in {workspace / 'last_error.txt'})"]
    assert "Traceback" in (workspace / "last_error.txt").read_text()


def test_a_workspace_url_that_cannot_be_used_ends_in_one_line(homes, capsys, monkeypatch):
    """The failure is the workspace itself, so there is no workspace to save a traceback in: one line, no second
    traceback from the handler."""
    monkeypatch.setenv("PROMPTLAB_WORKSPACE", "nosuchscheme://bucket/ws")
    assert cli.main(["results"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert captured.err.strip().splitlines() == [
        "promptlab results: error: WorkspaceStorageError: PROMPTLAB_WORKSPACE=nosuchscheme://bucket/ws: unknown "
        "storage scheme 'nosuchscheme'; use a local folder, file://..., s3://bucket/prefix or another fsspec "
        "protocol"]


def test_dagster_home_gets_the_template_instead_of_the_telemetry_only_file(homes, tmp_path, monkeypatch):
    home, _ = homes
    template = tmp_path / "template.yaml"
    template.write_text("telemetry:\n  enabled: false\nrun_monitoring:\n  enabled: true\n")
    monkeypatch.setattr(cli, "DAGSTER_HOME_TEMPLATE", template)
    (home / "dagster.yaml").write_text(cli.TELEMETRY_ONLY_CONFIG)
    cli.ensure_dagster_home()
    assert (home / "dagster.yaml").read_text() == template.read_text()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: true\n")  # someone's own configuration stays
    cli.ensure_dagster_home()
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: true\n"


def test_a_signal_whose_interrupt_was_lost_is_delivered_again_until_the_cli_takes_it():
    """Dagster's interrupt raised inside a garbage-collection callback is lost ("Exception ignored") and the job
    would run on: the watcher delivers the signal again until check() has taken it, then stops."""
    from pipelines.run_guard import SignalWatch, StopRequested

    seen = []
    with SignalWatch(redeliver_seconds=0.2) as watch:
        ours = signal.signal(signal.SIGTERM, lambda number, frame: seen.append(number))  # an interrupt that got lost
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.time() + 10
            while len(seen) < 3 and time.time() < deadline:
                time.sleep(0.05)
            with pytest.raises(StopRequested, match="SIGTERM"):
                watch.check()
            delivered = len(seen)
            time.sleep(0.6)
        finally:
            signal.signal(signal.SIGTERM, ours)
        assert delivered >= 3
        assert len(seen) == delivered  # taken: no more deliveries
