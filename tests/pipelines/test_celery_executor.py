"""PROMPTLAB_EXECUTOR=celery against real services: a local Redis (broker and result backend) and a PostgreSQL
cluster (the Dagster instance of deploy/celery/dagster.yaml), both on 127.0.0.1 and free ports, and two Celery workers
started as separate processes with deploy/celery/celery.yaml. A slice of the micro grid is materialized through them
with `dagster job execute`; every step must run in a worker process, and the warehouse (a DuckLake whose catalog is
in the same PostgreSQL) must hold each partition's runs exactly once. Then a worker is killed with SIGKILL in the
middle of a partition's training: the warehouse must hold no partial rows of it, and the partition, launched again,
must land exactly once.

Marked `services` (deselect with -m 'not services'); skipped, naming what is missing, when redis-server, PostgreSQL's
initdb / pg_ctl or the `distributed` extra are absent or the services cannot start."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from local_services import LocalPostgres, free_port, postgres_bin

from models.provenance import PACKAGE_ROOT

pytestmark = [pytest.mark.services, pytest.mark.integration]

BIN = Path(sys.executable).parent
DEPLOY = PACKAGE_ROOT / "deploy" / "celery"
WORKERS = ("promptlab-a", "promptlab-b")
EXPERIMENTS = ["zeroshot", "coop-k2-s1"]  # materialized through both workers
KILLED_EXPERIMENT = "coop-k2-s2"  # its worker is killed during its training
JOB_TIMEOUT = 300


def _missing_requirements() -> list[str]:
    missing = []
    if shutil.which("redis-server") is None:
        missing.append("redis-server (apt-get install redis-server)")
    if not postgres_bin():
        missing.append("PostgreSQL's initdb and pg_ctl (/usr/lib/postgresql/*/bin)")
    for module in ("dagster_celery", "dagster_postgres", "redis"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"Python package {module} (pip install -e '.[distributed]')")
    if not (BIN / "dagster-celery").exists():
        missing.append(f"{BIN / 'dagster-celery'} (the `distributed` extra)")
    return missing


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc: no psutil here)."""
    parents: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    found, frontier = [], [pid]
    while frontier:
        children = parents.get(frontier.pop(), [])
        found += children
        frontier += children
    return found


def _kill_tree(process: subprocess.Popen) -> None:
    for pid in [process.pid, *_descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)


def _wait_for(condition, timeout: float, what: str, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


class Services:
    """Redis (here) and PostgreSQL (local_services.LocalPostgres) on 127.0.0.1; `start` returns the environment
    that points PromptLab at them."""

    def __init__(self, root: Path):
        self.root = root
        self.redis: subprocess.Popen | None = None
        self.postgres = LocalPostgres()

    def start(self) -> dict[str, str]:
        started = time.perf_counter()
        redis_port = free_port()
        redis_log = open(self.root / "redis.log", "w")
        self.redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save",
                                       "", "--appendonly", "no", "--dir", str(self.root)],
                                      stdout=redis_log, stderr=redis_log)
        self.postgres.start()
        self.postgres.create_database("dagster")
        results = self.postgres.create_database("results")
        import redis as redis_client

        _wait_for(lambda: self._redis_answers(redis_client, redis_port), 20, "redis-server to answer PING",
                  self.root / "redis.log")
        self.seconds = time.perf_counter() - started
        return {"PROMPTLAB_CELERY_BROKER": f"redis://127.0.0.1:{redis_port}/0",
                "PROMPTLAB_CELERY_BACKEND": f"redis://127.0.0.1:{redis_port}/1",
                "PROMPTLAB_POSTGRES_URL": self.postgres.url("dagster"),
                # the results go to a DuckLake on the same PostgreSQL, as a deployment of several machines would
                "PROMPTLAB_WAREHOUSE": f"ducklake:postgres:{results}"}

    @staticmethod
    def _redis_answers(client, port: int) -> bool:
        try:
            return bool(client.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping())
        except client.exceptions.ConnectionError:
            return False

    def stop(self) -> None:
        self.postgres.stop()
        if self.redis is not None:
            self.redis.terminate()
            try:
                self.redis.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.redis.kill()


class Deployment:
    """The Celery deployment: the instance in PostgreSQL, two workers, and `dagster job execute` to launch runs."""

    def __init__(self, root: Path, service_environment: dict[str, str]):
        self.root = root
        self.home = root / "dagster_home"
        self.home.mkdir()
        shutil.copy(DEPLOY / "dagster.yaml", self.home / "dagster.yaml")
        self.environment = {**os.environ, **service_environment, "DAGSTER_HOME": str(self.home),
                            "PROMPTLAB_WORKSPACE": str(root / "workspace"), "PROMPTLAB_EXECUTOR": "celery",
                            "PROMPTLAB_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1",
                            # `dagster-celery worker start` runs `celery` from the PATH, as in an activated venv
                            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.environment.pop("PROMPTLAB_EXECUTOR_CONFIG", None)
        self.workers: dict[str, subprocess.Popen] = {}
        self.launched = 0

    def command(self, *arguments: str, timeout: float = 120) -> str:
        result = subprocess.run([str(BIN / "dagster"), *arguments], cwd=PACKAGE_ROOT, env=self.environment,
                                capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"dagster {' '.join(arguments)}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
        return result.stdout

    def start_worker(self, name: str) -> None:
        log = open(self.root / f"{name}.log", "w")
        self.workers[name] = subprocess.Popen(
            [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y",
             str(DEPLOY / "celery.yaml"), "-n", name, "--", "--concurrency=1", "--without-mingle", "--without-gossip"],
            cwd=PACKAGE_ROOT, env=self.environment, stdout=log, stderr=subprocess.STDOUT)

    def wait_until_ready(self, name: str) -> None:
        log = self.root / f"{name}.log"
        _wait_for(lambda: " ready." in log.read_text() or self.workers[name].poll() is not None, 120,
                  f"worker {name} to start", log)
        assert self.workers[name].poll() is None, f"worker {name} exited: {log.read_text()[-3000:]}"

    def launch(self, job: str, partition: tuple[str, ...] = ()) -> subprocess.Popen:
        tags = {}
        if len(partition) == 1:
            tags = {"dagster/partition": partition[0]}
        elif partition:
            dataset, experiment = partition
            tags = {"dagster/partition": f"{dataset}|{experiment}", "dagster/partition/dataset": dataset,
                    "dagster/partition/experiment": experiment}
        self.launched += 1
        label = "-".join((str(self.launched), job, *partition))
        log = open(self.root / f"run-{label}.log", "w")
        process = subprocess.Popen([str(BIN / "dagster"), "job", "execute", "-m", "pipelines.definitions", "-j", job,
                                    "--tags", json.dumps(tags)], cwd=PACKAGE_ROOT, env=self.environment,
                                   stdout=log, stderr=subprocess.STDOUT)
        process.log_path = self.root / f"run-{label}.log"
        return process

    def run(self, job: str, *partition: str) -> None:
        process = self.launch(job, partition)
        try:
            code = process.wait(timeout=JOB_TIMEOUT)
        finally:
            if process.poll() is None:
                _kill_tree(process)
        assert code == 0, f"{job}{list(partition)} failed ({code}): {process.log_path.read_text()[-4000:]}"

    def stop(self) -> None:
        for process in self.workers.values():
            if process.poll() is None:
                _kill_tree(process)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    missing = _missing_requirements()
    if missing:
        pytest.skip("Celery deployment test needs: " + "; ".join(missing))
    root = tmp_path_factory.mktemp("celery")
    services = Services(root)
    try:
        service_environment = services.start()
    except (OSError, RuntimeError, AssertionError, subprocess.TimeoutExpired) as error:
        services.stop()
        pytest.skip(f"Redis or PostgreSQL could not start here: {error}")
    deployment = Deployment(root, service_environment)
    deployment.services_seconds = services.seconds
    saved = os.environ.get("PROMPTLAB_POSTGRES_URL")
    os.environ["PROMPTLAB_POSTGRES_URL"] = service_environment["PROMPTLAB_POSTGRES_URL"]  # read by the instance here
    try:
        deployment.command("instance", "migrate")  # the schema once, before workers and runs connect
        deployment.command("instance", "concurrency", "set", "gpu", "2")  # one torch step per worker
        for name in WORKERS:
            deployment.start_worker(name)
        for name in WORKERS:
            deployment.wait_until_ready(name)
        yield deployment
    finally:
        deployment.stop()
        services.stop()
        if saved is None:
            os.environ.pop("PROMPTLAB_POSTGRES_URL", None)
        else:
            os.environ["PROMPTLAB_POSTGRES_URL"] = saved


def instance_of(deployment):
    import dagster as dg

    return dg.DagsterInstance.from_config(str(deployment.home))


def step_records(instance, run_id: str, event_type) -> list:
    return [record for record in instance.all_logs(run_id, of_type=event_type)]


def warehouse(deployment):
    """The workers' warehouse: the PostgreSQL-catalog lake of $PROMPTLAB_WAREHOUSE (and no DuckDB file)."""
    from models.warehouse import LakeWarehouse, open_warehouse

    folder = deployment.root / "workspace" / "warehouse"
    lake = open_warehouse(folder / "promptlab.duckdb", folder / "predictions",
                          deployment.environment["PROMPTLAB_WAREHOUSE"])
    assert isinstance(lake, LakeWarehouse) and not (folder / "promptlab.duckdb").exists()
    return lake


def partial_rows(deployment) -> dict[str, list]:
    """Rows that only a half-written run would leave: metrics without their run, runs without any metric."""
    query = warehouse(deployment).query
    return {
        "metrics without a run": query("SELECT DISTINCT m.run_id FROM metrics m ANTI JOIN runs r USING (run_id)")
        .rows(),
        "current runs without metrics": query(
            "SELECT r.run_id, r.stage, r.partition_key FROM runs r WHERE r.is_current "
            "AND r.run_id NOT IN (SELECT run_id FROM metrics)").rows(),
    }


def current_runs_per_key(deployment, partition_key: str) -> list[tuple]:
    return warehouse(deployment).query(
        "SELECT stage, count(*) FILTER (WHERE is_current) AS current, count(*) AS runs FROM runs "
        "WHERE partition_key = ? GROUP BY stage ORDER BY stage", [partition_key]).rows()


@pytest.fixture(scope="module")
def slice_materialized(deployment):
    """The embedded world, Shapes' curation and features, then two experiment partitions launched together."""
    started = time.perf_counter()
    deployment.run("embedded_world_job")
    deployment.run("curation_job", "Shapes")
    deployment.run("features_job", "Shapes")
    launched = [deployment.launch("experiment_job", ("Shapes", key)) for key in EXPERIMENTS]
    for process in launched:
        try:
            code = process.wait(timeout=JOB_TIMEOUT)
        finally:
            if process.poll() is None:
                _kill_tree(process)
        assert code == 0, process.log_path.read_text()[-4000:]
    deployment.slice_seconds = time.perf_counter() - started
    return deployment


def test_every_step_ran_in_a_celery_worker_process(slice_materialized):
    import dagster as dg

    deployment = slice_materialized
    instance = instance_of(deployment)
    runs = instance.get_runs()
    assert len(runs) == 5 and all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs), \
        [(run.job_name, run.tags.get("dagster/partition"), run.status) for run in runs]
    worker_pids = {name: set(_descendants(process.pid)) for name, process in deployment.workers.items()}
    used_workers = set()
    for run in runs:
        starts = step_records(instance, run.run_id, dg.DagsterEventType.STEP_START)
        assert starts, f"run {run.job_name} has no STEP_START event"
        handed = {record.dagster_event.step_key: record.dagster_event.event_specific_data.metadata
                  for record in step_records(instance, run.run_id, dg.DagsterEventType.ENGINE_EVENT)
                  if "in celery worker" in (record.dagster_event.message or "")}
        for record in starts:
            step, pid = record.dagster_event.step_key, record.dagster_event.pid
            owners = [name for name, pids in worker_pids.items() if pid in pids]
            assert owners, f"{run.job_name} step {step} started in pid {pid}, not in a worker process {worker_pids}"
            assert step in handed, f"{run.job_name} step {step} has no 'Executing steps ... in celery worker' event"
            hostname = handed[step]["Celery worker"].value
            assert hostname.startswith(owners[0] + "@"), f"{step}: pid {pid} is {owners[0]}'s, event says {hostname}"
            used_workers.add(owners[0])
    assert used_workers == set(WORKERS), f"only {used_workers} executed steps"


def test_the_warehouse_holds_every_partition_exactly_once(slice_materialized):
    deployment = slice_materialized
    for key in EXPERIMENTS:
        stages = current_runs_per_key(deployment, f"Shapes|{key}")
        assert stages, f"no warehouse run of Shapes|{key}"
        assert all(current == 1 and runs == 1 for _, current, runs in stages), (key, stages)
    duplicates = warehouse(deployment).query(
        "SELECT stage, dataset, partition_key, count(*) AS n FROM runs WHERE is_current GROUP BY ALL HAVING n > 1")
    assert duplicates.is_empty(), duplicates
    assert partial_rows(deployment) == {"metrics without a run": [], "current runs without metrics": []}


def test_a_worker_killed_mid_partition_leaves_no_partial_rows_and_the_rerun_lands_once(slice_materialized):
    import dagster as dg

    deployment = slice_materialized
    instance = instance_of(deployment)
    key = f"Shapes|{KILLED_EXPERIMENT}"
    before = {run.run_id for run in instance.get_runs()}
    orchestrator = deployment.launch("experiment_job", ("Shapes", KILLED_EXPERIMENT))
    try:
        run = _wait_for(lambda: next((r for r in instance.get_runs() if r.run_id not in before), None), 120,
                        "the run to be created", orchestrator.log_path)

        def training_started():
            return next((record for record in step_records(instance, run.run_id, dg.DagsterEventType.STEP_START)
                         if record.dagster_event.step_key == "prompt_checkpoints"), None)

        start = _wait_for(training_started, JOB_TIMEOUT, "prompt_checkpoints to start", orchestrator.log_path)
        victim = next(name for name, process in deployment.workers.items()
                      if start.dagster_event.pid in _descendants(process.pid))
        _kill_tree(deployment.workers[victim])
        finished = [record.dagster_event.step_key
                    for record in step_records(instance, run.run_id, dg.DagsterEventType.STEP_SUCCESS)]
        assert "prompt_checkpoints" not in finished, "training finished before the kill: nothing was interrupted"
        # the gpu pool is held per step (granularity op): the dead step still holds its slot
        claimed = instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
        assert [(slot.run_id, slot.step_key) for slot in claimed] == [(run.run_id, "prompt_checkpoints")], claimed
        time.sleep(3)  # whatever the dead worker had in flight would have landed by now
        assert current_runs_per_key(deployment, key) == [], "the killed partition wrote warehouse runs"
        assert partial_rows(deployment) == {"metrics without a run": [], "current runs without metrics": []}
        # Nothing tells the orchestrator that the task's worker died (the task was acknowledged when taken): the run
        # waits for it until it is terminated (the UI's "Terminate", a `dagster/max_runtime` tag): an interrupt
        # revokes the task and fails the run, with the step in an unknown state.
        time.sleep(2)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
        orchestrator.send_signal(signal.SIGINT)
        orchestrator.wait(timeout=30)
        ended = instance.get_run_by_id(run.run_id)
        assert ended.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED), ended.status
        # The dead step's `gpu` slot outlives the run: the daemon's run monitoring frees a finished run's slots
        # (free_slots_after_run_end_seconds, deploy/celery/dagster.yaml). No daemon here: free them as it does.
        held = instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
        assert [(slot.run_id, slot.step_key) for slot in held] == [(run.run_id, "prompt_checkpoints")], held
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    finally:
        if orchestrator.poll() is None:
            _kill_tree(orchestrator)
    deployment.run("experiment_job", "Shapes", KILLED_EXPERIMENT)  # on the surviving worker
    assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots == []
    stages = current_runs_per_key(deployment, key)
    assert [stage for stage, _, _ in stages] == ["evaluation"], stages
    assert all(current == 1 and runs == 1 for _, current, runs in stages), stages
    assert partial_rows(deployment) == {"metrics without a run": [], "current runs without metrics": []}
    rerun = [r for r in instance.get_runs() if r.run_id not in before and r.run_id != run.run_id]
    assert len(rerun) == 1 and rerun[0].status == dg.DagsterRunStatus.SUCCESS, rerun
    print(f"\nservices started in {deployment.services_seconds:.1f}s; slice through Celery in "
          f"{deployment.slice_seconds:.1f}s")
