"""The backbones of backbones.yaml: the CLIP-style models (`BackboneEntry`) and the diffusion models that generate
image variations (`DiffusionBackboneEntry`, `diffusion_backbones:`), each checked against what its source and kind
take; a diffusion entry's unset generation settings take its kind's defaults (models/augmentation/generation.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.augmentation.generation import (DIFFUSION_DTYPES, DIFFUSION_SOURCES, GENERATOR_KINDS, GENERATOR_SETTINGS,
                                            SD_SIZE_MULTIPLE)
from models.catalog.validation import (CatalogError, _check_dataclass_fields, _check_fields, _expand_env, _field_error,
                                       _nearest, _shown)


BACKBONE_SOURCES = ("embedded", "open_clip", "checkpoint", "local_dir")


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    source: str
    model_name: str | None = None
    pretrained: str | None = None
    path: str | None = None
    cache_dir: str | None = None


@dataclass(frozen=True)
class DiffusionBackboneEntry:
    """A diffusion model that generates image variations (backbones.yaml: diffusion_backbones; the generators are
    models/augmentation/generators.py). Settings the entry leaves unset take its kind's defaults (GENERATOR_SETTINGS);
    settings the kind does not take stay None."""

    name: str
    source: str  # embedded | hub | local_dir
    kind: str  # embedded_img2img | sd_image_variation | sd_img2img
    model_id: str | None = None  # hub: the repository id
    revision: str | None = None  # hub: a branch, tag or commit (None: main)
    path: str | None = None  # local_dir: a save_pretrained folder
    cache_dir: str | None = None  # hub: the HF cache to read (None: the HF default, $HF_HUB_CACHE)
    dtype: str = "float32"
    num_inference_steps: int | None = None
    strength: float | None = None
    guidance_scale: float | None = None
    output_size: int | None = None
    prompt: str | None = None

    def overridden(self, overrides: dict[str, Any] | None, where: str) -> "DiffusionBackboneEntry":
        """The entry with some generation settings replaced (an experiment's augmentation options, DiffTPT's
        `diffusion:` overrides), validated like the catalog; `where` names the overrides in errors."""
        if not overrides:
            return self
        changeable = ("dtype", *sorted({name for settings in GENERATOR_SETTINGS.values() for name in settings}))
        unknown = sorted(set(overrides) - set(changeable))
        if unknown:
            raise CatalogError(f"{where}: {unknown} cannot be overridden on diffusion backbone {_shown(self.name)}; "
                               f"known: {list(changeable)}")
        raw = {key: value for key, value in self.__dict__.items() if value is not None}
        return diffusion_backbone_entry(f"{where} (diffusion backbone {self.name})", {**raw, **overrides},
                                        expand_env=False)


# What each backbone source needs (models/backbones/loader.py BackboneSpec): open_clip a tag, files a path.
BACKBONE_REQUIRED = {"embedded": (), "open_clip": ("model_name", "pretrained"), "checkpoint": ("path",),
                     "local_dir": ("path",)}


def _backbone_entry(path: Path, index: int, raw: Any) -> BackboneEntry:
    name = raw.get("name") if isinstance(raw, dict) else None
    where = f"{path.name}: backbones[{index}] ({name})"
    _check_dataclass_fields(where, raw, BackboneEntry, required=("name", "source"))
    if not re.fullmatch(r"[A-Za-z0-9._-]+", raw["name"]):
        raise _field_error(where, "name", "letters, digits, '.', '_' or '-'", raw["name"])
    if raw["source"] not in BACKBONE_SOURCES:
        raise _field_error(where, "source", f"one of {BACKBONE_SOURCES}", raw["source"])
    missing = [key for key in BACKBONE_REQUIRED[raw["source"]] if not raw.get(key)]
    if missing:
        raise CatalogError(f"{where}: source {_shown(raw['source'])} needs {missing}")
    return BackboneEntry(**{key: _expand_env(value) for key, value in raw.items()})



def parse_backbones(backbones_file: Path, backbones_raw: Any,
                    suite_backbone: str | None = None) -> tuple[dict[str, BackboneEntry], str]:
    """backbones.yaml's `backbones:` list and its `default` (a suite's own backbone, when it names one, instead)."""
    backbones = {}
    _check_fields(backbones_file.name, backbones_raw, ("default", "backbones", "diffusion_default",
                                                      "diffusion_backbones"), required=("default", "backbones"))
    if not isinstance(backbones_raw["backbones"], list):
        raise CatalogError(f"{backbones_file.name}: backbones: expected a list of entries")
    for index, raw in enumerate(backbones_raw["backbones"]):
        entry = _backbone_entry(backbones_file, index, raw)
        if entry.name in backbones:
            raise CatalogError(f"{backbones_file.name}: backbones[{index}]: the name {_shown(entry.name)} appears twice")
        backbones[entry.name] = entry
    default_backbone = suite_backbone or backbones_raw.get("default")
    if not isinstance(default_backbone, str):
        raise _field_error(backbones_file.name, "default", "the name of a listed backbone", default_backbone)
    if default_backbone not in backbones:
        raise CatalogError(f"{backbones_file.name}: default backbone {_shown(default_backbone)} is not listed"
                           f"{_nearest(default_backbone, backbones)}; listed: {list(backbones)}")
    return backbones, default_backbone


DIFFUSION_ENTRY_FIELDS = ("name", "source", "kind", "model_id", "revision", "path", "cache_dir", "dtype",
                          "num_inference_steps", "strength", "guidance_scale", "output_size", "prompt")


def parse_diffusion_backbones(path: Path, raw: dict[str, Any]) -> tuple[dict[str, DiffusionBackboneEntry], str | None]:
    """backbones.yaml's `diffusion_backbones:` list and `diffusion_default` (both optional; a list needs a default)."""
    listed = raw.get("diffusion_backbones") or []
    if not isinstance(listed, list):
        raise CatalogError(f"{path.name}: diffusion_backbones: expected a list of entries, got {_shown(listed)}")
    entries: dict[str, DiffusionBackboneEntry] = {}
    for index, entry_raw in enumerate(listed):
        name = entry_raw.get("name") if isinstance(entry_raw, dict) else None
        entry = diffusion_backbone_entry(f"{path.name}: diffusion_backbones[{index}] ({name})", entry_raw)
        if entry.name in entries:
            raise CatalogError(f"{path.name}: diffusion_backbones[{index}]: the name {_shown(entry.name)} appears twice")
        entries[entry.name] = entry
    default = raw.get("diffusion_default")
    if default is not None and not isinstance(default, str):
        raise _field_error(path.name, "diffusion_default", "the name of a listed diffusion backbone", default)
    if (entries or default is not None) and default not in entries:
        raise CatalogError(f"{path.name}: diffusion_default {_shown(default)} is not one of the diffusion_backbones "
                           f"{list(entries)}")
    return entries, default


def diffusion_backbone_entry(where: str, raw: Any, expand_env: bool = True) -> DiffusionBackboneEntry:
    """Validate one diffusion backbone mapping; unset settings of its kind take the kind's defaults."""
    _check_fields(where, raw, DIFFUSION_ENTRY_FIELDS)
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise CatalogError(f"{where}: 'name' must be letters, digits, '.', '_' or '-', got {_shown(name)}")
    source, kind = raw.get("source"), raw.get("kind")
    if source not in DIFFUSION_SOURCES:
        raise CatalogError(f"{where}: 'source' must be one of {DIFFUSION_SOURCES}, got {_shown(source)}")
    if kind not in GENERATOR_KINDS:
        raise CatalogError(f"{where}: 'kind' must be one of {GENERATOR_KINDS}, got {_shown(kind)}")
    needed = {"embedded": (), "hub": ("model_id",), "local_dir": ("path",)}[source]
    allowed = {"embedded": (), "hub": ("model_id", "revision", "cache_dir"), "local_dir": ("path",)}[source]
    for location in ("model_id", "revision", "path", "cache_dir"):
        value = raw.get(location)
        if location in needed and (not isinstance(value, str) or not value):
            raise CatalogError(f"{where}: source {_shown(source)} needs '{location}' (a string), got {_shown(value)}")
        if location not in allowed and value is not None:
            raise CatalogError(f"{where}: '{location}' does not apply to source {_shown(source)} (it takes {list(allowed)})")
    if source == "embedded" and kind != "embedded_img2img":
        raise CatalogError(f"{where}: source 'embedded' is the workspace's pretrained DDPM, which only runs as kind "
                           f"'embedded_img2img', not {_shown(kind)}")
    defaults = GENERATOR_SETTINGS[kind]
    all_settings = sorted({setting for settings in GENERATOR_SETTINGS.values() for setting in settings})
    stray = [setting for setting in all_settings if setting not in defaults and raw.get(setting) is not None]
    if stray:
        raise CatalogError(f"{where}: {stray} do not apply to kind {_shown(kind)} (it takes {list(defaults)})")
    settings = {setting: default if raw.get(setting) is None else raw[setting] for setting, default in defaults.items()}
    _check_generation_settings(where, kind, settings)
    for setting in ("strength", "guidance_scale"):  # 3 and 3.0 are one setting (and one provenance hash)
        if settings.get(setting) is not None:
            settings[setting] = float(settings[setting])
    dtype = raw.get("dtype", "float32")
    if dtype not in DIFFUSION_DTYPES:
        raise CatalogError(f"{where}: 'dtype' must be one of {DIFFUSION_DTYPES}, got {_shown(dtype)}")
    location = {key: (_expand_env(raw.get(key)) if expand_env else raw.get(key))
                for key in ("model_id", "revision", "path", "cache_dir")}
    return DiffusionBackboneEntry(name=name, source=source, kind=kind, dtype=dtype, **location, **settings)


def _check_generation_settings(where: str, kind: str, settings: dict[str, Any]) -> None:
    def is_number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    steps = settings["num_inference_steps"]
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise CatalogError(f"{where}: 'num_inference_steps' must be an integer >= 1, got {_shown(steps)}")
    strength = settings.get("strength")
    if "strength" in settings and (not is_number(strength) or not 0.0 <= strength <= 1.0):
        raise CatalogError(f"{where}: 'strength' must be a number in [0, 1], got {_shown(strength)}")
    if kind == "sd_img2img" and int(steps * strength) < 1:
        raise CatalogError(f"{where}: strength {strength} x num_inference_steps {steps} leaves no denoising step "
                           "(the pipeline runs int(steps x strength) of them); raise either")
    guidance = settings.get("guidance_scale")
    if "guidance_scale" in settings and (not is_number(guidance) or guidance < 0):
        raise CatalogError(f"{where}: 'guidance_scale' must be a number >= 0 (above 1 turns on classifier-free "
                           f"guidance), got {_shown(guidance)}")
    size = settings.get("output_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise CatalogError(f"{where}: 'output_size' must be a positive integer (pixels), got {_shown(size)}")
    if kind != "embedded_img2img" and size % SD_SIZE_MULTIPLE:
        raise CatalogError(f"{where}: 'output_size' {size} is not a multiple of {SD_SIZE_MULTIPLE}, the downsampling "
                           f"factor of the Stable Diffusion VAE (e.g. {max(SD_SIZE_MULTIPLE, size // 8 * 8)} or 512)")
    prompt = settings.get("prompt")
    if "prompt" in settings and not isinstance(prompt, str):
        raise CatalogError(f"{where}: 'prompt' must be a string (may be empty), got {_shown(prompt)}")
