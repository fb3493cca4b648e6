"""Which executor runs the steps of every job, chosen by $PROMPTLAB_EXECUTOR when `pipelines.definitions` loads.

- `in_process` (default): a run's steps one after another in its own process, as `promptlab run` does; torch is
  imported once per run and two trainings never share the cores.
- `multiprocess`: each step in a child process, at most `max_concurrent` at once (launchpad: `execution: config:
  max_concurrent: N`; 0 means one per core).
- `celery`: each step is a task on a Celery queue, executed by whichever worker takes it (dagster-celery). Its
  configuration (broker, result backend, Celery settings) is read from the YAML file $PROMPTLAB_EXECUTOR_CONFIG
  (default deploy/celery/celery.yaml), its `execution: config:` section, the same file the workers are started
  with (`dagster-celery worker start -y`), so that runs from the UI, schedules and sensors need no run config.
- `k8s`: each step in its own Kubernetes Job (dagster-k8s `k8s_job_executor`), configured from
  $PROMPTLAB_EXECUTOR_CONFIG (default deploy/k8s/executor.yaml): namespace, resources, the GPU steps'
  `nvidia.com/gpu` request.

`promptlab run` executes every job in its own process whatever is chosen here (execute_in_process); the executor
applies to runs launched from the UI, by schedules and sensors, and by `dagster job execute`.

The `gpu` pool (declared by the torch-heavy assets) is enforced by the instance, not by the executor: with
`granularity: run` (dagster_home_template.yaml) a queued run waits for a slot of every pool its steps use; with
`granularity: op` (deploy/celery/dagster.yaml, deploy/k8s/values.yaml) each step waits for a slot before it is
started or handed to a worker, so at most `dagster instance concurrency set gpu N` torch steps run at once however
many workers or pods there are.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import yaml

from models.provenance import PACKAGE_ROOT

EXECUTOR_ENV = "PROMPTLAB_EXECUTOR"
EXECUTOR_CONFIG_ENV = "PROMPTLAB_EXECUTOR_CONFIG"
EXECUTORS = ("in_process", "multiprocess", "celery", "k8s")
DEFAULT_EXECUTOR_CONFIG = {
    "celery": PACKAGE_ROOT / "deploy" / "celery" / "celery.yaml",
    "k8s": PACKAGE_ROOT / "deploy" / "k8s" / "executor.yaml",
}


class ExecutorChoiceError(ValueError):
    """A bad $PROMPTLAB_EXECUTOR, a missing package or an unreadable executor config file; the message says which."""


def executor_name() -> str:
    """$PROMPTLAB_EXECUTOR, `in_process` when unset or empty."""
    name = os.environ.get(EXECUTOR_ENV, "").strip() or "in_process"
    if name not in EXECUTORS:
        raise ExecutorChoiceError(f"${EXECUTOR_ENV}={name!r}: expected one of {', '.join(EXECUTORS)}")
    return name


def executor_config_path(name: str) -> Path:
    return Path(os.environ.get(EXECUTOR_CONFIG_ENV) or DEFAULT_EXECUTOR_CONFIG[name])


def executor_run_config(name: str) -> dict:
    """The `execution: config:` section of the executor's YAML file (a run config, as the workers read it)."""
    path = executor_config_path(name)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ExecutorChoiceError(f"{EXECUTOR_ENV}={name}: cannot read its configuration {path} "
                                  f"(${EXECUTOR_CONFIG_ENV}): {error}") from error
    config = (document.get("execution") or {}).get("config")
    if not isinstance(config, dict):
        raise ExecutorChoiceError(f"{path}: expected a run config with an `execution: config:` mapping")
    return config


def selected_executor(name: str | None = None) -> dg.ExecutorDefinition:
    """The executor every job (and the asset graph's materializations) uses."""
    name = name or executor_name()
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        return dg.multiprocess_executor
    try:
        if name == "celery":
            from dagster_celery import celery_executor as executor
        else:
            from dagster_k8s import k8s_job_executor as executor
    except ImportError as error:
        raise ExecutorChoiceError(f"{EXECUTOR_ENV}={name} needs the `distributed` extra "
                                  f"(pip install -e '.[distributed]'): {error}") from error
    config = executor_run_config(name)
    # checked now, so that a wrong key or an unset $VARIABLE fails `dagster definitions validate` and the code
    # server's start, not the first run (configured() alone checks nothing until a run starts)
    from dagster._config import process_config
    from dagster._config.errors import PostProcessingError

    try:
        checked = process_config(executor.config_schema.config_type, config)
    except PostProcessingError as error:  # an {env: VARIABLE} that is not set
        raise ExecutorChoiceError(f"{executor_config_path(name)}: {error}") from error
    if not checked.success:
        raise ExecutorChoiceError(f"{executor_config_path(name)} is not valid {name} executor config: "
                                  + "; ".join(error.message for error in checked.errors))
    return executor.configured(config, name=f"promptlab_{name}")
