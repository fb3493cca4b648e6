"""What a person does in the Dagster UI, as Playwright steps: open a job's launchpad, pick a partition, launch,
and watch the run page until the run ends."""

from __future__ import annotations

import re
import time

LOCATION = "pipelines.definitions"  # `dagster dev -m pipelines.definitions` names the code location after the module
RUN_STATUSES = ("Success", "Failure", "Canceled")


def dismiss_dialogs(page) -> None:
    """The community dialog the UI shows on a first visit (dagster.yaml `nux: enabled: false` turns it off)."""
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.first.click()


def materialize_all_button(page):
    """The job page's `Materialize all` (`Materialize all…` when a partition must be chosen first, `Materialize`
    for a job of one asset)."""
    return page.locator("button:not([role=menuitem])", has_text=re.compile(r"^\s*Materialize( all…?)?\s*$")).first


def open_job(page, job: str) -> None:
    page.goto(f"/locations/{LOCATION}/jobs/{job}")
    materialize_all_button(page).wait_for()
    dismiss_dialogs(page)


def launch_from_launchpad(page, job: str, partition: str | None = None) -> str:
    """Job page -> Materialize menu -> Open launchpad -> (partition) -> Materialize; returns the run's id."""
    open_job(page, job)
    materialize_all_button(page).locator("xpath=following::button[1]").click()  # the menu beside it
    page.get_by_text("Open launchpad").click()
    launchpad = page.get_by_text("Launchpad (configure assets)")
    confirm = page.get_by_role("button", name="Confirm")  # "upstream assets ... not materialized yet": go ahead
    launchpad.or_(confirm).first.wait_for()
    if confirm.is_visible():
        confirm.click()
    launchpad.wait_for()
    if partition is not None:
        choose_partition(page, partition)
    # the launchpad's own button (a dialog in a portal), not the job page's behind it
    page.locator(".bp5-portal button:not([role=menuitem])", has_text=re.compile(r"^\s*Materialize\s*$")).last.click()
    page.wait_for_url(re.compile(r".*/runs/[0-9a-f-]{36}.*"), timeout=60_000)
    return re.search(r"/runs/([0-9a-f-]{36})", page.url).group(1)


def choose_partition(page, partition: str, attempts: int = 3) -> None:
    """Type the key into the launchpad's Partition box and pick it from the suggestions, as a person does (the box
    is re-rendered once the partition list has loaded, which can swallow the first keystrokes: try again)."""
    tag = page.get_by_text(f"partition: {partition}").first
    for attempt in range(attempts):
        box = page.get_by_placeholder("Partition")
        box.click()
        box.press("Control+a")
        page.keyboard.type(partition, delay=20)
        suggestion = page.locator("li, a, button, [role=menuitem], [role=option]").filter(
            has_text=re.compile(rf"^\s*{re.escape(partition)}\s*$"))
        try:
            suggestion.first.click(timeout=10_000)
            tag.wait_for(timeout=10_000)
            return
        except Exception:  # playwright's TimeoutError: try once more, then let the last wait raise
            if attempt == attempts - 1:
                raise


def run_status(page) -> str:
    """The status tag in the run page's header (Queued, Starting, Started, Success, Failure...)."""
    header = page.locator("text=/^(Queued|Not started|Starting|Started|Success|Failure|Canceling|Canceled)$/")
    return header.first.inner_text() if header.count() else ""


def wait_for_run(page, run_id: str, timeout_seconds: float) -> str:
    """Watch the run page (reloading it now and then) until the run ends; returns its final status."""
    page.goto(f"/runs/{run_id}")
    deadline = time.monotonic() + timeout_seconds
    status = ""
    while time.monotonic() < deadline:
        status = run_status(page)
        if status in RUN_STATUSES:
            return status
        page.wait_for_timeout(3000)
        if int(time.monotonic()) % 30 < 3:
            page.reload()
    raise AssertionError(f"run {run_id} still {status or 'without a status'} after {timeout_seconds:.0f} s")
