"""Where the workbench keeps what it writes: one folder (PROMPTLAB_WORKSPACE, default ./workspace), or object
storage (PROMPTLAB_WORKSPACE=s3://bucket/prefix) shared by several machines, each computing in a local working copy
that models.storage keeps in step with the store, one folder (unit) at a time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from models.provenance import PACKAGE_ROOT
from models.storage import SyncReport, Unit, WorkingCopy, default_cache_root, parse_location

WORKSPACE_ENV = "PROMPTLAB_WORKSPACE"


def default_workspace() -> "Workspace":
    """$PROMPTLAB_WORKSPACE (a folder, file://, or a URL such as s3://bucket/prefix), else <project>/workspace."""
    return Workspace.at(os.environ.get(WORKSPACE_ENV, PACKAGE_ROOT / "workspace"))


def default_workspace_root() -> Path:
    """The local folder computation reads and writes: the workspace itself, or a remote workspace's working copy
    ($PROMPTLAB_WORKSPACE_CACHE, else under ~/.cache/promptlab/workspaces)."""
    return default_workspace().root


@dataclass(frozen=True)
class Workspace:
    """root: the local folder every path below lies in. location: the URL of the shared store when the workspace
    is remote (root is then its working copy), None when root is the workspace itself."""

    root: Path
    location: str | None = None

    @classmethod
    def at(cls, location: str | Path, variable: str = WORKSPACE_ENV) -> "Workspace":
        url, folder = parse_location(location, variable)
        return cls(folder) if url is None else cls(default_cache_root(url), url)

    @property
    def is_remote(self) -> bool:
        return self.location is not None

    # --------------------------------------------------------------------------------------- shared storage
    @cached_property
    def working_copy(self) -> WorkingCopy:
        from models.storage import LocalStore, open_store

        return WorkingCopy(open_store(self.location) if self.is_remote else LocalStore(self.root), self.root)

    def unit(self, folder: Path) -> Unit:
        """The synchronised unit of one of this workspace's folders (the caches are merged, the rest mirrored)."""
        relative = Path(folder).relative_to(self.root).as_posix()
        additive = any(Path(folder).is_relative_to(cache) for cache in (self.feature_cache_dir,
                                                                        self.variation_cache_dir))
        return Unit(relative, additive=additive)

    def pull(self, folders) -> SyncReport:
        """Bring these folders' latest published versions into the working copy (a local workspace: nothing)."""
        if not self.is_remote:
            return SyncReport()
        return self.working_copy.pull(self.unit(folder) for folder in folders)

    def push(self, folders) -> SyncReport:
        """Publish these folders of the working copy to the store (a local workspace: nothing)."""
        if not self.is_remote:
            return SyncReport()
        return self.working_copy.push(self.unit(folder) for folder in folders)

    def is_published(self, folder: Path) -> bool:
        """The folder exists in the workspace: complete in the store when remote, on disk when local."""
        if not self.is_remote:
            return Path(folder).exists()
        return self.working_copy.unit_exists(self.unit(folder))

    def is_file_published(self, path: Path, folder: Path) -> bool:
        """The file `path` of the synchronised `folder` exists in the workspace: listed in the folder's complete
        manifest in the store when remote, on disk when local."""
        if not self.is_remote:
            return Path(path).exists()
        manifest = self.working_copy.remote_manifest(self.unit(folder))
        return (manifest is not None and manifest.get("state") == "complete"
                and Path(path).relative_to(self.root).as_posix() in manifest.get("files", {}))

    @property
    def corpus_dir(self) -> Path:
        return self.root / "world" / "corpus"

    @property
    def tiny_clip_dir(self) -> Path:
        return self.root / "world" / "tiny-clip"

    @property
    def diffusion_dir(self) -> Path:
        return self.root / "world" / "tiny-diffusion"

    def embedded_dataset_dir(self, dataset: str) -> Path:
        return self.root / "datasets" / dataset

    def curation_dir(self, dataset: str) -> Path:
        return self.root / "curation" / dataset

    def index_path(self, dataset: str) -> Path:
        """The promoted index: only ever replaced by an index that passed its checks (models.data.validated_index)."""
        return self.curation_dir(dataset) / "index.parquet"

    def listing_path(self, dataset: str) -> Path:
        """What the layout reader said of the dataset: its structure, class names by label, notes, image root."""
        return self.curation_dir(dataset) / "listing.json"

    def staged_index_path(self, dataset: str) -> Path:
        """A freshly built index waiting for (or rejected by) its checks."""
        return self.curation_dir(dataset) / "index.staged.parquet"

    def index_validation_path(self, dataset: str) -> Path:
        """The validation record: the latest curation's outcome and the promoted index's hash."""
        return self.curation_dir(dataset) / "index_validation.json"

    def fewshot_path(self, dataset: str) -> Path:
        return self.curation_dir(dataset) / "fewshot_subsets.parquet"

    def class_split_path(self, dataset: str) -> Path:
        return self.curation_dir(dataset) / "base_new_classes.json"

    def setting_splits_path(self, dataset: str) -> Path:
        return self.curation_dir(dataset) / "learning_setting_splits.parquet"

    def experiment_dir(self, dataset: str, experiment: str) -> Path:
        return self.root / "experiments" / dataset / experiment

    def augmentation_dir(self, dataset: str, experiment: str) -> Path:
        return self.experiment_dir(dataset, experiment) / "augmented"

    def pseudolabels_path(self, dataset: str, experiment: str) -> Path:
        return self.experiment_dir(dataset, experiment) / "pseudolabels.parquet"

    def pseudolabel_rounds_path(self, dataset: str, experiment: str) -> Path:
        """Every round's pseudolabels of an iterative strategy (round, relative_path, pseudo_label, confidence)."""
        return self.experiment_dir(dataset, experiment) / "pseudolabel_rounds.parquet"

    def checkpoint_dir(self, dataset: str, experiment: str) -> Path:
        return self.experiment_dir(dataset, experiment) / "prompt_checkpoint"

    def multi_source_dir(self, held_out: str, experiment: str) -> Path:
        """A multi-source domain generalisation partition's folder: the prompt learned on the sources of the split
        that holds `held_out` out (its checkpoint in prompt_checkpoint/)."""
        return self.root / "multi_source" / held_out / experiment

    @property
    def warehouse_path(self) -> Path:
        return self.root / "warehouse" / "promptlab.duckdb"

    @property
    def predictions_dir(self) -> Path:
        return self.root / "warehouse" / "predictions"

    @property
    def report_path(self) -> Path:
        return self.root / "reports" / "report.html"

    @property
    def feature_cache_dir(self) -> Path:
        return self.root / "cache" / "features"

    @property
    def variation_cache_dir(self) -> Path:
        """Generated variations (DiffTPT's views), keyed by generator, seed and source image."""
        return self.root / "cache" / "variations"
