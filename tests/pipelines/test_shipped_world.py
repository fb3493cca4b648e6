"""The default graph installs the shipped tiny-clip (hash checked) instead of pretraining it; a damaged file stops
the asset with its name. (The micro world of conftest.py has no shipped weights, so the full-graph test pretrains
its shortened recipe through the same asset.)"""

import shutil

import dagster as dg
import pytest
import yaml

from models.catalog import DEFAULT_CATALOG_DIR
from models.provenance import sha256_file
from pipelines.assets.world import tiny_clip_backbone
from pipelines.resources import PromptLabResource

SHIPPED = yaml.safe_load((DEFAULT_CATALOG_DIR / "world.yaml").read_text()).get("tiny_clip_weights")
pytestmark = pytest.mark.skipif(SHIPPED is None, reason="the catalog ships no tiny-clip weights")


def _materialize(catalog_dir, workspace_dir):
    resource = PromptLabResource(catalog_dir=str(catalog_dir), workspace_dir=str(workspace_dir))
    return dg.materialize([tiny_clip_backbone], resources={"promptlab": resource}, raise_on_error=False)


def test_default_graph_installs_the_shipped_tiny_clip_and_reuses_it(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMPTLAB_RETRAIN_WORLD", raising=False)
    first = _materialize(DEFAULT_CATALOG_DIR, tmp_path / "workspace")
    assert first.success
    metadata = first.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["source"].value == "shipped" and metadata["reused"].value is False
    installed = PromptLabResource(workspace_dir=str(tmp_path / "workspace")).workspace().tiny_clip_dir
    assert sha256_file(installed / "open_clip_model.safetensors") == SHIPPED["weights_sha256"]
    second = _materialize(DEFAULT_CATALOG_DIR, tmp_path / "workspace")
    assert second.get_asset_materialization_events()[0].materialization.metadata["reused"].value is True


def test_a_wrong_hash_in_the_catalog_stops_the_asset_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMPTLAB_RETRAIN_WORLD", raising=False)
    catalog = tmp_path / "catalog"
    shutil.copytree(DEFAULT_CATALOG_DIR, catalog)
    world = yaml.safe_load((catalog / "world.yaml").read_text())
    world["tiny_clip_weights"]["weights_sha256"] = "0" * 64
    (catalog / "world.yaml").write_text(yaml.safe_dump(world))
    result = _materialize(catalog, tmp_path / "workspace")
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    text = failure.message + "".join(cause.message for cause in [failure.cause] if cause)
    assert "open_clip_model.safetensors has SHA-256" in text and "0" * 64 in text
    assert not (tmp_path / "workspace" / "world" / "tiny-clip").exists()
