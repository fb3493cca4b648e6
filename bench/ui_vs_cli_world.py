"""The embedded world from the UI's launch path against `promptlab run`'s, wall time (issue 11 §3).

`.venv/bin/python -m bench.ui_vs_cli_world` (about 10 minutes on 2 idle cores). Each side gets a fresh workspace and
DAGSTER_HOME holding the project's dagster.yaml (pipelines/dagster_home_template.yaml):

- cli: `embedded_world_job` executed in process, as `promptlab run` does (pipelines.cli.run_job);
- ui: `dagster dev` on a free loopback port, the job submitted over GraphQL (what the launchpad's Materialize does),
  polled until it ends; the time runs from the submission to the end of the run (queue, launch and run).

Output: one line on stdout and bench/results/ui-vs-cli-world-latest.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from models.provenance import PACKAGE_ROOT

OUTPUT = PACKAGE_ROOT / "bench" / "results" / "ui-vs-cli-world-latest.json"
CLI_CODE = ("from pipelines.cli import ensure_dagster_home, prepared_instance, run_job; "
            "assert run_job(prepared_instance(ensure_dagster_home()), 'embedded_world_job').success")


def _fresh_environment(name: str) -> tuple[Path, dict[str, str]]:
    base = Path(tempfile.mkdtemp(prefix=f"promptlab-world-{name}-"))
    (base / "home").mkdir()
    shutil.copy(PACKAGE_ROOT / "pipelines" / "dagster_home_template.yaml", base / "home" / "dagster.yaml")
    environment = {**os.environ, "PROMPTLAB_WORKSPACE": str(base / "workspace"), "DAGSTER_HOME": str(base / "home")}
    environment.pop("PROMPTLAB_GRID", None)
    return base, environment


def time_cli() -> float:
    _, environment = _fresh_environment("cli")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", CLI_CODE], cwd=PACKAGE_ROOT, env=environment, check=True)
    return time.perf_counter() - started


def time_ui() -> tuple[float, str]:
    from dagster_graphql import DagsterGraphQLClient

    base, environment = _fresh_environment("ui")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dagster = str(Path(sys.executable).with_name("dagster"))
    with open(base / "dagster_dev.log", "w") as log:
        server = subprocess.Popen([dagster, "dev", "-m", "pipelines.definitions", "-h", "127.0.0.1", "-p", str(port)],
                                  cwd=PACKAGE_ROOT, env=environment, start_new_session=True, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError(f"dagster dev did not come up; see {base / 'dagster_dev.log'}")
                time.sleep(1)
        time.sleep(5)  # the daemon (run queue) starts after the webserver
        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        started = time.perf_counter()
        run_id = client.submit_job_execution("embedded_world_job")
        while (status := client.get_run_status(run_id).value) not in ("SUCCESS", "FAILURE", "CANCELED"):
            time.sleep(2)
        return time.perf_counter() - started, status
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def main() -> int:
    cli_seconds = time_cli()
    ui_seconds, status = time_ui()
    result = {"cli_seconds": round(cli_seconds, 1), "ui_seconds": round(ui_seconds, 1), "ui_status": status,
              "ratio_ui_over_cli": round(ui_seconds / cli_seconds, 2), "load_average_1min": os.getloadavg()[0]}
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0 if status == "SUCCESS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
