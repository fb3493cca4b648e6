"""One Dagster job run in this process: the step below both the CLI (`promptlab run`, one job after another) and the
worker pool (pipelines/parallel.py, one job chain per worker), so neither imports the other to run a job.

Jobs log through pipelines/terminal.py's console logger (quiet unless `--verbose`): Dagster instantiates only the
loggers a run's config names, so runs launched from the UI keep Dagster's own. Every job computes with
$PROMPTLAB_TORCH_THREADS torch threads when it is set (`promptlab run --threads`; read by the promptlab resource).
"""

from __future__ import annotations

import os
import time

THREADS_ENV = "PROMPTLAB_TORCH_THREADS"
CONSOLE_RUN_CONFIG = {"loggers": {"console": {}}}


def failure_details(result, limit: int = 600) -> list[str]:
    """Why a run failed, from its own events: each failed check with its details (the offending rows, as the
    expectation suite wrote them) and each failed step's error message."""
    lines = [f"check {evaluation.check_name} failed: {evaluation.metadata['details'].value}"[:limit]
             for evaluation in result.get_asset_check_evaluations()
             if not evaluation.passed and "details" in evaluation.metadata]
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error if event.step_failure_data else None
        if error is None or error.cls_name == "DagsterAssetCheckFailedError":  # its checks are listed above
            continue
        cause = error.cause or error  # Dagster wraps user errors: the cause names what went wrong
        message = " ".join(cause.message.split())
        lines.append(f"step {event.step_key}: {message}"[:limit])
    return lines


def run_job(instance, job_name: str, partition_key=None, log=print):
    """Execute one job in this process, tagged with this process (run_guard.run_tags), and log one line for it;
    a failure is followed by what failed (failure_details)."""
    from pipelines.definitions import defs
    from pipelines.run_guard import run_tags
    from pipelines.terminal import EVENT_LOG_ENV

    started = time.perf_counter()
    result = defs.resolve_job_def(job_name).execute_in_process(instance=instance, partition_key=partition_key,
                                                               raise_on_error=False, tags=run_tags(),
                                                               run_config=CONSOLE_RUN_CONFIG)
    label = f"{job_name}[{partition_key}]" if partition_key else job_name
    if result.success:
        log(f"ok     {label} ({time.perf_counter() - started:.1f}s)")
    else:
        event_log = os.environ.get(EVENT_LOG_ENV)
        log(f"FAILED {label} (run {result.run_id}); its events: "
            + (f"{event_log} or " if event_log else "") + "`dagster dev`")
        for line in failure_details(result):
            log(f"       {line}")
    return result
