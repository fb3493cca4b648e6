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


def test_retrain_world_pretrains_the_recipe_through_the_asset_and_compares_with_the_shipped_hash(tmp_path):
    from pipelines.assets.world import pretraining_corpus

    catalog = tmp_path / "catalog"
    shutil.copytree(DEFAULT_CATALOG_DIR, catalog)
    world = yaml.safe_load((catalog / "world.yaml").read_text())
    world["corpus"]["num_pairs"] = 256  # a shortened recipe: the shipped weights came from the full one
    world["tiny_clip"].update(epochs=2, subject_caption_epochs=1, batch_size=128, warmup_steps=1, num_threads=1)
    (catalog / "world.yaml").write_text(yaml.safe_dump(world))
    resource = PromptLabResource(catalog_dir=str(catalog), workspace_dir=str(tmp_path / "workspace"),
                                 retrain_world=True)
    result = dg.materialize([pretraining_corpus, tiny_clip_backbone], resources={"promptlab": resource})
    metadata = {event.asset_key.to_user_string(): event.materialization.metadata
                for event in result.get_asset_materialization_events()}["tiny_clip_backbone"]
    assert metadata["source"].value == "retrained" and metadata["same_as_shipped"].value is False
    assert len(metadata["training_curves_by_epoch"].records) == 2  # one row per epoch (pipelines/metadata.py)
    installed = resource.workspace().tiny_clip_dir / "open_clip_model.safetensors"
    assert sha256_file(installed) == metadata["weights_sha256"].value != SHIPPED["weights_sha256"]


def test_the_cli_switch_asks_the_asset_to_retrain(monkeypatch):
    import os

    import pipelines.cli as cli

    seen = {}

    def fake_run_graph(datasets, experiments, protocol=None, **_):
        seen["retrain"] = PromptLabResource().retrain_world_requested()
        seen["env"] = os.environ.get("PROMPTLAB_RETRAIN_WORLD")
        return {"failures": []}

    monkeypatch.delenv("PROMPTLAB_RETRAIN_WORLD", raising=False)
    monkeypatch.setattr(cli, "run_graph", fake_run_graph)
    assert cli.main(["run", "--retrain-world", "--dataset", "Shapes"]) == 0
    assert seen == {"retrain": True, "env": "1"}
    monkeypatch.delenv("PROMPTLAB_RETRAIN_WORLD", raising=False)
    assert cli.main(["run", "--dataset", "Shapes"]) == 0
    assert seen == {"retrain": False, "env": None}
