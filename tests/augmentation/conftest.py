"""Fixtures of the augmentation tests: tiny Stable Diffusion pipelines saved once per session, a micro embedded DDPM,
and the shipped tiny-clip to score variations with (diffusion_toys.py builds them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffusion_toys import pretrain_micro_ddpm, tiny_pipelines

CATALOG_DIR = Path(__file__).resolve().parents[2] / "assets_catalog"


@pytest.fixture(autouse=True)
def micro_models_on_one_thread(single_torch_thread):
    """Every test here: one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def sd_folders(tmp_path_factory) -> dict[str, Path]:
    """kind -> a save_pretrained folder of that Stable Diffusion pipeline (tiny, random weights)."""
    return tiny_pipelines(tmp_path_factory.mktemp("stable-diffusion"))


@pytest.fixture(scope="session")
def embedded_ddpm_folder(tmp_path_factory) -> Path:
    """The workspace's diffusion folder, as the tiny_diffusion_model asset writes it (micro, one epoch)."""
    return pretrain_micro_ddpm(tmp_path_factory.mktemp("world") / "tiny-diffusion")


@pytest.fixture(scope="session")
def tiny_clip():
    """The shipped tiny-clip (32 px), to score variations against their sources."""
    from models.backbones.loader import BackboneSpec, load_backbone

    folder = CATALOG_DIR / "pretrained" / "tiny-clip"
    return load_backbone(BackboneSpec(name="tiny-clip", source="local_dir", model_name="tiny-clip", path=str(folder)))
