"""`promptlab run --workers N`: independent partitions on N worker processes give the warehouse the same results, to
the bit, as one worker with the same torch threads; the runs are spread over the workers' processes; every run
records its thread count; bad values are refused by name."""

import os
import shutil
import subprocess
import sys

import dagster as dg
import pytest

from bench.reproducibility import differences, warehouse_contents
from models.provenance import PACKAGE_ROOT
from pipelines.run_guard import PID_TAG

EXPERIMENTS = ["zeroshot", "coop-k2-s1", "coop-k2-s2", "coop-k2-s1-b2n", "promptsrc-k2-s1"]


def promptlab_run(root, *arguments):
    environment = {**os.environ, "PROMPTLAB_WORKSPACE": str(root / "workspace"),
                   "DAGSTER_HOME": str(root / "dagster_home")}
    environment.pop("PROMPTLAB_TORCH_THREADS", None)
    command = [sys.executable, "-m", "pipelines.cli", "run", "--dataset", "Shapes", "--dataset", "Digits"]
    for key in EXPERIMENTS:
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


def test_two_workers_write_the_same_results_to_the_bit_as_one(two_runs):
    (one, two), _ = two_runs
    one_contents, two_contents = contents(one), contents(two)
    assert sum(name.startswith("predictions:") for name in one_contents) >= 2 * len(EXPERIMENTS)
    assert differences(one_contents, two_contents) == []
    computes = {row for row in one_contents["table:runs"] if '"compute": "cpu fp32, 1 thread"' not in row}
    assert computes == set()


def test_the_partitions_ran_on_two_worker_processes(two_runs):
    (_, two), second = two_runs
    instance = dg.DagsterInstance.from_config(str(two / "dagster_home"))
    experiment_runs = instance.get_runs(filters=dg.RunsFilter(job_name="experiment_job"))
    assert len(experiment_runs) == 2 * len(EXPERIMENTS)
    assert len({run.tags[PID_TAG] for run in experiment_runs}) == 2
    assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in experiment_runs)
    assert "2 workers, 1 torch threads each" in second.stdout + second.stderr


@pytest.mark.parametrize("arguments, message", [
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--threads", "-1"], "--threads must be at least 1, got -1"),
])
def test_bad_worker_or_thread_counts_are_refused_before_anything_runs(tmp_path, arguments, message):
    result = promptlab_run(tmp_path, *arguments)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "workspace").exists()
