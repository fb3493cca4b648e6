"""Content-addressed on-disk cache of image features from a frozen image tower.

The key covers everything the features depend on: the backbone's weights hash, the image transform, the view
(original or mirrored) and the content hashes of the images in order. The same test split is therefore encoded once
and reused by every method, shot count and seed that evaluates on it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from models.provenance import stable_hash


def feature_cache_key(weights_sha256: str, transform: object, view: str, content_hashes: list[str]) -> str:
    return stable_hash({"weights": weights_sha256, "transform": repr(transform), "view": view,
                        "images": content_hashes}, length=32)


def cached_features(cache_dir: Path | None, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Features for `key` from the cache, or computed, stored (atomically) and returned."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.exists():
        return load_file(str(path))["features"]
    features = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({"features": features.contiguous()}, str(temporary))
    temporary.replace(path)
    return features
