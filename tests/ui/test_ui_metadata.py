"""What the UI shows, checked without a browser: resource settings that explain themselves, the instance settings
the project ships, how jobs execute, the metadata kinds (plots, tables, paths, the report's URL), the one automation
of evaluation_metrics, and a UI guide (docs/ui.md) that names what the UI shows."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import dagster as dg
import pytest
import yaml
from PIL import Image

from models.provenance import PACKAGE_ROOT
from pipelines.metadata import counts_table, curve_plot, curve_table, frame_table, training_curves
from pipelines.resources import PromptLabResource

TEMPLATE = PACKAGE_ROOT / "pipelines" / "dagster_home_template.yaml"
TORCH_ASSETS = {"tiny_clip_backbone", "tiny_diffusion_model", "augmented_images", "pseudolabels",
                "prompt_checkpoints", "evaluation_metrics"}


def definitions():
    from pipelines.definitions import defs

    return defs


def test_every_resource_setting_has_a_description_and_a_default_that_is_not_empty():
    for name, field in PromptLabResource.model_fields.items():
        assert field.description and len(field.description) > 30, name
        assert field.default not in ("", None), f"{name}: default {field.default!r}"


def test_auto_and_default_resolve_as_their_descriptions_say(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(tmp_path / "from-env"))
    resource = PromptLabResource()
    assert resource.workspace().root == tmp_path / "from-env"
    assert resource.backbone_name() == resource.catalog().default_backbone
    assert PromptLabResource(workspace_dir=str(tmp_path / "set")).workspace().root == tmp_path / "set"
    assert PromptLabResource(workspace_dir="").workspace().root == tmp_path / "from-env"  # as before: "" = auto


def test_the_report_link_is_served_over_http_when_make_ui_serves_it(monkeypatch, tmp_path):
    report = tmp_path / "reports" / "report.html"
    monkeypatch.delenv("PROMPTLAB_REPORT_URL", raising=False)
    resource = PromptLabResource(workspace_dir=str(tmp_path))
    assert resource.report_link(report) == report.resolve().as_uri()
    monkeypatch.setenv("PROMPTLAB_REPORT_URL", "http://127.0.0.1:3001/")
    assert resource.report_link(report) == "http://127.0.0.1:3001/report.html"
    chosen = PromptLabResource(workspace_dir=str(tmp_path), report_url="http://lab:8000/reports")
    assert chosen.report_link(report) == "http://lab:8000/reports/report.html"


def test_the_dagster_yaml_template_queues_runs_limits_the_gpu_pool_and_monitors_runs(tmp_path, monkeypatch):
    settings = yaml.safe_load(TEMPLATE.read_text())
    assert settings["telemetry"] == {"enabled": False} and settings["nux"] == {"enabled": False}
    assert settings["concurrency"]["runs"]["max_concurrent_runs"] == 1
    assert settings["concurrency"]["pools"] == {"default_limit": 1, "granularity": "run"}
    assert settings["run_monitoring"]["enabled"] is True
    assert settings["run_monitoring"]["start_timeout_seconds"] > 0
    # Dagster itself accepts it: the instance reads the limits and the monitoring settings
    (tmp_path / "dagster.yaml").write_text(TEMPLATE.read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        assert instance.run_monitoring_enabled
        assert instance.global_op_concurrency_default_limit == 1
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 1


def test_prepare_ui_instance_installs_the_template_and_shows_automation_as_running(tmp_path, monkeypatch):
    from dagster._daemon.asset_daemon import get_auto_materialize_paused

    from pipelines.ui_instance import prepare_ui_instance

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert prepare_ui_instance() == str(tmp_path / "home")
    assert (tmp_path / "home" / "dagster.yaml").read_text() == TEMPLATE.read_text()
    with dg.DagsterInstance.get() as instance:
        assert not get_auto_materialize_paused(instance)  # the job header then says "Auto-materialize on"


def test_every_job_runs_its_steps_in_one_process_and_torch_assets_share_the_gpu_pool():
    defs = definitions()
    jobs = [job for job in defs.resolve_all_job_defs() if not job.name.startswith("__")]
    assert len(jobs) >= 9
    for job in jobs:
        assert job.executor_def is dg.in_process_executor, job.name
    graph = defs.resolve_asset_graph()
    pools = {key.to_user_string(): graph.get(key).pools for key in graph.get_all_asset_keys()}
    for name in TORCH_ASSETS:
        assert pools[name] == {"gpu"}, name


def test_evaluation_has_one_automation_and_its_descriptions_name_it():
    from pipelines.jobs import experiment_job, reevaluation_job
    from pipelines.sensors import checkpoint_evaluation_sensor

    defs = definitions()
    graph = defs.resolve_asset_graph()
    automated = [key.to_user_string() for key in graph.get_all_asset_keys()
                 if graph.get(key).automation_condition is not None]
    assert automated == ["evaluation_metrics"]
    assert checkpoint_evaluation_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert "checkpoint_evaluation_sensor" in graph.get(dg.AssetKey("evaluation_metrics")).description
    assert "checkpoint_evaluation_sensor" in reevaluation_job.description
    assert "evaluation" in experiment_job.description
    assert "experiment_job" in defs.resolve_job_def("few_shot_job").description  # how they differ


def test_curves_are_a_png_plot_and_a_table():
    curves = {"loss": [2.0, 1.5, 1.2], "train accuracy": [0.3, 0.5, 0.6]}
    plot = curve_plot("loss", curves)
    assert isinstance(plot, dg.MarkdownMetadataValue)
    encoded = re.fullmatch(r"!\[loss\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", plot.md_str).group(1)
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert image.format == "PNG" and image.width > 200
    table = curve_table(curves)
    assert isinstance(table, dg.TableMetadataValue)
    assert [record.data for record in table.records] == [
        {"epoch": 1, "loss": 2.0, "train accuracy": 0.3}, {"epoch": 2, "loss": 1.5, "train accuracy": 0.5},
        {"epoch": 3, "loss": 1.2, "train accuracy": 0.6}]
    assert set(training_curves("t", curves)) == {"training_curves", "training_curves_by_epoch"}
    assert training_curves("t", {"loss": []}) == {}


def test_counts_and_frames_are_tables():
    import polars as pl

    composition = counts_table({"labelled": 40, "pseudolabelled": 19})
    assert [record.data for record in composition.records] == [{"part": "labelled", "images": 40},
                                                              {"part": "pseudolabelled", "images": 19}]
    frame = frame_table(pl.DataFrame({"label": [0, 1], "classname": ["a", "b"], "kept": [2, 1],
                                      "mean_similarity": [0.9, 0.8]}))
    assert [column.type for column in frame.schema.columns] == ["int", "string", "int", "float"]


def ui_guide() -> str:
    return (PACKAGE_ROOT / "docs" / "ui.md").read_text()


def test_the_ui_guide_names_every_job_asset_and_check_the_ui_shows():
    defs = definitions()
    section = ui_guide()
    jobs = sorted(job.name for job in defs.resolve_all_job_defs() if not job.name.startswith("__"))
    assert sorted(set(re.findall(r"`(\w+_job)`", section))) == jobs
    assert f"{len(jobs)} jobs" in section
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assert key.to_user_string() in section, key.to_user_string()
    checks = list(graph.asset_check_keys)
    assert f"{len(checks)} blocking" in section
    for check in checks:
        assert check.name in section, check.name
    sensors = [sensor.name for sensor in defs.sensors or []]
    for name in sensors + ["weekly_reevaluation"]:
        assert name in section, name


@pytest.mark.parametrize("target", ["ui", "ui-test"])
def test_the_makefile_serves_the_reports_and_has_a_browser_target(target):
    makefile = (PACKAGE_ROOT / "Makefile").read_text()
    assert re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE)
    assert "pipelines.ui_instance" in makefile and "PROMPTLAB_REPORT_URL" in makefile


def test_ci_installs_chromium_when_missing():
    script = (PACKAGE_ROOT / ".ci" / "run").read_text()
    assert "apt-get install" in script and "chromium" in script and "make test" in script


def test_browser_artifacts_are_not_committed():
    assert (Path(__file__).parent / ".gitignore").read_text().strip() == "artifacts/"
