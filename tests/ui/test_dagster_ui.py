"""The Dagster UI in headless Chromium, used as a person would: the asset graph, the launchpad, runs watched until
they end, asset checks, materialization metadata (plots, tables, paths) and the report's link.

`make test` runs the smoke tests (marker `ui`: the graph, the resource's settings, curation with its checks, the
automation header; about a minute and a half). `make ui-test` runs them all (marker `ui_full` as well: the embedded
world, one experiment partition and the report)."""

from __future__ import annotations

import re

import pytest
from micro_catalog import DATASET
from ui_actions import LOCATION, dismiss_dialogs, open_job

pytestmark = pytest.mark.ui

RUN_TIMEOUT_SECONDS = 900  # a loaded 2-core machine; the micro runs take 15-60 s when it is idle


def asset_names() -> list[str]:
    from pipelines.definitions import defs

    return sorted(key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys())


def materialized(dagster_ui, page, job: str, partition: str | None = None) -> str:
    """Launch `job` (on `partition`) from its launchpad once per session and wait for it; later calls reuse the run,
    so every test can name what it needs whatever the order the tests run in."""
    key = (job, partition)
    if key not in dagster_ui.runs:
        from ui_actions import launch_from_launchpad, wait_for_run

        run_id = launch_from_launchpad(page, job, partition)
        dagster_ui.runs[key] = (run_id, wait_for_run(page, run_id, RUN_TIMEOUT_SECONDS))
    run_id, status = dagster_ui.runs[key]
    assert status == "Success", f"{job}[{partition}] run {run_id} ended {status}: see {dagster_ui.url}/runs/{run_id}"
    return run_id


def metadata_value(page, asset: str, key: str):
    """The value cell of one metadata entry on an asset's overview page (its latest materialization)."""
    page.goto(f"/assets/{asset}")
    dismiss_dialogs(page)
    row = page.locator("tr", has=page.locator("td", has_text=re.compile(rf"^\s*{re.escape(key)}\s*$"))).first
    row.wait_for()
    return row.locator(":scope > td").last  # not the cells of a table inside the value


def shows_plot(page, asset: str, key: str = "training_curves") -> tuple[int, int]:
    """Open the markdown entry holding the plot and return the rendered image's size."""
    metadata_value(page, asset, key).get_by_text("[Show Markdown]").click()
    image = page.locator("img[src^='data:image/png']").first
    image.wait_for()
    page.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=image.element_handle())
    return tuple(image.evaluate("image => [image.naturalWidth, image.naturalHeight]"))


# ------------------------------------------------------------------------------------------------- smoke (make test)

def test_the_asset_graph_shows_every_group_and_the_catalog_every_asset(page):
    page.goto("/asset-groups")
    dismiss_dialogs(page)
    for group in ("embedded_world", "curation", "augmentation", "pseudolabels", "training", "evaluation", "report"):
        page.get_by_text(group, exact=True).first.wait_for()
    # the catalog renders only the rows in view: a window tall enough for every asset row
    page.set_viewport_size({"width": 1600, "height": 2400})
    page.goto("/assets")
    for name in asset_names():
        page.get_by_text(name, exact=True).first.wait_for()


def test_every_resource_setting_shows_its_default_and_what_it_means(page):
    from pipelines.resources import PromptLabResource

    page.goto(f"/locations/{LOCATION}/resources/promptlab")
    dismiss_dialogs(page)
    for name, field in PromptLabResource.model_fields.items():
        row = page.locator("tr", has=page.get_by_text(name, exact=True)).first
        row.wait_for()
        assert field.description[:40] in " ".join(row.inner_text().split()), name
        assert '""' not in row.inner_text(), f"{name} shows an empty default"


def test_curation_launched_from_the_launchpad_shows_every_check_result(page, dagster_ui):
    from pipelines.checks import DATASET_EXPECTATIONS, SETTING_EXPECTATIONS

    materialized(dagster_ui, page, "curation_job", DATASET)
    for asset, checks in (("dataset_index", DATASET_EXPECTATIONS), ("learning_setting_splits", SETTING_EXPECTATIONS)):
        page.goto(f"/assets/{asset}?view=checks")
        page.get_by_text(f"Checks ({len(checks)})").wait_for()
        for check in checks:
            page.get_by_placeholder("Filter checks").fill(check)
            entry = page.locator("a, button, div", has_text=re.compile(r"Succeeded|Failed")).filter(
                has_text=check[:12]).last
            entry.wait_for()
            assert "Succeeded" in entry.inner_text(), f"{asset}: {check}: {entry.inner_text()}"
        assert page.get_by_text("details", exact=True).first.is_visible()  # the selected check's metadata


def test_the_job_header_says_what_the_automation_does(page):
    open_job(page, "experiment_job")
    page.get_by_text("Auto-materialize on").wait_for()
    page.goto("/automation")
    link = page.locator("a[href$='/sensors/checkpoint_evaluation_sensor']").first
    link.wait_for()
    # its row's on/off switch (a checkbox drawn as a switch, disabled until the sensor's state has loaded)
    switch = link.locator("xpath=ancestor::div[contains(@class, 'ListItem_listItem')][1]").locator(
        "label[class*=formatSwitch]:not([class*=disabled]) input[type=checkbox]")
    switch.wait_for(state="attached")
    assert switch.is_checked(), "checkpoint_evaluation_sensor is shown stopped"


# ---------------------------------------------------------------------------------------- full (make ui-test)

@pytest.mark.ui_full
def test_the_embedded_world_logs_progress_and_plots_its_losses(page, dagster_ui):
    run_id = materialized(dagster_ui, page, "embedded_world_job")
    page.goto(f"/runs/{run_id}")
    progress = page.get_by_text(re.compile(r"tiny diffusion model epoch 1/2: loss [0-9.]+, \S+ elapsed, about \S+ left"))
    progress.first.wait_for()
    width, height = shows_plot(page, "tiny_diffusion_model")
    assert width > 100 and height > 100
    table = metadata_value(page, "tiny_diffusion_model", "training_curves_by_epoch")
    assert re.search(r"epoch\s+loss", table.inner_text()), table.inner_text()
    path = metadata_value(page, "tiny_diffusion_model", "path").inner_text()
    assert path.strip().startswith(str(dagster_ui.workspace)), path


@pytest.mark.ui_full
def test_an_experiment_partition_shows_its_curves_composition_and_counts(page, dagster_ui):
    materialized(dagster_ui, page, "embedded_world_job")
    materialized(dagster_ui, page, "curation_job", DATASET)
    materialized(dagster_ui, page, "experiment_job", f"{DATASET}|{dagster_ui.experiment}")
    width, _ = shows_plot(page, "prompt_checkpoints")
    assert width > 100
    curves = metadata_value(page, "prompt_checkpoints", "training_curves_by_epoch").inner_text()
    assert re.search(r"epoch\s+loss\s+train accuracy", curves) and re.search(r"\n3\s", curves), curves
    composition = metadata_value(page, "prompt_checkpoints", "composition").inner_text()
    assert re.search(r"labelled\s+\d+", composition) and re.search(r"pseudolabelled\s+\d+", composition)
    checkpoint = metadata_value(page, "prompt_checkpoints", "path").inner_text()
    assert f"experiments/{DATASET}/{dagster_ui.experiment}" in checkpoint
    assert "pseudolabels" in metadata_value(page, "pseudolabels", "pseudolabels_by_class").inner_text()
    assert dagster_ui.experiment in metadata_value(page, "evaluation_metrics", "checkpoint").inner_text()
    materialized(dagster_ui, page, "experiment_job", f"{DATASET}|{dagster_ui.augmented_experiment}")
    assert "kept" in metadata_value(page, "augmented_images", "variations_by_class").inner_text()
    composition = metadata_value(page, "prompt_checkpoints", "composition").inner_text()
    assert re.search(r"augmented\s+\d+", composition), composition


@pytest.mark.ui_full
def test_the_report_asset_links_to_the_html_report(page, dagster_ui):
    materialized(dagster_ui, page, "embedded_world_job")
    materialized(dagster_ui, page, "curation_job", DATASET)
    materialized(dagster_ui, page, "experiment_job", f"{DATASET}|{dagster_ui.experiment}")
    materialized(dagster_ui, page, "report_job")
    link = metadata_value(page, "cross_dataset_report", "report").locator("a").first
    assert link.get_attribute("href") == f"{dagster_ui.report_url}report.html"
    with page.context.expect_page() as opened:
        link.click()
    report = opened.value
    report.wait_for_load_state()
    assert report.title() == "PromptLab report"
    assert DATASET in report.inner_text("body")
