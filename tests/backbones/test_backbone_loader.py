from __future__ import annotations

import hashlib
import shutil
import time

import open_clip
import pytest
import torch
from open_clip.model import build_model_from_openai_state_dict
from open_clip.pretrained import _pcfg
from open_clip.transformer import QuickGELU
from PIL import Image
from safetensors.torch import load_file, save_file

from backbone_toys import TINY_OPENAI_CHECKPOINT
from models.backbones.loader import BackboneSpec, BackboneUnavailableError, LoadedBackbone, load_backbone

CAPTIONS = ["a photo of a tabby cat.", "a photo of a sports car."]


def reference_openai_model() -> torch.nn.Module:
    """The tiny OpenAI-format CLIP loaded as its README prescribes, frozen like the loader's output."""
    state_dict = load_file(str(TINY_OPENAI_CHECKPOINT))
    model = build_model_from_openai_state_dict(state_dict, quick_gelu=True, cast_dtype=None).float().eval()
    return model.requires_grad_(False)


def assert_same_outputs(backbone: LoadedBackbone, reference: torch.nn.Module) -> None:
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = backbone.tokenizer(CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(backbone.model.encode_image(images), reference.encode_image(images),
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(backbone.model.encode_text(tokens), reference.encode_text(tokens),
                                   rtol=0, atol=1e-6)


def test_openai_format_safetensors_loads_frozen_with_its_own_architecture():
    backbone = load_backbone(BackboneSpec(name="tiny-openai", source="checkpoint", path=str(TINY_OPENAI_CHECKPOINT)))
    assert backbone.weights_sha256 == hashlib.sha256(TINY_OPENAI_CHECKPOINT.read_bytes()).hexdigest()
    assert backbone.context_length == 77 and backbone.tokenizer(CAPTIONS).shape == (2, 77)
    assert backbone.model.text_projection.shape == (64, 32)  # README: text width 64, embed_dim 32
    assert not backbone.model.training
    assert all(not parameter.requires_grad for parameter in backbone.model.parameters())
    assert all(parameter.dtype == torch.float32 for parameter in backbone.model.parameters())
    assert backbone.device == torch.device("cpu")
    assert backbone.preprocess_eval(Image.new("RGB", (48, 40), (200, 10, 10))).shape == (3, 32, 32)
    assert_same_outputs(backbone, reference_openai_model())


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_openai_state_dict_as_pt_wrapped_checkpoint_and_torchscript_load_identically(tmp_path):
    reference = reference_openai_model()
    state_dict = load_file(str(TINY_OPENAI_CHECKPOINT))
    torch.save(state_dict, tmp_path / "plain.pt")
    torch.save({"epoch": 3, "state_dict": {f"module.{key}": value for key, value in state_dict.items()}},
               tmp_path / "training_checkpoint.bin")
    torch.jit.save(torch.jit.script(reference), tmp_path / "scripted.pt")
    for filename in ("plain.pt", "training_checkpoint.bin", "scripted.pt"):
        backbone = load_backbone(BackboneSpec(name=filename, source="checkpoint", path=str(tmp_path / filename)))
        assert backbone.weights_sha256 == hashlib.sha256((tmp_path / filename).read_bytes()).hexdigest()
        assert_same_outputs(backbone, reference)


def test_open_clip_state_dict_loads_into_the_named_architecture(tmp_path, micro_clip_name):
    torch.manual_seed(0)
    source = open_clip.create_model(micro_clip_name)
    save_file(source.state_dict(), str(tmp_path / "micro.safetensors"))
    backbone = load_backbone(BackboneSpec(
        name="micro", source="checkpoint", model_name=micro_clip_name, path=str(tmp_path / "micro.safetensors")))
    loaded = backbone.model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in source.state_dict().items())
    assert backbone.context_length == 16


def test_checkpoint_that_does_not_fit_the_named_architecture_names_the_file(micro_clip_name):
    spec = BackboneSpec(name="wrong", source="checkpoint", model_name=micro_clip_name, path=str(TINY_OPENAI_CHECKPOINT))
    with pytest.raises(ValueError, match="tiny_clip_openai.safetensors"):
        load_backbone(spec)


def test_non_openai_state_dict_without_architecture_asks_for_model_name(tmp_path):
    save_file({"text.token_embedding.weight": torch.zeros(4, 2)}, str(tmp_path / "custom.safetensors"))
    with pytest.raises(ValueError, match="model_name"):
        load_backbone(BackboneSpec(name="custom", source="checkpoint", path=str(tmp_path / "custom.safetensors")))


@pytest.mark.parametrize("source", ["checkpoint", "local_dir"])
def test_missing_files_raise_an_error_naming_the_path(tmp_path, source):
    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(BackboneUnavailableError, match=str(missing)):
        load_backbone(BackboneSpec(name="missing", source=source, path=str(missing)))


def test_local_dir_without_weights_or_config_is_refused(tmp_path, trained_micro_clip):
    result, _ = trained_micro_clip
    without_weights = tmp_path / "without_weights"
    shutil.copytree(result.directory, without_weights)
    (without_weights / "open_clip_model.safetensors").unlink()
    with pytest.raises(BackboneUnavailableError, match="no weight file"):
        load_backbone(BackboneSpec(name="broken", source="local_dir", path=str(without_weights)))
    without_config = tmp_path / "without_config"
    shutil.copytree(result.directory, without_config)
    (without_config / "open_clip_config.json").unlink()
    with pytest.raises(BackboneUnavailableError, match="open_clip_config.json missing"):
        load_backbone(BackboneSpec(name="broken", source="local_dir", path=str(without_config)))


def test_uncached_open_clip_tag_fails_fast_naming_model_tag_and_cache(tmp_path):
    spec = BackboneSpec(name="ViT-B-16-openai", source="open_clip", model_name="ViT-B-16", pretrained="openai",
                        cache_dir=str(tmp_path / "empty_cache"))
    started = time.perf_counter()
    with pytest.raises(BackboneUnavailableError) as raised:
        load_backbone(spec)
    assert time.perf_counter() - started < 5  # no network retries
    message = str(raised.value)
    for expected in ("'ViT-B-16'", "'openai'", str(tmp_path / "empty_cache"), "ViT-B-16.pt", "checkpoint"):
        assert expected in message


def test_unknown_open_clip_tag_or_architecture_is_named():
    with pytest.raises(ValueError, match="known tags: .*openai"):
        load_backbone(BackboneSpec(name="x", source="open_clip", model_name="ViT-B-16", pretrained="no_such_tag"))
    with pytest.raises(ValueError, match="no architecture named 'ViT-Q-99'"):
        load_backbone(BackboneSpec(name="x", source="open_clip", model_name="ViT-Q-99", pretrained="openai"))


def test_cached_open_clip_tag_loads_from_the_hub_cache_with_the_tag_preprocessing(
        tmp_path, monkeypatch, trained_micro_clip, micro_clip_name):
    result, _ = trained_micro_clip
    tag_config = _pcfg(hf_hub="promptlab-test/micro-clip/", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, micro_clip_name, {"unit_test": tag_config})
    # The layout huggingface_hub writes: refs/<branch> names the snapshot folder holding the files.
    repo_cache = tmp_path / "hub" / "models--promptlab-test--micro-clip"
    (repo_cache / "refs").mkdir(parents=True)
    (repo_cache / "refs" / "main").write_text("0123abcd")
    (repo_cache / "snapshots" / "0123abcd").mkdir(parents=True)
    shutil.copy(result.directory / "open_clip_model.safetensors", repo_cache / "snapshots" / "0123abcd")

    backbone = load_backbone(BackboneSpec(name="micro-unit-test", source="open_clip", model_name=micro_clip_name,
                                          pretrained="unit_test", cache_dir=str(tmp_path / "hub")))
    assert backbone.weights_sha256 == result.weights_sha256
    assert backbone.model.visual.preprocess_cfg["mean"] == (0.5, 0.5, 0.5)
    pixels = backbone.preprocess_eval(Image.new("RGB", (32, 32), (128, 128, 128)))
    torch.testing.assert_close(pixels, torch.full_like(pixels, (128 / 255 - 0.5) / 0.25))
    reference = load_backbone(BackboneSpec(name="micro", source="local_dir", path=str(result.directory)))
    tokens = backbone.tokenizer(CAPTIONS)
    with torch.no_grad():
        assert torch.equal(backbone.model.encode_text(tokens), reference.model.encode_text(tokens))


def test_cached_url_only_tag_loads_from_the_url_cache(tmp_path, monkeypatch, trained_micro_clip, micro_clip_name):
    result, _ = trained_micro_clip
    tag_config = _pcfg(url="https://example.invalid/weights/micro-clip.safetensors", quick_gelu=True)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, micro_clip_name, {"url_test": tag_config})
    (tmp_path / "clip_cache").mkdir()
    shutil.copy(result.directory / "open_clip_model.safetensors", tmp_path / "clip_cache" / "micro-clip.safetensors")
    backbone = load_backbone(BackboneSpec(name="micro-url", source="open_clip", model_name=micro_clip_name,
                                          pretrained="url_test", cache_dir=str(tmp_path / "clip_cache")))
    assert backbone.weights_sha256 == result.weights_sha256
    # A tag trained with QuickGELU gets it, as OpenAI's weights need.
    assert isinstance(backbone.model.transformer.resblocks[0].mlp.gelu, QuickGELU)


@pytest.mark.parametrize("fields, message", [
    (dict(source="huggingface"), "source must be one of"),
    (dict(source="open_clip", model_name="ViT-B-16"), "needs both model_name and pretrained"),
    (dict(source="checkpoint"), "needs a path"),
    (dict(source="local_dir"), "needs a path"),
])
def test_incomplete_specs_are_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        BackboneSpec(name="bad", **fields)
