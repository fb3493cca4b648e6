"""The weights shipped in the catalog (tiny-clip, the tiny diffusion model) are intact (a fresh clone's file has the
catalog's hash, not a Git LFS pointer), fit the size limit, were made by the recipe and architecture the catalog
states, and say how (seconds, threads); the diffusion folder reloads with diffusers' own `from_pretrained`."""

import dataclasses
import json

import pytest
import yaml

from models.backbones.tiny_clip import EMBEDDED_MODEL_CONFIG_DIR, ClipPretrainConfig
from models.backbones.tiny_diffusion import DiffusionPretrainConfig, unet_architecture
from models.catalog import DEFAULT_CATALOG_DIR
from models.provenance import sha256_file

WORLD = yaml.safe_load((DEFAULT_CATALOG_DIR / "world.yaml").read_text())
MAX_SHIPPED_BYTES = 25 * 1024 * 1024
# world.yaml section of the shipped weights, its recipe section and config class, the weights file in the folder
SHIPPED_MODELS = [
    pytest.param("tiny_clip_weights", "tiny_clip", ClipPretrainConfig, "open_clip_model.safetensors", id="tiny-clip"),
    pytest.param("diffusion_weights", "diffusion", DiffusionPretrainConfig, "unet/diffusion_pytorch_model.safetensors",
                 id="diffusion"),
]


def _folder(section):
    return DEFAULT_CATALOG_DIR / WORLD[section]["folder"]


@pytest.mark.parametrize("section, recipe, config_class, weights", SHIPPED_MODELS)
def test_shipped_weights_have_the_catalog_hash_and_fit_the_limit(section, recipe, config_class, weights):
    assert sha256_file(_folder(section) / weights) == WORLD[section]["weights_sha256"]
    total = sum(path.stat().st_size for path in _folder(section).rglob("*") if path.is_file())
    assert total <= MAX_SHIPPED_BYTES, f"{_folder(section)} holds {total} bytes, over the 25 MB limit"


@pytest.mark.parametrize("section, recipe, config_class, weights", SHIPPED_MODELS)
def test_shipped_weights_were_made_by_the_catalog_recipe(section, recipe, config_class, weights):
    summary = json.loads((_folder(section) / "training_summary.json").read_text())
    recipe_as_json = json.loads(json.dumps(dataclasses.asdict(config_class(**WORLD[recipe]))))  # tuples as lists
    assert summary["config"] == recipe_as_json, (
        f"world.yaml {recipe} is not the recipe the shipped weights were made with")
    assert summary["num_images"] == WORLD["corpus"]["num_pairs"]
    assert summary["weights_sha256"] == WORLD[section]["weights_sha256"]
    assert len(summary["epoch_losses"]) == WORLD[recipe]["epochs"]
    assert summary["seconds"] > 0 and summary["config"]["num_threads"] >= 1


def test_shipped_tiny_clip_is_the_catalog_architecture():
    shipped_cfg = json.loads((_folder("tiny_clip_weights") / "open_clip_config.json").read_text())["model_cfg"]
    assert shipped_cfg == json.loads((EMBEDDED_MODEL_CONFIG_DIR / "tiny-clip.json").read_text())


def test_shipped_diffusion_is_the_recipe_architecture_and_reloads_with_diffusers():
    from diffusers import DDPMPipeline

    recipe = DiffusionPretrainConfig(**WORLD["diffusion"])
    summary = json.loads((_folder("diffusion_weights") / "training_summary.json").read_text())
    assert summary["torch_threads"] == recipe.num_threads and summary["date"]
    pipeline = DDPMPipeline.from_pretrained(_folder("diffusion_weights"))  # the folder alone is the whole model
    expected = {key: list(value) if isinstance(value, tuple) else value
                for key, value in unet_architecture(recipe).items()}
    assert {key: pipeline.unet.config[key] for key in expected} == expected
    assert pipeline.scheduler.config.num_train_timesteps == recipe.num_train_timesteps


@pytest.mark.parametrize("section", ["tiny_clip_weights", "diffusion_weights"])
def test_the_catalog_refuses_a_shipped_section_without_a_proper_hash(tmp_path, section):
    from models.catalog import CatalogError, parse_world

    world = {**WORLD, section: {**WORLD[section], "weights_sha256": "not-a-hash"}}
    (tmp_path / "world.yaml").write_text(yaml.safe_dump(world))
    with pytest.raises(CatalogError, match=f"{section}.*weights_sha256"):
        parse_world(tmp_path / "world.yaml")
