"""The browser suite's fixtures: `dagster dev` on a free loopback port with a micro catalog, a workspace and a
DAGSTER_HOME of its own (the project's dagster.yaml template), the reports folder served over HTTP as `make ui`
does, and Debian's headless Chromium driven by Playwright. A failing test leaves a screenshot and the page's text
in tests/ui/artifacts/ (or $PROMPTLAB_UI_ARTIFACTS).

Without Playwright or Chromium the tests fail and say how to install them; PROMPTLAB_SKIP_BROWSER=1 skips them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from models.provenance import PACKAGE_ROOT
from micro_catalog import experiment_key, write_micro_catalog

CHROMIUM = Path(os.environ.get("PROMPTLAB_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("PROMPTLAB_UI_ARTIFACTS", Path(__file__).with_name("artifacts")))
SERVER_START_TIMEOUT_SECONDS = 180


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:3]} exited with {process.returncode}; its log:\n"
                               f"{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s; log:\n{log.read_text()[-4000:]}")


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group the fixture started (dagster dev and its webserver, daemon and code server), then
    SIGKILL what is left after 20 s."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # children that outlived the leader
    except ProcessLookupError:
        pass
    process.wait()


class DagsterUI:
    """Where the suite's `dagster dev` runs and what it was given."""

    def __init__(self, root: Path, url: str, report_url: str, experiment: str, augmented_experiment: str):
        self.root, self.url, self.report_url, self.experiment = root, url, report_url, experiment
        self.augmented_experiment = augmented_experiment
        self.workspace = root / "workspace"
        self.dagster_home = root / "dagster_home"
        self.log = root / "dagster_dev.log"
        self.runs: dict[tuple[str, str | None], tuple[str, str]] = {}  # (job, partition) -> (run id, final status)


@pytest.fixture(scope="session")
def dagster_ui():
    """`dagster dev -m pipelines.definitions` on 127.0.0.1:<free port>, torn down (whole process group) at the end."""
    root = Path(tempfile.mkdtemp(prefix="promptlab-ui-"))
    catalog = write_micro_catalog(root / "catalog")
    workspace, home = root / "workspace", root / "dagster_home"
    (workspace / "reports").mkdir(parents=True)
    port, report_port = free_port(), free_port()
    report_url = f"http://127.0.0.1:{report_port}/"
    environment = {**os.environ, "DAGSTER_HOME": str(home), "PROMPTLAB_CATALOG": str(catalog),
                   "PROMPTLAB_WORKSPACE": str(workspace), "PROMPTLAB_REPORT_URL": report_url,
                   "PYTHONUNBUFFERED": "1"}
    environment.pop("PROMPTLAB_GRID", None)
    ui = DagsterUI(root, f"http://127.0.0.1:{port}", report_url, experiment_key(catalog),
                    experiment_key(catalog, augmented=True))
    dagster = str(Path(sys.executable).with_name("dagster"))
    # as `make ui` does: the project's dagster.yaml in DAGSTER_HOME, automation shown as it runs
    subprocess.run([sys.executable, "-m", "pipelines.ui_instance"], cwd=PACKAGE_ROOT, env=environment, check=True,
                   capture_output=True)
    processes = []
    try:
        with open(ui.log, "w") as log:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "http.server", str(report_port), "--bind", "127.0.0.1",
                 "--directory", str(workspace / "reports")],
                stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True))
            processes.append(subprocess.Popen(
                [dagster, "dev", "-m", "pipelines.definitions", "-h", "127.0.0.1", "-p", str(port)],
                cwd=PACKAGE_ROOT, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True))
        wait_for_http(f"{ui.url}/server_info", processes[1], ui.log, SERVER_START_TIMEOUT_SECONDS)
        wait_for_http(report_url, processes[0], ui.log, 30)
        yield ui
    finally:
        for process in reversed(processes):
            stop_group(process)


@pytest.fixture(scope="session")
def browser():
    if os.environ.get("PROMPTLAB_SKIP_BROWSER") == "1":
        pytest.skip("PROMPTLAB_SKIP_BROWSER=1: the browser tests are off")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: `make install` (it is in the dev extra: pip install -e '.[dev]'), "
                    "or set PROMPTLAB_SKIP_BROWSER=1 to skip the browser tests", pytrace=False)
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (Debian; .ci/run does it), or point "
                    "PROMPTLAB_CHROMIUM at one, or set PROMPTLAB_SKIP_BROWSER=1 to skip the browser tests",
                    pytrace=False)
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()
    finally:
        playwright.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def page(browser, dagster_ui, request):
    """A fresh page of the suite's UI; on failure its screenshot and text go to the artifacts folder."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, base_url=dagster_ui.url)
    context.set_default_timeout(30_000)
    page = context.new_page()
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        stem = ARTIFACTS / request.node.name.replace("/", "_")
        for number, open_page in enumerate(context.pages):
            suffix = f"-{number}" if number else ""
            try:
                open_page.screenshot(path=f"{stem}{suffix}.png", full_page=True)
                Path(f"{stem}{suffix}.txt").write_text(f"{open_page.url}\n\n{open_page.inner_text('body')}")
            except Exception as error:  # a closed or crashed page: say so instead of hiding the test's failure
                Path(f"{stem}{suffix}.txt").write_text(f"no screenshot: {error}")
        (ARTIFACTS / "dagster_dev.log").write_text(dagster_ui.log.read_text()[-200_000:])
    context.close()
