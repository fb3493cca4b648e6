"""Where the workbench keeps what it writes: one folder (PROMPTLAB_WORKSPACE, default ./workspace)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from models.provenance import PACKAGE_ROOT


def default_workspace_root() -> Path:
    return Path(os.environ.get("PROMPTLAB_WORKSPACE", PACKAGE_ROOT / "workspace"))


@dataclass(frozen=True)
class Workspace:
    root: Path

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
