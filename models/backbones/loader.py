"""One entry point that turns a catalog backbone entry into a frozen CLIP model, its transforms and tokenizer.

Three sources, all offline:
- "open_clip": an open_clip architecture name and pretrained tag, read from open_clip's download cache only (the
  HF hub cache, or the URL cache for URL-only tags). Nothing is downloaded: a missing file fails at once.
- "checkpoint": a local weight file. With `model_name`, the state dict of that open_clip architecture; without
  it, an OpenAI-format CLIP state dict or TorchScript file whose architecture is read from the weights.
- "local_dir": a folder in open_clip's `local-dir:` layout (open_clip_config.json + open_clip_model.safetensors),
  which is how the embedded tiny CLIP is saved.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.model import build_model_from_openai_state_dict, set_model_preprocess_cfg
from open_clip.transform import PreprocessCfg, image_transform_v2
from safetensors.torch import load_file

from models.provenance import sha256_file
from models.backbones.tiny_clip import CONFIG_FILENAME, register_embedded_model_configs

SOURCES = ("open_clip", "checkpoint", "local_dir")
# Keys every OpenAI-layout CLIP state dict has at top level; open_clip's CustomTextCLIP nests text keys under "text.".
OPENAI_LAYOUT_KEYS = ("text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight")
# OpenAI's TorchScript archives store these as attributes next to the weights; TorchScript also lists open_clip's
# non-persistent attention-mask buffer, which a state dict never holds.
TORCHSCRIPT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


class BackboneUnavailableError(RuntimeError):
    """The weights a backbone spec names are not on this machine (never downloaded, or the file is missing)."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str  # catalog name, e.g. "tiny-clip", "ViT-B-16-openai"
    source: str  # "open_clip", "checkpoint" or "local_dir"
    model_name: str | None = None  # open_clip architecture name, e.g. "ViT-B-16" or "tiny-clip"
    pretrained: str | None = None  # open_clip pretrained tag, e.g. "openai"
    path: str | None = None  # checkpoint file or local_dir folder
    cache_dir: str | None = None  # open_clip cache dir (default: open_clip's / the HF hub's default)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"backbone {self.name!r}: source must be one of {SOURCES}, got {self.source!r}")
        if self.source == "open_clip" and not (self.model_name and self.pretrained):
            raise ValueError(
                f"backbone {self.name!r}: source 'open_clip' needs both model_name and pretrained (a tag); "
                "for a local weight file use source 'checkpoint'")
        if self.source in ("checkpoint", "local_dir") and not self.path:
            raise ValueError(f"backbone {self.name!r}: source {self.source!r} needs a path")


@dataclass
class LoadedBackbone:
    model: torch.nn.Module  # eval mode, every parameter frozen
    preprocess_train: Callable[[Any], torch.Tensor]
    preprocess_eval: Callable[[Any], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    spec: BackboneSpec
    weights_sha256: str  # sha256 of the weight file bytes actually loaded
    device: torch.device
    context_length: int


def load_backbone(spec: BackboneSpec, device: str | torch.device = "cpu") -> LoadedBackbone:
    """Load a frozen CLIP backbone from the source its spec names, without touching the network."""
    register_embedded_model_configs()
    device = torch.device(device)
    if spec.source == "open_clip":
        model, preprocess_train, preprocess_eval, tokenizer, weights_path = _load_open_clip_tag(spec)
    elif spec.source == "checkpoint":
        model, preprocess_train, preprocess_eval, tokenizer, weights_path = _load_checkpoint_file(spec)
    else:
        model, preprocess_train, preprocess_eval, tokenizer, weights_path = _load_local_dir(spec)
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return LoadedBackbone(
        model=model,
        preprocess_train=preprocess_train,
        preprocess_eval=preprocess_eval,
        tokenizer=tokenizer,
        spec=spec,
        weights_sha256=sha256_file(weights_path),
        device=device,
        context_length=int(model.context_length),
    )


def find_cached_open_clip_weights(model_name: str, pretrained: str, cache_dir: str | None = None) -> Path | None:
    """Where open_clip's download of (model_name, tag) already lies on disk, or None. Never uses the network."""
    pretrained_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    for candidate in _cache_candidates(pretrained_cfg, cache_dir):
        if candidate.is_file():
            return candidate
    return None


def _load_open_clip_tag(spec: BackboneSpec):
    model_name = spec.model_name.replace("/", "-")  # open_clip accepts "ViT-B/16" for "ViT-B-16"
    if model_name not in open_clip.list_models():
        raise ValueError(f"backbone {spec.name!r}: open_clip has no architecture named {model_name!r}")
    pretrained_cfg = open_clip.get_pretrained_cfg(model_name, spec.pretrained)
    if not pretrained_cfg:
        known = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(
            f"backbone {spec.name!r}: open_clip has no pretrained tag {spec.pretrained!r} for {model_name!r}; "
            f"known tags: {known}")
    weights_path = find_cached_open_clip_weights(model_name, spec.pretrained, spec.cache_dir)
    if weights_path is None:
        expected = "\n  ".join(str(path) for path in _cache_candidates(pretrained_cfg, spec.cache_dir))
        raise BackboneUnavailableError(
            f"backbone {spec.name!r}: weights for open_clip model {model_name!r} with pretrained tag "
            f"{spec.pretrained!r} are not in the cache ({_cache_root_description(pretrained_cfg, spec.cache_dir)}) "
            f"and this project never downloads. Provide them by copying the file to one of:\n  {expected}\n"
            "(an HF hub cache entry also needs refs/main holding the <revision> name: copy the whole models--... "
            "folder from a machine that downloaded it), or point the catalog entry at a local file "
            "(source 'checkpoint' with model_name and path).")
    # Passing the cached file (not the tag) keeps open_clip from asking the hub whether a newer copy exists, so
    # the tag's preprocessing is passed explicitly. Tags trained with QuickGELU (OpenAI's) get it: open_clip
    # would only warn about the mismatch and run plain GELU.
    model, preprocess_train, preprocess_eval = open_clip.create_model_and_transforms(
        model_name,
        pretrained=str(weights_path),
        image_mean=pretrained_cfg.get("mean"),
        image_std=pretrained_cfg.get("std"),
        image_interpolation=pretrained_cfg.get("interpolation"),
        image_resize_mode=pretrained_cfg.get("resize_mode"),
        force_quick_gelu=bool(pretrained_cfg.get("quick_gelu", False)),
    )
    return model, preprocess_train, preprocess_eval, open_clip.get_tokenizer(model_name), weights_path


def _cache_candidates(pretrained_cfg: dict, cache_dir: str | None) -> list[Path]:
    """The files open_clip's `download_pretrained` would have written for this tag, most preferred first."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    candidates: list[Path] = []
    hub_location = pretrained_cfg.get("hf_hub", "")
    if hub_location:
        repo_id, filename = os.path.split(hub_location)
        filenames = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if filename.endswith((".bin", ".pth")):
            filenames.insert(0, filename[:-4] + ".safetensors")  # open_clip prefers a safetensors twin
        for name in filenames:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str):
                candidates.append(Path(found))
            else:
                repo_folder = Path(cache_dir or HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
                candidates.append(repo_folder / "snapshots" / "<revision>" / name)
    url = pretrained_cfg.get("url", "")
    if url:
        url_root = Path(cache_dir) if cache_dir else Path("~/.cache/clip").expanduser()
        candidates.append(url_root / os.path.basename(url))
    return candidates


def _cache_root_description(pretrained_cfg: dict, cache_dir: str | None) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    roots = []
    if pretrained_cfg.get("hf_hub"):
        roots.append(f"HF hub cache {cache_dir or HF_HUB_CACHE}")
    if pretrained_cfg.get("url"):
        roots.append(f"open_clip URL cache {cache_dir or Path('~/.cache/clip').expanduser()}")
    return "; ".join(roots) or "no download location known"


def _load_checkpoint_file(spec: BackboneSpec):
    weights_path = Path(spec.path)
    if not weights_path.is_file():
        raise BackboneUnavailableError(f"backbone {spec.name!r}: checkpoint file not found: {weights_path}")
    if spec.model_name:
        return _load_checkpoint_for_architecture(spec, weights_path)
    state_dict = _read_state_dict(weights_path)
    if not all(key in state_dict for key in OPENAI_LAYOUT_KEYS) or not (
            "visual.proj" in state_dict or "visual.attnpool.positional_embedding" in state_dict):
        raise ValueError(
            f"backbone {spec.name!r}: checkpoint {weights_path} is not an OpenAI-format CLIP state dict (top-level "
            f"'visual.proj' and {OPENAI_LAYOUT_KEYS}); give the open_clip architecture as model_name")
    # OpenAI's own activation; the builder rounds weights through fp16, so reload them in fp32 afterwards.
    model = build_model_from_openai_state_dict(dict(state_dict), quick_gelu=True, cast_dtype=None).float()
    model.load_state_dict(state_dict, strict=True)
    preprocess_cfg = PreprocessCfg(size=model.visual.image_size)
    set_model_preprocess_cfg(model, asdict(preprocess_cfg))
    tokenizer = open_clip.SimpleTokenizer(context_length=model.context_length)
    preprocess_train = image_transform_v2(preprocess_cfg, is_train=True)
    preprocess_eval = image_transform_v2(preprocess_cfg, is_train=False)
    return model, preprocess_train, preprocess_eval, tokenizer, weights_path


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors / .pt / .bin state dict, an open_clip training checkpoint, or a TorchScript file."""
    if path.suffix == ".safetensors":
        state_dict = load_file(str(path), device="cpu")
    elif _is_torchscript_archive(path):
        state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
        for key in TORCHSCRIPT_EXTRA_KEYS:
            state_dict.pop(key, None)
    else:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"cannot read checkpoint {path} as a torch state dict: {error}") from error
        if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
            state_dict = state_dict["state_dict"]  # open_clip training checkpoints wrap the weights
    if not isinstance(state_dict, dict) or not state_dict:
        raise ValueError(f"checkpoint {path} holds no state dict")
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def _load_checkpoint_for_architecture(spec: BackboneSpec, weights_path: Path):
    """A state dict for a named open_clip architecture, loaded strictly."""
    if _is_torchscript_archive(weights_path):
        # open_clip's own reader refuses TorchScript under weights_only, so read the tensors here.
        model, preprocess_train, preprocess_eval = open_clip.create_model_and_transforms(spec.model_name)
        try:
            model.load_state_dict(_read_state_dict(weights_path), strict=True)
        except RuntimeError as error:
            raise ValueError(
                f"backbone {spec.name!r}: checkpoint {weights_path} does not match open_clip architecture "
                f"{spec.model_name!r}: {error}") from error
    else:
        # open_clip's checkpoint loader also converts older and third-party layouts, then loads strictly.
        try:
            model, preprocess_train, preprocess_eval = open_clip.create_model_and_transforms(
                spec.model_name, pretrained=str(weights_path))
        except (RuntimeError, AssertionError, KeyError, ValueError) as error:  # open_clip asserts on shape mismatches
            raise ValueError(
                f"backbone {spec.name!r}: checkpoint {weights_path} does not load into open_clip architecture "
                f"{spec.model_name!r}: {error}") from error
    return model, preprocess_train, preprocess_eval, open_clip.get_tokenizer(spec.model_name), weights_path


def _load_local_dir(spec: BackboneSpec):
    folder = Path(spec.path)
    if not folder.is_dir():
        raise BackboneUnavailableError(f"backbone {spec.name!r}: model folder not found: {folder}")
    if not (folder / CONFIG_FILENAME).is_file():
        raise BackboneUnavailableError(f"backbone {spec.name!r}: {CONFIG_FILENAME} missing in {folder}")
    # The file open_clip's local-dir loader picks; without one it would silently build random weights.
    weights_file = open_clip.factory._find_checkpoint_in_dir(folder)
    if weights_file is None:
        raise BackboneUnavailableError(
            f"backbone {spec.name!r}: no weight file (e.g. open_clip_model.safetensors) in {folder}")
    identifier = f"local-dir:{folder}"
    model, preprocess_train, preprocess_eval = open_clip.create_model_and_transforms(identifier)
    return model, preprocess_train, preprocess_eval, open_clip.get_tokenizer(identifier), Path(weights_file)
