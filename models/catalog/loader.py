"""The catalog as one object: `load_catalog` reads a catalog folder (and a suite of it, and a subset of its grid)
section by section into a `Catalog`, which answers which datasets, backbones, experiments, transfers and test-time
runs exist.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.catalog.backbones import (BackboneEntry, DiffusionBackboneEntry, parse_backbones,
                                      parse_diffusion_backbones)
from models.catalog.claims import Claim, load_claims
from models.catalog.datasets import DatasetEntry, parse_datasets
from models.catalog.descriptions import attach_class_descriptions
from models.catalog.grid import ExperimentConfig, expand_grid, parse_methods
from models.catalog.grid_subsets import DEFAULT_GRID, _check_grid_subset, _grid_subsets, select_grid_subset
from models.catalog.initialisations import InitialisationPlan, parse_initialisations
from models.catalog.learning_settings import LearningSettingsPlan, parse_learning_settings
from models.catalog.multi_source import MultiSourcePlan, parse_multi_source
from models.catalog.multitask import MultitaskPlan, parse_multitask
from models.catalog.suites import DEFAULT_CATALOG_DIR, SuiteInfo, parse_suite_info, suite_directory
from models.catalog.transfer import TransferPlan, parse_transfer
from models.catalog.validation import CatalogError, _nearest, _read_yaml, _shown
from models.catalog.world import parse_world
from models.prompting.methods import METHODS
from models.catalog.testtime import TestTimePlan, _check_test_time_shapes, parse_test_time


# The evaluation protocols a run can be restricted to (`promptlab run --protocol`; pipelines/partitions.py).
EVALUATION_PROTOCOLS = ("few_shot", "base_to_new", "transfer", "test_time", "multi_source")
# The sections of experiments.yaml; its other top-level keys hold YAML anchors (`embedded_coop: &embedded_coop`).
EXPERIMENTS_SECTIONS = ("grid", "transfer", "test_time", "learning_settings", "multi_source", "multitask",
                        "initialisations")


@dataclass(frozen=True)
class Catalog:
    directory: Path
    datasets: dict[str, DatasetEntry]
    backbones: dict[str, BackboneEntry]
    default_backbone: str
    methods: dict[str, dict[str, Any]]
    experiments: dict[str, ExperimentConfig]
    world: dict[str, Any]
    transfer: TransferPlan = field(default_factory=TransferPlan)
    grid: str = DEFAULT_GRID
    learning_settings: LearningSettingsPlan = field(default_factory=LearningSettingsPlan)  # the subset of grids.yaml in use, or the whole of experiments.yaml
    # the `test_time:` section (testtime.py): TPT / DiffTPT runs, restricted to the grid subset in use
    test_time: TestTimePlan = field(default_factory=TestTimePlan)
    # backbones.yaml's diffusion_backbones (image-variation generators) and diffusion_default
    diffusion_backbones: dict[str, DiffusionBackboneEntry] = field(default_factory=dict)
    default_diffusion_backbone: str | None = None
    # the suite whose datasets and grid these are (suites/<name>/suite.yaml); None: the embedded world
    suite: "SuiteInfo | None" = None
    # the `multi_source:` section (multi_source.py): leave-one-domain-out splits over datasets of one class set
    multi_source: MultiSourcePlan = field(default_factory=MultiSourcePlan)
    # claims.yaml beside experiments.yaml (claims.py): the papers' comparisons the report checks, over the whole grid
    claims: tuple[Claim, ...] = ()
    # the `multitask:` section (multitask.py): MVLPT's source runs on pooled datasets, their averages, the targets
    multitask: MultitaskPlan = field(default_factory=MultitaskPlan)
    # the `initialisations:` section (initialisations.py): GRAM / PVP prompts learned on the corpus, which
    # experiments start from
    initialisations: InitialisationPlan = field(default_factory=InitialisationPlan)

    def dataset(self, name: str) -> DatasetEntry:
        if name not in self.datasets and name in self.multitask.source_entries:  # a source outside the subset
            return self.multitask.source_entries[name]
        if name not in self.datasets:
            raise CatalogError(f"unknown dataset {_shown(name)}; the catalog has {sorted(self.datasets)}")
        return self.datasets[name]

    def backbone(self, name: str | None = None) -> BackboneEntry:
        name = name or self.default_backbone
        if name not in self.backbones:
            raise CatalogError(f"unknown backbone {_shown(name)}; the catalog has {sorted(self.backbones)}")
        return self.backbones[name]

    def diffusion_backbone(self, name: str | None = None) -> DiffusionBackboneEntry:
        name = name or self.default_diffusion_backbone
        if name is None:
            raise CatalogError(f"{self.directory / 'backbones.yaml'}: lists no diffusion_backbones")
        if name not in self.diffusion_backbones:
            raise CatalogError(f"unknown diffusion backbone {_shown(name)}; the catalog has "
                               f"{sorted(self.diffusion_backbones)}")
        return self.diffusion_backbones[name]

    def runs_on(self, dataset: str, experiment: str) -> bool:
        """Whether an experiment partition exists for a dataset: a test-only dataset (ImageNet's shifts) has no
        training images, so only untrained experiments (zero-shot) run on it; it is a transfer / test-time target."""
        return (not (self.dataset(dataset).test_only and METHODS[self.experiment(experiment).method].trains_prompts)
                and self.multitask.runs_on(dataset, experiment))

    def experiment(self, key: str) -> ExperimentConfig:
        if key not in self.experiments:
            raise CatalogError(f"unknown experiment {_shown(key)}; the grid ({self.grid}) has {sorted(self.experiments)}")
        return self.experiments[key]


def load_catalog(directory: Path | str | None = None, grid: str | None = None, suite: str | None = None) -> Catalog:
    """The catalog in `directory` ($PROMPTLAB_CATALOG, else assets_catalog/), its experiments restricted to the
    named subset `grid` of grids.yaml ($PROMPTLAB_GRID, else the whole grid). With a `suite` ($PROMPTLAB_SUITE), the
    datasets, experiments and grid subsets are the suite's (suites/<name>/), the rest (world, backbones, methods)
    the catalog's; without one, the embedded world's datasets."""
    directory = Path(directory or os.environ.get("PROMPTLAB_CATALOG", DEFAULT_CATALOG_DIR))
    grid = grid or os.environ.get("PROMPTLAB_GRID") or DEFAULT_GRID
    suite = suite or os.environ.get("PROMPTLAB_SUITE") or None
    suite_folder = suite_directory(directory, suite) if suite else directory
    suite_info = parse_suite_info(suite_folder) if suite else None
    world = parse_world(directory / "world.yaml")  # first: the embedded world is the first stage to run
    datasets = attach_class_descriptions(directory, parse_datasets(suite_folder / "datasets.yaml"))

    backbones_file = directory / "backbones.yaml"
    backbones_raw = _read_yaml(backbones_file)
    backbones, default_backbone = parse_backbones(backbones_file, backbones_raw,
                                                  suite_info.backbone if suite_info else None)
    diffusion_backbones, default_diffusion_backbone = parse_diffusion_backbones(backbones_file, backbones_raw)

    methods = parse_methods(directory / "methods.yaml")
    experiments_file = suite_folder / "experiments.yaml"
    experiments_raw = _read_yaml(experiments_file)
    for key in experiments_raw:
        if key not in EXPERIMENTS_SECTIONS and _nearest(key, EXPERIMENTS_SECTIONS):
            raise CatalogError(f"{experiments_file.name}: unknown section {_shown(key)}{_nearest(key, EXPERIMENTS_SECTIONS)}"
                               f"; sections: {list(EXPERIMENTS_SECTIONS)} (other top-level keys only hold YAML "
                               "anchors)")
    experiments = expand_grid(experiments_file, experiments_raw.get("grid") or [], methods)
    dataset_entries = {d.name: d for d in datasets}
    transfer = parse_transfer(experiments_file, experiments_raw.get("transfer"), dataset_entries, experiments)
    learning_settings = parse_learning_settings(experiments_file, experiments_raw.get("learning_settings"),
                                                experiments)
    multi_source = parse_multi_source(experiments_file, experiments_raw.get("multi_source"), dataset_entries,
                                      experiments)
    claims = load_claims(suite_folder, experiments)
    multitask = parse_multitask(experiments_file, experiments_raw.get("multitask"), dataset_entries, experiments)
    initialisations = parse_initialisations(experiments_file, experiments_raw.get("initialisations"), methods,
                                            experiments)
    _check_test_time_shapes(experiments_file, experiments_raw.get("test_time"))
    test_time = parse_test_time(experiments_file, experiments_raw.get("test_time"), dataset_entries, experiments,
                                diffusion_backbones, default_diffusion_backbone)
    for name, subset in _grid_subsets(suite_folder).items():
        _check_grid_subset(f"grids.yaml: grids.{name}", subset, experiments, require_matches=False)
    selection = select_grid_subset(suite_folder, grid, dataset_entries, experiments, transfer, test_time)
    multitask = multitask.on_experiments(selection.experiments)
    # the source runs of the targets a subset keeps, whatever its filters (models/catalog/multitask.py)
    kept_experiments = {**selection.experiments, **{key: experiments[key] for key in multitask.experiments}}
    return Catalog(
        directory=directory,
        datasets=selection.datasets,
        backbones=backbones,
        default_backbone=default_backbone,
        methods=methods,
        experiments=kept_experiments,
        world=world,
        transfer=selection.transfer,
        grid=grid,
        learning_settings=learning_settings,
        test_time=selection.test_time,
        diffusion_backbones=diffusion_backbones,
        default_diffusion_backbone=default_diffusion_backbone,
        suite=suite_info,
        multi_source=(multi_source.on_experiments(selection.experiments).on_datasets(selection.datasets)
                      if selection.keeps_multi_source else MultiSourcePlan()),
        claims=claims,
        multitask=multitask,
        initialisations=initialisations.on_experiments(kept_experiments),
    )
