"""The default graph installs the shipped tiny-clip and tiny diffusion model (hash checked) instead of pretraining
them; a damaged file stops the asset with its name; augmentation and DiffTPT then generate with the shipped DDPM.
(The micro world of conftest.py drops the shipped tiny-clip, so the full-graph test pretrains its shortened recipe
through the same asset, and installs the shipped diffusion model.)"""

import shutil

import dagster as dg
import pytest
import yaml

from models.catalog import DEFAULT_CATALOG_DIR
from models.provenance import sha256_file
from pipelines.assets.world import tiny_clip_backbone, tiny_diffusion_model
from pipelines.resources import PromptLabResource

WORLD = yaml.safe_load((DEFAULT_CATALOG_DIR / "world.yaml").read_text())
SHIPPED = WORLD["tiny_clip_weights"]
# asset, its world.yaml section, the weights file inside the installed folder, the folder's Workspace property
SHIPPED_MODELS = [
    pytest.param(tiny_clip_backbone, "tiny_clip_weights", "open_clip_model.safetensors", "tiny_clip_dir",
                 id="tiny-clip"),
    pytest.param(tiny_diffusion_model, "diffusion_weights", "unet/diffusion_pytorch_model.safetensors",
                 "diffusion_dir", id="diffusion"),
]


def _materialize(asset, catalog_dir, workspace_dir):
    resource = PromptLabResource(catalog_dir=str(catalog_dir), workspace_dir=str(workspace_dir))
    return dg.materialize([asset], resources={"promptlab": resource}, raise_on_error=False)


@pytest.mark.parametrize("asset, section, weights, folder", SHIPPED_MODELS)
def test_default_graph_installs_the_shipped_weights_and_reuses_them(tmp_path, monkeypatch, asset, section, weights,
                                                                    folder):
    monkeypatch.delenv("PROMPTLAB_RETRAIN_WORLD", raising=False)
    first = _materialize(asset, DEFAULT_CATALOG_DIR, tmp_path / "workspace")
    assert first.success
    metadata = first.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["source"].value == "shipped" and metadata["reused"].value is False
    recipe = {"tiny_clip_weights": "tiny_clip", "diffusion_weights": "diffusion"}[section]
    # the shipped summary's losses, one row per epoch of the recipe
    assert len(metadata["training_curves_by_epoch"].records) == WORLD[recipe]["epochs"]
    installed = getattr(PromptLabResource(workspace_dir=str(tmp_path / "workspace")).workspace(), folder)
    assert sha256_file(installed / weights) == WORLD[section]["weights_sha256"]
    second = _materialize(asset, DEFAULT_CATALOG_DIR, tmp_path / "workspace")
    assert second.get_asset_materialization_events()[0].materialization.metadata["reused"].value is True


@pytest.mark.parametrize("asset, section, weights, folder", SHIPPED_MODELS)
def test_a_wrong_hash_in_the_catalog_stops_the_asset_naming_the_file(tmp_path, monkeypatch, asset, section, weights,
                                                                     folder):
    monkeypatch.delenv("PROMPTLAB_RETRAIN_WORLD", raising=False)
    catalog = tmp_path / "catalog"
    shutil.copytree(DEFAULT_CATALOG_DIR, catalog)
    world = yaml.safe_load((catalog / "world.yaml").read_text())
    world[section]["weights_sha256"] = "0" * 64
    (catalog / "world.yaml").write_text(yaml.safe_dump(world))
    result = _materialize(asset, catalog, tmp_path / "workspace")
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    text = failure.message + "".join(cause.message for cause in [failure.cause] if cause)
    assert f"{weights} has SHA-256" in text and "0" * 64 in text
    assert not getattr(PromptLabResource(workspace_dir=str(tmp_path / "workspace")).workspace(), folder).exists()


def test_augmentation_and_difftpt_generate_with_the_shipped_diffusion_model(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMPTLAB_RETRAIN_WORLD", raising=False)
    assert _materialize(tiny_diffusion_model, DEFAULT_CATALOG_DIR, tmp_path / "workspace").success
    resource = PromptLabResource(catalog_dir=str(DEFAULT_CATALOG_DIR), workspace_dir=str(tmp_path / "workspace"))
    # both assets ask the resource for the catalog's default diffusion backbone, the embedded DDPM
    generator = resource.load_variation_generator()
    assert generator.model.weights_sha256 == WORLD["diffusion_weights"]["weights_sha256"]


def test_retrain_world_pretrains_the_recipes_through_the_assets_and_compares_with_the_shipped_hashes(tmp_path):
    from pipelines.assets.world import pretraining_corpus

    catalog = tmp_path / "catalog"
    shutil.copytree(DEFAULT_CATALOG_DIR, catalog)
    world = yaml.safe_load((catalog / "world.yaml").read_text())
    world["corpus"]["num_pairs"] = 256  # shortened recipes: the shipped weights came from the full ones
    world["tiny_clip"].update(epochs=2, subject_caption_epochs=1, batch_size=128, warmup_steps=1, num_threads=1)
    world["diffusion"].update(epochs=1, batch_size=128, warmup_steps=1, num_threads=1)
    (catalog / "world.yaml").write_text(yaml.safe_dump(world))
    resource = PromptLabResource(catalog_dir=str(catalog), workspace_dir=str(tmp_path / "workspace"),
                                 retrain_world=True)
    result = dg.materialize([pretraining_corpus, tiny_clip_backbone, tiny_diffusion_model],
                            resources={"promptlab": resource})
    metadata = {event.asset_key.to_user_string(): event.materialization.metadata
                for event in result.get_asset_materialization_events()}
    for asset, epochs, installed in (
            ("tiny_clip_backbone", 2, resource.workspace().tiny_clip_dir / "open_clip_model.safetensors"),
            ("tiny_diffusion_model", 1,
             resource.workspace().diffusion_dir / "unet" / "diffusion_pytorch_model.safetensors")):
        assert metadata[asset]["source"].value == "retrained" and metadata[asset]["same_as_shipped"].value is False
        # one row per epoch (pipelines/metadata.py)
        assert len(metadata[asset]["training_curves_by_epoch"].records) == epochs
        assert sha256_file(installed) == metadata[asset]["weights_sha256"].value
    assert metadata["tiny_clip_backbone"]["weights_sha256"].value != SHIPPED["weights_sha256"]
    assert metadata["tiny_diffusion_model"]["weights_sha256"].value != WORLD["diffusion_weights"]["weights_sha256"]


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
