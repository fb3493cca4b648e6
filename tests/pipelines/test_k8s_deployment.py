"""PROMPTLAB_EXECUTOR=k8s without a cluster: the definitions load and validate with the k8s_job_executor configured
from deploy/k8s/executor.yaml, that file is valid executor config whose GPU steps are exactly the `gpu` pool's, and
the Helm values file parses and uses the keys the official Dagster chart reads (its pydantic schema,
helm/dagster/schema in dagster-io/dagster). Neither helm nor a cluster is run here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from models.provenance import PACKAGE_ROOT

DEPLOY = PACKAGE_ROOT / "deploy"
BIN = Path(sys.executable).parent

# The chart's top-level values (DagsterHelmValues, plus `concurrency` since 1.10) and the keys used below.
CHART_TOP_LEVEL = {"global", "dagsterWebserver", "dagster-user-deployments", "postgresql",
                   "generatePostgresqlPasswordSecret", "generateCeleryConfigSecret", "rabbitmq", "redis", "flower",
                   "ingress", "imagePullSecrets", "computeLogManager", "scheduler", "runLauncher", "pythonLogs",
                   "dagsterDaemon", "busybox", "migrate", "telemetry", "serviceAccount", "retention",
                   "additionalInstanceConfig", "concurrency", "nameOverride", "fullnameOverride", "rbacEnabled",
                   "pipelineRun"}
K8S_RUN_LAUNCHER_KEYS = {"image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile",
                         "envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes", "labels",
                         "failPodOnRunFailure", "resources", "schedulerName", "securityContext", "runK8sConfig",
                         "podSecurityContext", "annotations", "nodeSelector", "affinity", "tolerations",
                         "jobTTLSecondsAfterFinished"}
RUN_K8S_CONFIG_KEYS = {"containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig", "jobMetadata"}
USER_DEPLOYMENT_KEYS = {"name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns",
                        "deploymentNamespace", "port", "env", "envConfigMaps", "envSecrets", "annotations",
                        "nodeSelector", "affinity", "tolerations", "podSecurityContext", "securityContext",
                        "resources", "livenessProbe", "readinessProbe", "startupProbe", "labels", "volumeMounts",
                        "volumes", "schedulerName", "initContainers", "sidecarContainers", "deploymentStrategy",
                        "replicaCount", "service", "deploymentLabels"}
CONCURRENCY_KEYS = {"enabled": None, "pools": {"defaultLimit", "granularity", "opGranularityRunBuffer"},
                    "runs": {"maxConcurrentRuns", "tagConcurrencyLimits"}}

pytest.importorskip("dagster_k8s", reason="the `distributed` extra (dagster-k8s) is not installed")


def _environment(**changes: str) -> dict[str, str]:
    environment = {**os.environ, **changes}
    environment.pop("PROMPTLAB_EXECUTOR_CONFIG", None)
    return environment


@pytest.mark.parametrize("executor", ["k8s", "celery", "multiprocess", "in_process"])
def test_dagster_definitions_validate_with_each_executor(executor, tmp_path):
    result = subprocess.run([str(BIN / "dagster"), "definitions", "validate", "-m", "pipelines.definitions"],
                            cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=300,
                            env=_environment(PROMPTLAB_EXECUTOR=executor, DAGSTER_HOME=str(tmp_path),
                                             PROMPTLAB_CELERY_BROKER="redis://127.0.0.1:1/0",
                                             PROMPTLAB_CELERY_BACKEND="redis://127.0.0.1:1/1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Validation successful" in result.stdout + result.stderr, result.stdout[-2000:] + result.stderr[-2000:]


def test_every_job_gets_the_selected_executor_and_its_file_is_valid_config(tmp_path):
    """In a subprocess (the executor is chosen when pipelines.definitions is imported): every job's executor is the
    configured k8s_job_executor, and its config validates against the executor's schema."""
    script = """
import dagster as dg
from dagster._config import process_config
from dagster_k8s import k8s_job_executor
from pipelines.definitions import defs
from pipelines.executors import executor_run_config
config = executor_run_config("k8s")
result = process_config(k8s_job_executor.config_schema.config_type, config)
assert result.success, [error.message for error in result.errors]
names = {defs.resolve_job_def(job.name).executor_def.name for job in defs.jobs}
assert names == {"promptlab_k8s"}, names
print("ok", sorted(job.name for job in defs.jobs))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=PACKAGE_ROOT, capture_output=True, text=True,
                            timeout=300, env=_environment(PROMPTLAB_EXECUTOR="k8s", DAGSTER_HOME=str(tmp_path)))
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]


def test_a_bad_executor_name_is_refused_by_name(tmp_path):
    result = subprocess.run([sys.executable, "-c", "import pipelines.definitions"], cwd=PACKAGE_ROOT,
                            capture_output=True, text=True, timeout=300,
                            env=_environment(PROMPTLAB_EXECUTOR="spark", DAGSTER_HOME=str(tmp_path)))
    assert result.returncode != 0
    assert "$PROMPTLAB_EXECUTOR='spark': expected one of in_process, multiprocess, celery, k8s" in result.stderr


@pytest.mark.parametrize("executor, config, message", [
    ("k8s", "execution:\n  config:\n    job_namespac: x\n", 'unexpected config entry "job_namespac"'),
    ("celery", (DEPLOY / "celery" / "celery.yaml").read_text(), 'PROMPTLAB_CELERY_BROKER" which is not set'),
    ("k8s", "execution: {}\n", "expected a run config with an `execution: config:` mapping"),
])
def test_a_bad_executor_config_fails_when_the_definitions_load(executor, config, message, tmp_path):
    path = tmp_path / "executor.yaml"
    path.write_text(config)
    environment = _environment(PROMPTLAB_EXECUTOR=executor, DAGSTER_HOME=str(tmp_path))
    environment["PROMPTLAB_EXECUTOR_CONFIG"] = str(path)
    environment.pop("PROMPTLAB_CELERY_BROKER", None)
    result = subprocess.run([sys.executable, "-c", "import pipelines.definitions"], cwd=PACKAGE_ROOT,
                            capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode != 0 and "ExecutorChoiceError" in result.stderr, result.stderr[-2000:]
    assert message in result.stderr and str(path) in result.stderr, result.stderr[-2000:]


def test_the_gpu_steps_of_the_executor_config_are_exactly_the_gpu_pool():
    from pipelines.definitions import ALL_ASSETS

    gpu_steps = {asset.op.name for asset in ALL_ASSETS if asset.op.pool == "gpu"}
    config = yaml.safe_load((DEPLOY / "k8s" / "executor.yaml").read_text())["execution"]["config"]
    per_step = config["per_step_k8s_config"]
    assert set(per_step) == gpu_steps, (set(per_step) ^ gpu_steps)
    for step, step_config in per_step.items():
        resources = step_config["container_config"]["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == 1 and resources["limits"]["nvidia.com/gpu"] == 1, step
    assert "nvidia.com/gpu" not in str(config["step_k8s_config"])  # CPU steps do not hold a GPU


def test_the_helm_values_parse_and_use_the_charts_keys():
    values = yaml.safe_load((DEPLOY / "k8s" / "values.yaml").read_text())
    assert set(values) <= CHART_TOP_LEVEL, set(values) - CHART_TOP_LEVEL

    user_code = values["dagster-user-deployments"]
    assert user_code["enabled"] is True
    (deployment,) = user_code["deployments"]
    assert set(deployment) <= USER_DEPLOYMENT_KEYS, set(deployment) - USER_DEPLOYMENT_KEYS
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "pipelines.definitions"]
    assert {"repository", "tag"} <= set(deployment["image"])
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True

    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    k8s = launcher["config"]["k8sRunLauncher"]
    assert set(k8s) <= K8S_RUN_LAUNCHER_KEYS, set(k8s) - K8S_RUN_LAUNCHER_KEYS
    assert set(k8s["runK8sConfig"]) <= RUN_K8S_CONFIG_KEYS, set(k8s["runK8sConfig"]) - RUN_K8S_CONFIG_KEYS
    # the shared volume is mounted wherever code runs: the code server, and run (and step) pods
    mounts = {mount["mountPath"] for mount in k8s["volumeMounts"]}
    assert mounts == {mount["mountPath"] for mount in deployment["volumeMounts"]} == {"/shared"}

    assert {"enabled", "postgresqlHost", "postgresqlUsername", "postgresqlPassword",
            "postgresqlDatabase"} <= set(values["postgresql"])
    assert values["dagsterDaemon"]["enabled"] is True
    concurrency = values["concurrency"]
    assert set(concurrency) <= set(CONCURRENCY_KEYS)
    assert set(concurrency["pools"]) <= CONCURRENCY_KEYS["pools"] and set(concurrency["runs"]) <= \
        CONCURRENCY_KEYS["runs"]
    assert concurrency["enabled"] is True and concurrency["pools"]["granularity"] == "op"
    # the chart refuses maxConcurrentRuns in both the concurrency block and the queued run coordinator
    coordinator = values["dagsterDaemon"].get("runCoordinator", {}).get("config", {}).get("queuedRunCoordinator", {})
    assert "maxConcurrentRuns" not in coordinator


def test_the_celery_files_are_valid_executor_and_instance_config(monkeypatch):
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config_schema
    from dagster_celery import celery_executor

    monkeypatch.setenv("PROMPTLAB_CELERY_BROKER", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("PROMPTLAB_CELERY_BACKEND", "redis://127.0.0.1:6379/1")
    monkeypatch.setenv("PROMPTLAB_POSTGRES_URL", "postgresql+psycopg2://dagster@127.0.0.1:5432/dagster")
    celery = yaml.safe_load((DEPLOY / "celery" / "celery.yaml").read_text())["execution"]["config"]
    result = process_config(celery_executor.config_schema.config_type, celery)
    assert result.success, [error.message for error in result.errors]
    assert result.value["broker"] == "redis://127.0.0.1:6379/0"
    instance = yaml.safe_load((DEPLOY / "celery" / "dagster.yaml").read_text())
    result = process_config(dagster_instance_config_schema(), instance)
    assert result.success, [error.message for error in result.errors]
    assert instance["concurrency"]["pools"]["granularity"] == "op"
