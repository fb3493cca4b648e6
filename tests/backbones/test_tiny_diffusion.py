from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, UNet2DModel

from backbone_toys import coloured_squares
from models.backbones.shipped_weights import ShippedWeightsError
from models.backbones.tiny_diffusion import (
    DiffusionPretrainConfig, generate_variations, install_shipped_diffusion, load_diffusion, pretrain_diffusion)
from models.provenance import sha256_file

MICRO_DIFFUSION = DiffusionPretrainConfig(
    sample_size=16,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
    epochs=4,
    batch_size=16,
    learning_rate=5e-3,
    warmup_steps=4,
    num_train_timesteps=100,
    num_threads=1,  # micro models: one thread is fastest, and robust when other jobs share the cores
)


def source_images(count: int = 3) -> torch.Tensor:
    images, _, _ = coloured_squares(count, seed=9, size=16)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def trained_diffusion(tmp_path_factory):
    images, _, _ = coloured_squares(192, seed=0, size=16)
    reported = []
    result = pretrain_diffusion(images, tmp_path_factory.mktemp("diffusion") / "model", MICRO_DIFFUSION,
                                on_epoch=lambda epoch, loss: reported.append((epoch, loss)))
    return result, reported


def test_training_lowers_the_noise_prediction_loss(trained_diffusion):
    result, reported = trained_diffusion
    assert [epoch for epoch, _ in reported] == [1, 2, 3, 4]
    assert [loss for _, loss in reported] == result.epoch_losses
    assert result.epoch_losses[-1] < 0.7 * result.epoch_losses[0]


def test_saved_folder_is_a_diffusers_pipeline(trained_diffusion):
    result, _ = trained_diffusion
    folder = result.directory
    for relative in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                     "scheduler/scheduler_config.json", "training_summary.json"):
        assert (folder / relative).is_file(), relative
    assert result.weights_sha256 == sha256_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    summary = json.loads((folder / "training_summary.json").read_text())
    assert summary["epoch_losses"] == result.epoch_losses
    # how the bits were made, for whoever retrains shipped weights and compares
    assert summary["torch_threads"] == 1 and summary["date"][:2] == "20"
    assert set(summary["versions"]) == {"torch", "diffusers"}

    pipeline = DDPMPipeline.from_pretrained(folder)
    unet = UNet2DModel.from_pretrained(folder, subfolder="unet")
    model = load_diffusion(folder)
    assert isinstance(model.scheduler, DDIMScheduler)
    assert model.scheduler.config.num_train_timesteps == 100
    assert model.sample_size == 16 and model.weights_sha256 == result.weights_sha256
    loaded = model.unet.state_dict()
    for other in (pipeline.unet, unet):
        assert all(torch.equal(loaded[key], value) for key, value in other.state_dict().items())


def test_same_seed_gives_identical_weights(tmp_path):
    images, _, _ = coloured_squares(32, seed=1, size=16)
    config = dataclasses.replace(MICRO_DIFFUSION, epochs=1, batch_size=16)
    first = pretrain_diffusion(images, tmp_path / "first", config)
    second = pretrain_diffusion(images, tmp_path / "second", config)
    other = pretrain_diffusion(images, tmp_path / "other", dataclasses.replace(config, seed=1))
    assert first.weights_sha256 == second.weights_sha256 and first.epoch_losses == second.epoch_losses
    assert other.weights_sha256 != first.weights_sha256


def test_strength_zero_returns_the_inputs(trained_diffusion):
    model = load_diffusion(trained_diffusion[0].directory)
    images = source_images()
    variations = generate_variations(model, images, strength=0.0, num_variations=2, seed=0)
    assert variations.shape == (3, 2, 3, 16, 16)
    assert torch.equal(variations, images[:, None].expand_as(variations))


def test_variations_are_seeded_bounded_and_differ_from_the_source(trained_diffusion):
    model = load_diffusion(trained_diffusion[0].directory)
    images = source_images()
    first = generate_variations(model, images, strength=0.6, num_variations=2, seed=7, num_inference_steps=10,
                                batch_size=4)
    again = generate_variations(model, images, strength=0.6, num_variations=2, seed=7, num_inference_steps=10,
                                batch_size=4)
    other_seed = generate_variations(model, images, strength=0.6, num_variations=2, seed=8, num_inference_steps=10,
                                     batch_size=4)
    one_batch = generate_variations(model, images, strength=0.6, num_variations=2, seed=7, num_inference_steps=10,
                                    batch_size=64)
    assert first.shape == (3, 2, 3, 16, 16)
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, again)
    assert not torch.equal(first, other_seed)
    assert not torch.equal(first[:, 0], first[:, 1])  # each variation draws its own noise
    torch.testing.assert_close(first, one_batch, rtol=0, atol=1e-4)  # batching only changes rounding
    assert (first - images[:, None]).abs().mean() > 0.01


def test_bad_requests_are_rejected(trained_diffusion, tmp_path):
    model = load_diffusion(trained_diffusion[0].directory)
    with pytest.raises(ValueError, match="strength"):
        generate_variations(model, source_images(), strength=1.5, num_variations=1, seed=0)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        generate_variations(model, source_images()[:, 0], strength=0.5, num_variations=1, seed=0)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        load_diffusion(tmp_path / "absent")
    incomplete = tmp_path / "incomplete"
    shutil.copytree(trained_diffusion[0].directory, incomplete)
    (incomplete / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        load_diffusion(incomplete)


def test_inconsistent_configs_are_rejected():
    with pytest.raises(ValueError, match="norm_num_groups"):
        DiffusionPretrainConfig(block_out_channels=(12, 16, 16), norm_num_groups=8)
    with pytest.raises(ValueError, match="down_block_types"):
        DiffusionPretrainConfig(block_out_channels=(16, 32))


def _shipped_copy(trained_diffusion, tmp_path):
    shipped = tmp_path / "shipped"
    shutil.copytree(trained_diffusion[0].directory, shipped)
    return shipped, trained_diffusion[0].weights_sha256


def test_shipped_diffusion_installs_when_its_hash_matches_and_loads_as_trained(trained_diffusion, tmp_path):
    shipped, sha256 = _shipped_copy(trained_diffusion, tmp_path)
    installed = install_shipped_diffusion(shipped, sha256, tmp_path / "workspace" / "diffusion", MICRO_DIFFUSION)
    assert installed.weights_sha256 == sha256 and installed.epoch_losses == trained_diffusion[0].epoch_losses
    assert load_diffusion(installed.directory).weights_sha256 == sha256
    assert DDPMPipeline.from_pretrained(installed.directory).unet.config.block_out_channels == [8, 16]


@pytest.mark.parametrize("damage, message", [
    ("flip_byte", "diffusion_pytorch_model.safetensors has SHA-256"),
    ("lfs_pointer", "diffusion_pytorch_model.safetensors has SHA-256"),
    ("drop_scheduler", "file missing: .*scheduler_config.json"),
    ("other_recipe", r"another architecture .*\['block_out_channels', 'norm_num_groups'\]"),
])
def test_damaged_shipped_diffusion_is_refused_and_leaves_the_installed_one(trained_diffusion, tmp_path, damage,
                                                                            message):
    shipped, sha256 = _shipped_copy(trained_diffusion, tmp_path)
    target = tmp_path / "workspace" / "diffusion"
    install_shipped_diffusion(shipped, sha256, target, MICRO_DIFFUSION)
    weights = shipped / "unet" / "diffusion_pytorch_model.safetensors"
    recipe = MICRO_DIFFUSION
    if damage == "flip_byte":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "lfs_pointer":
        weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + sha256 + "\nsize 1\n")
    elif damage == "drop_scheduler":
        (shipped / "scheduler" / "scheduler_config.json").unlink()
    else:  # the catalog's recipe changed its widths after the weights were shipped
        recipe = dataclasses.replace(MICRO_DIFFUSION, block_out_channels=(16, 16), norm_num_groups=8)
    with pytest.raises(ShippedWeightsError, match=message) as error:
        install_shipped_diffusion(shipped, sha256, target, recipe)
    assert str(shipped) in str(error.value)
    assert sha256_file(target / "unet" / "diffusion_pytorch_model.safetensors") == sha256
