"""The tiny-clip weights shipped in the catalog are intact (a fresh clone's file has the catalog's hash, not a Git LFS
pointer), fit the size limit, and were made by the recipe and architecture the catalog states."""

import dataclasses
import json

import pytest
import yaml

from models.backbones.tiny_clip import EMBEDDED_MODEL_CONFIG_DIR, ClipPretrainConfig
from models.catalog import DEFAULT_CATALOG_DIR
from models.provenance import sha256_file

WORLD = yaml.safe_load((DEFAULT_CATALOG_DIR / "world.yaml").read_text())
SHIPPED = WORLD.get("tiny_clip_weights")
pytestmark = pytest.mark.skipif(SHIPPED is None, reason="the catalog ships no tiny-clip weights")
MAX_SHIPPED_BYTES = 25 * 1024 * 1024


def _folder():
    return DEFAULT_CATALOG_DIR / SHIPPED["folder"]


def test_shipped_weights_have_the_catalog_hash_and_fit_the_limit():
    weights = _folder() / "open_clip_model.safetensors"
    assert sha256_file(weights) == SHIPPED["weights_sha256"]
    total = sum(path.stat().st_size for path in _folder().iterdir())
    assert total <= MAX_SHIPPED_BYTES, f"{_folder()} holds {total} bytes, over the 25 MB limit"


def test_shipped_weights_were_made_by_the_catalog_recipe_and_architecture():
    summary = json.loads((_folder() / "training_summary.json").read_text())
    recipe = dataclasses.asdict(ClipPretrainConfig(**WORLD["tiny_clip"]))
    assert summary["config"] == recipe, "world.yaml tiny_clip is not the recipe the shipped weights were made with"
    assert summary["num_images"] == WORLD["corpus"]["num_pairs"]
    assert summary["weights_sha256"] == SHIPPED["weights_sha256"]
    assert len(summary["epoch_losses"]) == WORLD["tiny_clip"]["epochs"]
    shipped_cfg = json.loads((_folder() / "open_clip_config.json").read_text())["model_cfg"]
    assert shipped_cfg == json.loads((EMBEDDED_MODEL_CONFIG_DIR / "tiny-clip.json").read_text())
