"""Session fixtures for the backbone tests: a registered micro CLIP architecture and one short pretraining run."""

from __future__ import annotations

import json

import open_clip
import pytest

from backbone_toys import MICRO_CLIP_CONFIG, MICRO_CLIP_NAME, coloured_squares
from models.backbones.tiny_clip import ClipPretrainConfig, PretrainedBackbone, pretrain_tiny_clip


@pytest.fixture(scope="session")
def micro_clip_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    config_dir = tmp_path_factory.mktemp("model_configs")
    (config_dir / f"{MICRO_CLIP_NAME}.json").write_text(json.dumps(MICRO_CLIP_CONFIG))
    open_clip.add_model_config(config_dir)
    return MICRO_CLIP_NAME


@pytest.fixture(scope="session")
def micro_clip_config(micro_clip_name: str) -> ClipPretrainConfig:
    return ClipPretrainConfig(
        model_name=micro_clip_name, epochs=6, batch_size=64, learning_rate=2e-3, warmup_steps=4, seed=0,
        num_threads=1)


@pytest.fixture(scope="session")
def trained_micro_clip(tmp_path_factory: pytest.TempPathFactory, micro_clip_config: ClipPretrainConfig):
    """(result, epochs reported through on_epoch) of pretraining the micro CLIP on coloured squares."""
    images, captions, _ = coloured_squares(256, seed=0)
    reported: list[tuple[int, float]] = []
    result: PretrainedBackbone = pretrain_tiny_clip(
        images, captions, tmp_path_factory.mktemp("clip") / "micro_clip", micro_clip_config,
        on_epoch=lambda epoch, loss: reported.append((epoch, loss)))
    return result, reported


@pytest.fixture(autouse=True)
def micro_models_on_one_thread(single_torch_thread):
    """Every test here: one torch thread (tests/conftest.py)."""
