"""The quiet terminal of `promptlab run` (pipelines/terminal.py): one progress line per stage (live on a terminal,
plain lines otherwise), the assets' own messages on it, Dagster's events in the run's event log file, and no
beta/preview warnings where the definitions load."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import dagster as dg

from models.provenance import PACKAGE_ROOT
from pipelines.cli import CONSOLE_RUN_CONFIG
from pipelines.terminal import QUIET_ENV, StageProgress, console_logger, quiet_terminal


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_report_done_of_total_failures_elapsed_and_time_left():
    stream, clock = io.StringIO(), Clock()
    with StageProgress("experiments", 20, stream=stream, tty=False, clock=clock) as progress:
        for index in range(20):
            clock.now += 3.0
            progress.advance(success=index != 4)
            if index == 4:
                progress.say("FAILED experiment_job[Shapes|coop-k16-s1] (run 1234)")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "experiments: 0/20, 0:00 elapsed"
    assert "experiments: 10/20, 1 failed, 0:30 elapsed, ~0:30 left" in lines
    assert lines[-1] == "experiments: 20/20, 1 failed, 1:00 elapsed"
    assert "FAILED experiment_job[Shapes|coop-k16-s1] (run 1234)" in lines
    assert len(lines) <= 13  # one line a tenth of the stage, not one per partition


def test_on_a_terminal_the_line_is_redrawn_in_place_with_the_partition_s_own_message():
    stream, clock = io.StringIO(), Clock()
    with StageProgress("experiments", 4, stream=stream, tty=True, clock=clock) as progress:
        progress.note("Shapes|coop: epoch 3/40: loss 1.2")
        clock.now = 10.0
        progress.advance(True)
    text = stream.getvalue()
    assert "\n" not in text.rstrip("\n")  # redrawn with carriage returns, one final newline
    assert "[#####...............] experiments: 1/4, 0:10 elapsed, ~0:30 left" in text
    assert "| Shapes|coop: epoch 3/40: loss 1.2" in text


@dg.asset
def talkative(context):
    context.log.info("epoch 1/2: loss 0.5")
    context.log.debug("a detail nobody asked for")


def _run_talkative() -> bool:
    defs = dg.Definitions(assets=[talkative], jobs=[dg.define_asset_job("talk", selection=[talkative])],
                          loggers={"console": console_logger})
    return defs.resolve_job_def("talk").execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                                           run_config=CONSOLE_RUN_CONFIG).success


def test_a_quiet_run_sends_events_to_its_log_file_and_the_asset_s_messages_to_the_progress_line(tmp_path, capfd):
    stream = io.StringIO()
    with quiet_terminal(tmp_path, verbose=False) as event_log:
        assert os.environ[QUIET_ENV] == "1"
        with StageProgress("experiments", 1, stream=stream, tty=False):
            assert _run_talkative()
            logging.basicConfig(level=logging.INFO)  # as a library may: a no-op in a quiet run
            logging.getLogger("great_expectations").info("GX chatter")
            logging.getLogger("open_clip").warning("a library's warning")
    assert QUIET_ENV not in os.environ  # restored
    assert not any(type(handler).__name__ == "_PythonLogs" for handler in logging.getLogger().handlers)
    shown = stream.getvalue() + "".join(capfd.readouterr())
    assert "talkative: epoch 1/2: loss 0.5" in shown
    assert "Started execution" not in shown and "STEP_OUTPUT" not in shown and "a detail" not in shown
    assert "GX chatter" not in shown and "a library's warning" not in shown
    assert event_log.parent == tmp_path / "logs"
    events = event_log.read_text()
    assert "Started execution of run" in events and "epoch 1/2" in events and "a detail" in events
    assert "a library's warning" in events


def test_without_a_quiet_run_the_events_are_printed_as_dagster_prints_them(tmp_path, capfd):
    with quiet_terminal(tmp_path, verbose=True) as event_log:
        assert event_log is None
        assert _run_talkative()
    printed = "".join(capfd.readouterr())
    assert "Started execution of run" in printed and "epoch 1/2" in printed
    assert not (tmp_path / "logs").exists()


def test_loading_the_definitions_prints_no_beta_or_preview_warning():
    result = subprocess.run([sys.executable, "-W", "default", "-c", "import pipelines.definitions"],
                            cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Warning" not in result.stderr, result.stderr[-2000:]


def test_the_runs_estimate_is_made_inside_the_quiet_terminal(tmp_path, monkeypatch, capfd):
    """The run's plan may calibrate the backbone first, and open_clip logs through `logging.warning`, which on a
    root logger without handlers installs Python's default stderr handler: made before the quiet terminal, every
    later INFO line of a library (GX's, at each dataset's curation) reached the terminal of a fresh workspace."""
    from pipelines import cli

    def estimate(arguments, checked):
        logging.warning("open_clip: no pretrained weights")  # the module-level call, as open_clip makes it
        return None

    def graph(*args, **kwargs):
        logging.getLogger("great_expectations.chatty").info("GX chatter")
        return {"failures": [], "stage_seconds": {}, "wall_seconds": 0.0}

    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # a bare root, as in `promptlab run` (not pytest's)
    logging.getLogger("great_expectations.chatty").setLevel(logging.INFO)  # GX sets its loggers to INFO
    monkeypatch.setattr(cli, "run_estimate", estimate)
    monkeypatch.setattr(cli, "run_graph", graph)
    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    assert cli.main(["run"]) == 0
    shown = "".join(capfd.readouterr())
    assert "GX chatter" not in shown and "no pretrained weights" not in shown, shown
    assert "done   in" in shown
