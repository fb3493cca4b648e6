"""The one resource every asset uses: where the workspace is, which catalog and backbone, which device."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import dagster as dg

from models.catalog import Catalog, load_catalog
from models.workspace import Workspace, default_workspace_root


@lru_cache(maxsize=4)
def _load_backbone_cached(spec, device: str, fingerprint: str):
    from models.backbones.loader import load_backbone

    return load_backbone(spec, device=device)


@lru_cache(maxsize=2)
def _load_variation_generator_cached(entry, diffusion_dir: str, device: str, fingerprint: str):
    from models.augmentation.generators import load_variation_generator

    return load_variation_generator(entry, diffusion_dir, device=device)


class PromptLabResource(dg.ConfigurableResource):
    """Settings shared by all assets; each can be changed in the launchpad."""

    workspace_dir: str = ""  # empty: $PROMPTLAB_WORKSPACE or ./workspace
    catalog_dir: str = ""  # empty: $PROMPTLAB_CATALOG or ./assets_catalog
    backbone: str = ""  # empty: the catalog's default backbone
    # The diffusion model that generates image variations (backbones.yaml: diffusion_backbones); empty:
    # $PROMPTLAB_DIFFUSION_BACKBONE, else the catalog's diffusion_default.
    diffusion_backbone: str = ""
    device: str = "auto"  # "auto" picks CUDA when available
    # Pretrain tiny-clip from the catalog's recipe instead of installing its shipped weights (also
    # $PROMPTLAB_RETRAIN_WORLD=1, which `promptlab run --retrain-world` sets).
    retrain_world: bool = False

    def workspace(self) -> Workspace:
        return Workspace(Path(self.workspace_dir) if self.workspace_dir else default_workspace_root())

    def catalog(self) -> Catalog:
        return load_catalog(self.catalog_dir or None)

    def retrain_world_requested(self) -> bool:
        return self.retrain_world or os.environ.get("PROMPTLAB_RETRAIN_WORLD", "") == "1"

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def backbone_name(self) -> str:
        return self.backbone or self.catalog().default_backbone

    def load_backbone(self):
        """The frozen backbone (model, transforms, tokenizer, weights hash); cached per process."""
        from models.backbones.loader import BackboneSpec

        entry = self.catalog().backbone(self.backbone or None)
        if entry.source == "embedded":
            directory = self.workspace().tiny_clip_dir
            if not (directory / "open_clip_config.json").exists():
                raise FileNotFoundError(
                    f"the embedded backbone {entry.name!r} is not pretrained yet ({directory} is missing): "
                    "materialize the tiny_clip_backbone asset first"
                )
            spec = BackboneSpec(name=entry.name, source="local_dir", model_name=entry.model_name, path=str(directory))
            fingerprint = str((directory / "open_clip_model.safetensors").stat().st_mtime_ns)
        else:
            spec = BackboneSpec(
                name=entry.name,
                source=entry.source,
                model_name=entry.model_name,
                pretrained=entry.pretrained,
                path=entry.path,
                cache_dir=entry.cache_dir,
            )
            fingerprint = ""
        return _load_backbone_cached(spec, self.torch_device(), fingerprint)

    def diffusion_backbone_entry(self, name: str | None = None, overrides: dict | None = None,
                                 where: str = "the diffusion settings"):
        """The catalog entry of a diffusion backbone (None: this resource's choice), with settings overridden."""
        name = name or self.diffusion_backbone or os.environ.get("PROMPTLAB_DIFFUSION_BACKBONE") or None
        return self.catalog().diffusion_backbone(name).overridden(overrides, where)

    def load_variation_generator(self, name: str | None = None, overrides: dict | None = None,
                                 where: str = "the diffusion settings"):
        """The VariationGenerator of a diffusion backbone (models/augmentation/generators.py); cached per process."""
        entry = self.diffusion_backbone_entry(name, overrides, where)
        directory = self.workspace().diffusion_dir
        weights = directory / "unet" / "diffusion_pytorch_model.safetensors"
        fingerprint = str(weights.stat().st_mtime_ns) if entry.source == "embedded" and weights.exists() else ""
        return _load_variation_generator_cached(entry, str(directory), self.torch_device(), fingerprint)
