"""The one resource every asset uses: where the workspace is, which catalog and backbone, which device."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

import dagster as dg
from pydantic import Field

from models.catalog import Catalog, load_catalog
from models.workspace import Workspace, default_workspace
from pipelines.job_runner import THREADS_ENV


@lru_cache(maxsize=4)
def _load_backbone_cached(spec, device: str, fingerprint: str):
    from models.backbones.loader import load_backbone

    return load_backbone(spec, device=device)


@lru_cache(maxsize=2)
def _load_variation_generator_cached(entry, diffusion_dir: str, device: str, fingerprint: str):
    from models.augmentation.generators import load_variation_generator

    return load_variation_generator(entry, diffusion_dir, device=device)


# What the launchpad shows for a setting resolved when a run starts (an empty string means the same).
AUTO, DEFAULT = "auto", "default"


def _chosen(value: str, automatic: str) -> str | None:
    """The value set in the launchpad, or None for `auto` / `default` / empty."""
    return None if value in ("", automatic) else value


class PromptLabResource(dg.ConfigurableResource):
    """Settings shared by all assets, set per run in the launchpad (resources: promptlab: config); each field says
    what its `auto` or `default` resolves to."""

    workspace_dir: str = Field(
        default=AUTO, description="Folder every asset writes into (datasets, models, checkpoints, warehouse, "
                                  "report), or a URL of object storage shared by several machines (s3://bucket/"
                                  "prefix; computed in a local working copy, $PROMPTLAB_WORKSPACE_CACHE). 'auto': "
                                  "$PROMPTLAB_WORKSPACE, else <project>/workspace.")
    catalog_dir: str = Field(
        default=AUTO, description="Folder of the catalog YAML files (datasets, backbones, world, experiment grid). "
                                  "'auto': $PROMPTLAB_CATALOG, else <project>/assets_catalog. Partitions are read "
                                  "from it when the code location loads.")
    backbone: str = Field(
        default=DEFAULT, description="Name of the frozen CLIP backbone in the catalog's backbones.yaml. 'default': "
                                     "the catalog's default_backbone (the embedded tiny-clip offline).")
    diffusion_backbone: str = Field(
        default=DEFAULT, description="Diffusion model that generates image variations (backbones.yaml: "
                                     "diffusion_backbones). 'default': $PROMPTLAB_DIFFUSION_BACKBONE, else the "
                                     "catalog's diffusion_default.")
    device: str = Field(
        default=AUTO, description="Torch device for training and inference: 'auto' (CUDA when available, else CPU), "
                                  "'cpu', 'cuda' or 'cuda:N'.")
    retrain_world: bool = Field(
        default=False, description="Pretrain tiny-clip and the diffusion model from the catalog's recipes instead of "
                                   "installing their shipped weights (also $PROMPTLAB_RETRAIN_WORLD=1, set by `promptlab run "
                                   "--retrain-world`). Minutes to hours on CPU.")
    report_url: str = Field(
        default=AUTO, description="URL under which a browser opens the workspace's reports/ folder, for the "
                                  "report's link. 'auto': $PROMPTLAB_REPORT_URL (`make ui` serves the folder at "
                                  "http://127.0.0.1:3001/ and sets it), else a file:// URL (browsers do not follow "
                                  "file:// links from a web page: paste it into the address bar).")

    def workspace(self) -> Workspace:
        """The workspace; a URL (s3://bucket/prefix) gives a remote one whose paths lie in its local working copy."""
        chosen = _chosen(self.workspace_dir, AUTO)
        return Workspace.at(chosen, "the promptlab resource's workspace_dir") if chosen else default_workspace()

    def catalog(self) -> Catalog:
        return load_catalog(_chosen(self.catalog_dir, AUTO))

    def report_link(self, path: Path) -> str:
        """The URL of a file under the workspace's reports/ folder that a browser opens (report_url)."""
        base = _chosen(self.report_url, AUTO) or os.environ.get("PROMPTLAB_REPORT_URL", "")
        if not base:
            return Path(path).resolve().as_uri()
        relative = Path(path).resolve().relative_to(self.workspace().report_path.parent.resolve())
        return base.rstrip("/") + "/" + quote(relative.as_posix())

    def retrain_world_requested(self) -> bool:
        return self.retrain_world or os.environ.get("PROMPTLAB_RETRAIN_WORLD", "") == "1"

    def torch_device(self) -> str:
        if _chosen(self.device, AUTO):
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def backbone_name(self) -> str:
        return self.chosen_backbone() or self.catalog().default_backbone

    def chosen_backbone(self) -> str | None:
        """The launchpad's choice, else $PROMPTLAB_BACKBONE (`promptlab run --backbone`), else None: the catalog's
        default (a suite's own, else backbones.yaml's)."""
        return _chosen(self.backbone, DEFAULT) or os.environ.get("PROMPTLAB_BACKBONE") or None

    def text_cache(self, backbone):
        """The workspace's cache of zero-shot text features for this backbone (models.prompting.text_cache)."""
        from models.prompting.text_cache import TextFeatureCache

        return TextFeatureCache.of(backbone, self.workspace().feature_cache_dir / "text")

    def load_backbone(self):
        """The frozen backbone (model, transforms, tokenizer, weights hash); cached per process. Sets torch's
        thread count first when $PROMPTLAB_TORCH_THREADS names one (`promptlab run --threads / --workers`)."""
        from models.backbones.loader import BackboneSpec

        apply_torch_threads()

        entry = self.catalog().backbone(self.chosen_backbone())
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
        name = (name or _chosen(self.diffusion_backbone, DEFAULT) or os.environ.get("PROMPTLAB_DIFFUSION_BACKBONE")
                or None)
        return self.catalog().diffusion_backbone(name).overridden(overrides, where)

    def load_variation_generator(self, name: str | None = None, overrides: dict | None = None,
                                 where: str = "the diffusion settings"):
        """The VariationGenerator of a diffusion backbone (models/augmentation/generators.py); cached per process."""
        entry = self.diffusion_backbone_entry(name, overrides, where)
        directory = self.workspace().diffusion_dir
        weights = directory / "unet" / "diffusion_pytorch_model.safetensors"
        fingerprint = str(weights.stat().st_mtime_ns) if entry.source == "embedded" and weights.exists() else ""
        return _load_variation_generator_cached(entry, str(directory), self.torch_device(), fingerprint)


def apply_torch_threads() -> int:
    """Torch's intra-op threads from $PROMPTLAB_TORCH_THREADS when set (else torch's default); returns the count
    every step then computes with (results depend on it in their last bits: runs record it in `compute`)."""
    import torch

    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"${THREADS_ENV}: expected a positive integer, got {value!r}")
        if torch.get_num_threads() != int(value):
            torch.set_num_threads(int(value))
    return torch.get_num_threads()
