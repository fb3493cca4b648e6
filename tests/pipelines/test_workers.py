"""`promptlab run --workers N`: independent partitions on N worker processes give the warehouse the same results, to
the bit, as one worker with the same torch threads; the runs are spread over the workers' processes; every run
records its thread count; bad values are refused by name."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from bench.reproducibility import TIMING_METRICS, differences, warehouse_contents
from models.provenance import PACKAGE_ROOT
from pipelines.run_guard import PID_TAG

EXPERIMENTS = ["zeroshot", "coop-k2-s1", "coop-k2-s2", "coop-k2-s1-b2n", "promptsrc-k2-s1"]


def promptlab_run(root, *arguments, datasets=("Shapes",), experiments=EXPERIMENTS, environment=None):
    environment = {**os.environ, **(environment or {}), "PROMPTLAB_WORKSPACE": str(root / "workspace"),
                   "DAGSTER_HOME": str(root / "dagster_home")}
    environment.pop("PROMPTLAB_TORCH_THREADS", None)
    command = [sys.executable, "-m", "pipelines.cli", "run"]
    for name in datasets:
        command += ["--dataset", name]
    for key in experiments:
        command += ["--experiment", key]
    return subprocess.run(command + list(arguments), cwd=PACKAGE_ROOT, env=environment, capture_output=True,
                          text=True, timeout=1800)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    roots = [tmp_path_factory.mktemp("one-worker"), tmp_path_factory.mktemp("two-workers")]
    first = promptlab_run(roots[0], "--workers", "1", "--threads", "1")  # builds the micro world when absent
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    world = roots[0] / "workspace" / "world"
    shutil.copytree(world, roots[1] / "workspace" / "world")
    second = promptlab_run(roots[1], "--workers", "2", "--threads", "1")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return roots, second


def contents(root):
    return warehouse_contents(root / "workspace" / "warehouse" / "promptlab.duckdb",
                              root / "workspace" / "warehouse" / "predictions")


@pytest.mark.integration
def test_two_workers_write_the_same_results_to_the_bit_as_one(two_runs):
    (one, two), _ = two_runs
    one_contents, two_contents = contents(one), contents(two)
    assert sum(name.startswith("predictions:") for name in one_contents) >= len(EXPERIMENTS)
    assert differences(one_contents, two_contents) == []
    computes = {row for row in one_contents["table:runs"] if '"compute": "cpu fp32, 1 thread"' not in row}
    assert computes == set()


@pytest.mark.integration
def test_the_partitions_ran_on_two_worker_processes(two_runs):
    (_, two), second = two_runs
    instance = dg.DagsterInstance.from_config(str(two / "dagster_home"))
    experiment_runs = instance.get_runs(filters=dg.RunsFilter(job_name="experiment_job"))
    assert len(experiment_runs) == len(EXPERIMENTS)
    assert len({run.tags[PID_TAG] for run in experiment_runs}) == 2
    assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in experiment_runs)
    assert "2 workers, 1 torch threads each" in second.stdout + second.stderr


# every metric but the wall-clock ones (bench.reproducibility.TIMING_METRICS: present, value not compared)
METRICS = f"""SELECT r.dataset, r.experiment_key, r.stage, m.split, m.metric,
                     CASE WHEN m.metric IN ({', '.join(repr(name) for name in sorted(TIMING_METRICS))}) THEN NULL
                          ELSE m.value END AS value
              FROM runs r JOIN metrics m USING (run_id) WHERE r.is_current ORDER BY ALL"""


@pytest.mark.integration
def test_two_workers_writing_to_a_postgres_catalog_lake_record_what_one_worker_wrote_to_the_file(
        tmp_path, two_runs):
    """The assets write through $PROMPTLAB_WAREHOUSE: two workers commit CoOp partitions to one DuckLake at once,
    and every metric equals the one-worker run's DuckDB file, value for value; the report is built from the lake."""
    from local_services import LocalPostgres, postgres_bin

    from models.warehouse import LakeWarehouse, Warehouse, open_warehouse

    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql): the lake under workers is untested")
    (one, _), _ = two_runs
    shutil.copytree(one / "workspace" / "world", tmp_path / "workspace" / "world")
    server = LocalPostgres().start()
    try:
        url = f"ducklake:postgres:{server.create_database('results')}"
        experiments = ["zeroshot", "coop-k2-s1", "coop-k2-s2"]
        run = promptlab_run(tmp_path, "--workers", "2", "--threads", "1", datasets=("Shapes",),
                            experiments=experiments, environment={"PROMPTLAB_WAREHOUSE": url})
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        warehouse_dir = tmp_path / "workspace" / "warehouse"
        lake = open_warehouse(warehouse_dir / "promptlab.duckdb", warehouse_dir / "predictions", url)
        assert isinstance(lake, LakeWarehouse)
        in_lake = lake.query(METRICS)
        runs = lake.query("SELECT count(*) AS n FROM runs")["n"][0]
    finally:
        server.stop()
    assert not (tmp_path / "workspace" / "warehouse" / "promptlab.duckdb").exists()  # nothing went to the file
    file_warehouse = Warehouse(one / "workspace" / "warehouse" / "promptlab.duckdb",
                               one / "workspace" / "warehouse" / "predictions")
    in_file = file_warehouse.query(METRICS)
    in_file = in_file.filter((in_file["dataset"] == "Shapes") & in_file["experiment_key"].is_in(experiments))
    assert set(in_lake["experiment_key"]) == set(experiments) and in_lake.height > 3 * len(experiments)
    assert in_lake.rows() == in_file.rows()
    summary = json.loads((tmp_path / "workspace" / "last_run_summary.json").read_text())
    assert summary["failures"] == [] and summary["warehouse"].startswith("ducklake:postgres:")
    assert f"{runs} runs recorded" in Path(summary["report"]).read_text()  # the report read the lake


@pytest.mark.parametrize("arguments, message", [
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--threads", "-1"], "--threads must be at least 1, got -1"),
])
def test_bad_worker_or_thread_counts_are_refused_before_anything_runs(tmp_path, arguments, message):
    result = promptlab_run(tmp_path, *arguments)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "workspace").exists()


@pytest.mark.integration
def test_sigterm_stops_every_worker_and_leaves_no_run_started(tmp_path, two_runs):
    """Stopped in the experiment stage: the workers are killed, their runs marked failed, nothing else starts."""
    (one, _), _ = two_runs
    root = tmp_path
    shutil.copytree(one / "workspace" / "world", root / "workspace" / "world")
    environment = {**os.environ, "PROMPTLAB_WORKSPACE": str(root / "workspace"),
                   "DAGSTER_HOME": str(root / "dagster_home")}
    command = [sys.executable, "-m", "pipelines.cli", "run", "--dataset", "Shapes", "--workers", "2", "--threads", "1"]
    for key in EXPERIMENTS:
        command += ["--experiment", key]
    log = tmp_path / "run.log"
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=PACKAGE_ROOT, env=environment, stdout=output, stderr=output)
    try:
        deadline = time.time() + 300
        # the experiment stage's progress line once a partition is done (the quiet terminal's plain lines)
        while not re.search(r"^experiments: .*: [1-9]\d*/", log.read_text(), flags=re.MULTILINE):
            assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    lines = log.read_text().strip().splitlines()
    assert code == 128 + signal.SIGTERM, lines[-20:]
    stop_line = next((line for line in lines if line.startswith("promptlab run: stopped by SIGTERM")), "")
    assert "during experiments" in stop_line and "on 2 workers" in stop_line, lines[-10:]
    instance = dg.DagsterInstance.from_config(str(root / "dagster_home"))
    runs = instance.get_runs()
    assert not [run for run in runs if run.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING)]
    assert not instance.get_runs(filters=dg.RunsFilter(job_name="report_job"))  # nothing after the stop ran
