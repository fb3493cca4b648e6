"""On-disk cache of zero-shot text features: the template ensemble (C, E) of one backbone, class-name list and
template list, encoded once and read by every method, experiment and re-evaluation that needs it.

A file per (backbone, weights sha256, numeric precision, class names, templates): `<directory>/<backbone>-
<weights[:12]>-<key>.safetensors`, written to a temporary file and renamed into place (a crash leaves no partial
entry), with the class names, templates and a checksum in its metadata. An entry that cannot be read or fails its
checksum is moved aside to `<name>.corrupt` with a warning and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.precision import precision_for
from models.provenance import stable_hash

TEXT_CACHE_FORMAT = "promptlab-text-features/1"


class TextCacheWarning(UserWarning):
    """A damaged text-feature entry was moved aside and recomputed."""


def _checksum(features: torch.Tensor) -> str:
    return hashlib.sha256(features.contiguous().numpy().tobytes()).hexdigest()


@dataclass(frozen=True)
class TextFeatureCache:
    directory: Path
    backbone: str
    weights_sha256: str
    precision: str = "fp32"

    @classmethod
    def of(cls, backbone, directory: Path | str) -> "TextFeatureCache":
        """The cache of a loaded backbone (models.backbones.loader.LoadedBackbone) in `directory`."""
        return cls(Path(directory), backbone.spec.name, backbone.weights_sha256,
                   precision_for(backbone.device, training=False).name)

    def path(self, classnames: list[str], templates: list[str]) -> Path:
        key = stable_hash({"backbone": self.backbone, "weights_sha256": self.weights_sha256,
                           "precision": self.precision, "classnames": list(classnames),
                           "templates": list(templates)}, length=24)
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", self.backbone)[:40]
        return self.directory / f"{readable}-{self.weights_sha256[:12]}-{key}.safetensors"

    def template_ensemble(self, text_tower, tokenizer, classnames: list[str], templates: list[str]) -> torch.Tensor:
        """prompt_assembly.template_ensemble_features, read from the cache when present, else computed and stored."""
        from models.prompting.prompt_assembly import template_ensemble_features

        path = self.path(classnames, templates)
        cached = self._read(path, classnames, templates)
        if cached is not None:
            return cached.to(text_tower.token_embedding.weight.device)
        features = template_ensemble_features(text_tower, tokenizer, classnames, templates)
        stored = features.detach().float().cpu().contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
        save_file({"features": stored}, str(temporary), metadata={
            "format": TEXT_CACHE_FORMAT, "classnames": json.dumps(list(classnames)),
            "templates": json.dumps(list(templates)), "sha256": _checksum(stored)})
        os.replace(temporary, path)
        return features

    @staticmethod
    def _read(path: Path, classnames: list[str], templates: list[str]) -> torch.Tensor | None:
        if not path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            features = load_file(str(path))["features"]
            problem = None
            if metadata.get("format") != TEXT_CACHE_FORMAT:
                problem = f"format {metadata.get('format')!r}"
            elif json.loads(metadata["classnames"]) != list(classnames) or \
                    json.loads(metadata["templates"]) != list(templates):
                problem = "its class names or templates differ from its key's"
            elif features.shape[0] != len(classnames) or _checksum(features) != metadata.get("sha256"):
                problem = "shape or checksum mismatch"
        except Exception as error:  # noqa: BLE001 -- unreadable in any way: set aside, recompute
            problem, features = f"{type(error).__name__}: {error}", None
        if problem is None:
            return features
        os.replace(path, path.with_name(path.name + ".corrupt"))
        warnings.warn(f"{path}: damaged text-feature entry ({problem}); moved aside and recomputed",
                      TextCacheWarning, stacklevel=3)
        return None
