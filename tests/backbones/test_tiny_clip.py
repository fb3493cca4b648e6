from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import open_clip
import pytest
import torch

from backbone_toys import COLOURS, coloured_squares, normalized_pixels
from models.backbones.loader import BackboneSpec, load_backbone
from models.backbones.tiny_clip import (
    EMBEDDED_MODEL_CONFIG_DIR, WEIGHTS_FILENAME, ClipPretrainConfig, ShippedWeightsError, install_shipped_weights,
    pretrain_tiny_clip, register_embedded_model_configs)
from models.provenance import sha256_file


def test_tiny_clip_architecture_comes_from_the_catalog_json():
    register_embedded_model_configs()
    register_embedded_model_configs()  # idempotent
    catalog = json.loads((EMBEDDED_MODEL_CONFIG_DIR / "tiny-clip.json").read_text())
    assert open_clip.list_models().count("tiny-clip") == 1
    model = open_clip.create_model("tiny-clip")
    assert model.visual.image_size == (catalog["vision_cfg"]["image_size"],) * 2
    assert model.text_projection.shape == (catalog["text_cfg"]["width"], catalog["embed_dim"])
    assert model.context_length == catalog["text_cfg"]["context_length"]
    tokens = open_clip.get_tokenizer("tiny-clip")(["a red square"])
    assert tokens.shape == (1, catalog["text_cfg"]["context_length"])


def test_pretraining_lowers_the_loss_and_reports_every_epoch(trained_micro_clip, micro_clip_config):
    result, reported = trained_micro_clip
    assert [epoch for epoch, _ in reported] == list(range(1, micro_clip_config.epochs + 1))
    assert [loss for _, loss in reported] == result.epoch_losses
    assert result.epoch_losses[-1] < result.epoch_losses[0] - 0.5


def test_pretrained_model_classifies_unseen_colours_zero_shot(trained_micro_clip):
    result, _ = trained_micro_clip
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{result.directory}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{result.directory}")
    images, _, labels = coloured_squares(200, seed=123)
    with torch.no_grad():
        image_features = model.encode_image(normalized_pixels(images), normalize=True)
        text_features = model.encode_text(tokenizer([f"a {name} square" for name in COLOURS]), normalize=True)
    accuracy = ((image_features @ text_features.T).argmax(dim=1).numpy() == labels).mean()
    assert accuracy >= 0.75  # chance is 0.25


def test_saved_folder_is_an_open_clip_local_dir_and_loads_through_the_loader(trained_micro_clip, micro_clip_name):
    result, _ = trained_micro_clip
    folder = result.directory
    assert sorted(path.name for path in folder.iterdir()) == [
        "open_clip_config.json", "open_clip_model.safetensors", "training_summary.json"]
    saved_config = json.loads((folder / "open_clip_config.json").read_text())
    assert saved_config["model_cfg"] == open_clip.get_model_config(micro_clip_name)
    assert saved_config["preprocess_cfg"]["size"] == 32
    summary = json.loads((folder / "training_summary.json").read_text())
    assert summary["epoch_losses"] == result.epoch_losses and summary["weights_sha256"] == result.weights_sha256
    assert result.weights_sha256 == sha256_file(folder / "open_clip_model.safetensors")
    assert [path.name for path in folder.parent.iterdir()] == [folder.name]  # no staging folders left

    backbone = load_backbone(BackboneSpec(name="micro", source="local_dir", path=str(folder)))
    assert backbone.weights_sha256 == result.weights_sha256
    assert backbone.context_length == 16
    reference, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    reference.requires_grad_(False)
    images, captions, _ = coloured_squares(4, seed=5)
    with torch.no_grad():
        assert torch.equal(backbone.model.encode_image(normalized_pixels(images)),
                           reference.eval().encode_image(normalized_pixels(images)))
        assert torch.equal(backbone.model.encode_text(backbone.tokenizer(captions)),
                           reference.encode_text(backbone.tokenizer(captions)))


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tmp_path, micro_clip_config):
    images, captions, _ = coloured_squares(64, seed=1)
    config = dataclasses.replace(micro_clip_config, epochs=1, batch_size=32)
    first = pretrain_tiny_clip(images, captions, tmp_path / "first", config)
    second = pretrain_tiny_clip(images, captions, tmp_path / "second", config)
    other = pretrain_tiny_clip(images, captions, tmp_path / "other", dataclasses.replace(config, seed=1))
    assert first.weights_sha256 == second.weights_sha256
    assert first.epoch_losses == second.epoch_losses
    assert other.weights_sha256 != first.weights_sha256


def test_retraining_replaces_the_folder_and_augmentation_runs(tmp_path, micro_clip_config):
    images, captions, _ = coloured_squares(32, seed=2)
    output_dir = tmp_path / "model"
    output_dir.mkdir()
    (output_dir / "stale.txt").write_text("from an older run")
    config = dataclasses.replace(
        micro_clip_config, epochs=1, batch_size=16, horizontal_flip=True, random_shift_pixels=2)
    result = pretrain_tiny_clip(images, captions, output_dir, config)
    assert not (output_dir / "stale.txt").exists()
    assert np.isfinite(result.epoch_losses).all()
    assert [path.name for path in tmp_path.iterdir()] == ["model"]


@pytest.mark.parametrize("change, message", [
    (lambda images, captions: (images, captions[:-1]), "captions"),
    (lambda images, captions: (images[:, :16, :16], captions), "expects 32x32"),
    (lambda images, captions: (images.astype(np.float32), captions), "uint8"),
    (lambda images, captions: (images, captions[:-1] + [""]), "row 7"),
])
def test_bad_corpus_is_rejected_with_a_clear_message(tmp_path, micro_clip_config, change, message):
    images, captions = change(*coloured_squares(8, seed=3)[:2])
    with pytest.raises(ValueError, match=message):
        pretrain_tiny_clip(images, captions, tmp_path / "model", micro_clip_config)
    assert not (tmp_path / "model").exists()


def test_unknown_architecture_is_rejected(tmp_path):
    images, captions, _ = coloured_squares(8, seed=3)
    with pytest.raises(ValueError, match="no-such-clip"):
        pretrain_tiny_clip(images, captions, tmp_path / "model", ClipPretrainConfig(model_name="no-such-clip"))


def test_curriculum_epochs_train_on_the_subject_captions_then_on_the_full_ones(tmp_path, micro_clip_config):
    images, colour_captions, _ = coloured_squares(64, seed=4)
    full_captions = [f"{caption} on a grey background" for caption in colour_captions]
    config = dataclasses.replace(micro_clip_config, epochs=2, batch_size=32)
    on_subjects = pretrain_tiny_clip(images, colour_captions, tmp_path / "subjects", config)
    on_full = pretrain_tiny_clip(images, full_captions, tmp_path / "full", config)
    curriculum = pretrain_tiny_clip(images, full_captions, tmp_path / "curriculum",
                                    dataclasses.replace(config, subject_caption_epochs=1),
                                    subject_captions=colour_captions)
    all_subjects = pretrain_tiny_clip(images, full_captions, tmp_path / "all_subjects",
                                      dataclasses.replace(config, subject_caption_epochs=2),
                                      subject_captions=colour_captions)
    assert curriculum.epoch_losses[0] == on_subjects.epoch_losses[0] != on_full.epoch_losses[0]
    assert curriculum.epoch_losses[1] not in (on_subjects.epoch_losses[1], on_full.epoch_losses[1])
    assert all_subjects.weights_sha256 == on_subjects.weights_sha256
    with pytest.raises(ValueError, match="subject_captions"):
        pretrain_tiny_clip(images, full_captions, tmp_path / "missing",
                           dataclasses.replace(config, subject_caption_epochs=1))


def test_family_batches_keep_each_family_together(tmp_path, micro_clip_config):
    from models.backbones.tiny_clip import _epoch_order, _family_rows

    families = np.repeat(np.arange(12), 4)[np.random.default_rng(0).permutation(48)]  # rows of a family scattered
    rows = _family_rows(families, 48)
    order = _epoch_order(rows, torch.Generator().manual_seed(0)).numpy()
    assert sorted(order.tolist()) == list(range(48))
    in_order = families[order]
    assert all(len(set(in_order[start:start + 4])) == 1 for start in range(0, 48, 4))
    assert len({tuple(_epoch_order(rows, torch.Generator().manual_seed(seed)).tolist()) for seed in range(3)}) == 3
    images, captions, _ = coloured_squares(48, seed=5)
    with pytest.raises(ValueError, match="one id per pair"):
        pretrain_tiny_clip(images, captions, tmp_path / "model", micro_clip_config, families=families[:10])
    result = pretrain_tiny_clip(images, captions, tmp_path / "model", dataclasses.replace(
        micro_clip_config, epochs=1, batch_size=16), families=families)
    assert np.isfinite(result.epoch_losses).all()


def _shipped_copy(trained_micro_clip, tmp_path):
    result, _ = trained_micro_clip
    shipped = tmp_path / "shipped"
    shutil.copytree(result.directory, shipped)
    return shipped, result.weights_sha256


def test_shipped_weights_install_when_their_hash_matches(trained_micro_clip, micro_clip_name, tmp_path):
    shipped, sha256 = _shipped_copy(trained_micro_clip, tmp_path)
    installed = install_shipped_weights(shipped, sha256, tmp_path / "workspace" / "tiny-clip", micro_clip_name)
    assert installed.weights_sha256 == sha256
    assert sha256_file(installed.directory / WEIGHTS_FILENAME) == sha256
    assert installed.epoch_losses == trained_micro_clip[0].epoch_losses
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{installed.directory}")
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("damage, message", [
    ("flip_byte", "has SHA-256"),
    ("lfs_pointer", "has SHA-256"),
    ("drop_summary", "file missing"),
    ("other_architecture", "another architecture"),
])
def test_damaged_shipped_weights_are_refused_and_leave_the_installed_ones(
        trained_micro_clip, micro_clip_name, tmp_path, damage, message):
    shipped, sha256 = _shipped_copy(trained_micro_clip, tmp_path)
    target = tmp_path / "workspace" / "tiny-clip"
    install_shipped_weights(shipped, sha256, target, micro_clip_name)
    before = sha256_file(target / WEIGHTS_FILENAME)
    weights = shipped / WEIGHTS_FILENAME
    if damage == "flip_byte":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "lfs_pointer":
        weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + sha256 + "\nsize 1\n")
    elif damage == "drop_summary":
        (shipped / "training_summary.json").unlink()
    else:
        config = json.loads((shipped / "open_clip_config.json").read_text())
        config["model_cfg"]["embed_dim"] += 1
        (shipped / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ShippedWeightsError, match=message) as error:
        install_shipped_weights(shipped, sha256, target, micro_clip_name)
    assert str(shipped) in str(error.value)
    assert sha256_file(target / WEIGHTS_FILENAME) == before
