"""Reads the declarative catalog (assets_catalog/*.yaml): datasets, backbones, methods and experiment grids.

The catalog is data; this module only parses and validates it, and expands grids into experiment configurations
with stable keys. Errors name the file and the entry.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.augmentation.generation import (DIFFUSION_DTYPES, DIFFUSION_SOURCES, GENERATOR_KINDS, GENERATOR_SETTINGS,
                                            SD_SIZE_MULTIPLE)
from models.prompting.methods import METHODS, parse_method_parameters
from models.provenance import stable_hash
from models.testtime.plan import TestTimePlan, parse_test_time

DEFAULT_CATALOG_DIR = Path(__file__).resolve().parents[1] / "assets_catalog"
DATASET_SOURCES = ("embedded", "coop", "image_folder")
BACKBONE_SOURCES = ("embedded", "open_clip", "checkpoint", "local_dir")
# all_classes: train on every class; base_to_new: train on the base half, test base and new separately.
PROTOCOLS = ("all_classes", "base_to_new")
# Transfer protocols (the `transfer:` section of experiments.yaml): a prompt trained on all classes of a source
# dataset is evaluated on other datasets with their own class names. cross_dataset: every other dataset except the
# source's domain-shifted variants; domain_generalization: the datasets whose domain_shift_of is the source.
TRANSFER_PROTOCOLS = ("cross_dataset", "domain_generalization")
# Named subsets of the default grid (grids.yaml), picked with `promptlab run --grid NAME` or $PROMPTLAB_GRID. A
# subset only removes experiments; the ones it keeps have the same keys and hashes as in the full grid.
GRID_SUBSET_FILTERS = ("methods", "shots", "seeds", "settings", "strategies", "experiments")
NO_PSEUDOLABELS = "none"  # the `strategies` filter's name for experiments without a pseudolabel strategy
# The evaluation protocols a run can be restricted to (`promptlab run --protocol`; pipelines/partitions.py).
EVALUATION_PROTOCOLS = ("few_shot", "base_to_new", "transfer", "test_time")
DEFAULT_GRID = "default"


class CatalogError(ValueError):
    pass


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    source: str
    templates: tuple[str, ...]
    root: str | None = None
    image_dir: str = "images"
    split_file: str | None = None
    domain_shift_of: str | None = None
    split_seed: int = 1

    @property
    def split_file_name(self) -> str:
        return self.split_file or f"split_zhou_{self.name}.json"


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
            raise CatalogError(f"{where}: {unknown} cannot be overridden on diffusion backbone {self.name!r}; "
                               f"known: {list(changeable)}")
        raw = {key: value for key, value in self.__dict__.items() if value is not None}
        return diffusion_backbone_entry(f"{where} (diffusion backbone {self.name})", {**raw, **overrides},
                                        expand_env=False)


@dataclass(frozen=True)
class AugmentationOptions:
    variations_per_image: int = 2
    strength: float = 0.4
    similarity_threshold: float = 0.8
    num_inference_steps: int = 20


@dataclass(frozen=True)
class PseudolabelOptions:
    strategy: str = "fpl"
    per_class: int = 16
    # How the labelled loss term is weighed against the pseudolabelled one (models/pseudolabels.py
    # LABELLED_WEIGHTINGS); None: the strategy's published weighting (FPL |PL|/|L|, IFPL and GRIP |L|/|PL|).
    labelled_weighting: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The options as they enter the configuration hash; an unset weighting is left out, so that the hashes
        of experiments written before it existed do not move."""
        described = dict(self.__dict__)
        if described["labelled_weighting"] is None:
            del described["labelled_weighting"]
        return described


@dataclass(frozen=True)
class LearningSettingsPlan:
    """The `learning_settings:` section of experiments.yaml: the data of Menghini et al.'s limited-label settings
    (models/data/learning_settings.py). labels_per_class: SSL's labelled images per class (2); trzsl_split_seeds:
    experiment seed -> the split seed that draws TRZSL's seen classes (the authors' 500, 0, 200)."""

    labels_per_class: int = 2
    trzsl_split_seeds: dict[int, int] = field(default_factory=lambda: {1: 500, 2: 0, 3: 200})

    def split_seed(self, seed: int) -> int:
        if seed not in self.trzsl_split_seeds:
            raise CatalogError(f"learning_settings.trzsl_split_seeds has no split seed for experiment seed {seed}; "
                               f"it has {sorted(self.trzsl_split_seeds)}")
        return self.trzsl_split_seeds[seed]


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment partition: a method with its parameters, shots, seed and options."""

    key: str
    method: str
    shots: int | None
    seed: int | None
    parameters: dict[str, Any] = field(default_factory=dict)
    optimization: dict[str, Any] = field(default_factory=dict)
    augmentation: AugmentationOptions | None = None
    pseudolabels: PseudolabelOptions | None = None
    protocol: str = "all_classes"
    # Prompt templates replacing the dataset's own (e.g. a zero-shot template ensemble); None: the dataset's.
    templates: tuple[str, ...] | None = None
    name: str | None = None  # the grid entry's `name`, which tells its variants apart ("csc", "ensemble")
    # A limited-label learning setting (ssl, ul, trzsl; models/data/learning_settings.py) instead of K shots.
    setting: str | None = None
    # Where the experiment comes from, for error messages ("experiments.yaml: grid[3]"); not part of its hash.
    grid_entry: str = ""

    @property
    def where(self) -> str:
        """The grid entry and key of this experiment, to start an error message that names them."""
        return f"{self.grid_entry} ({self.key})" if self.grid_entry else self.key

    def as_dict(self) -> dict[str, Any]:
        described = {
            "key": self.key,
            "method": self.method,
            "shots": self.shots,
            "seed": self.seed,
            "parameters": self.parameters,
            "optimization": self.optimization,
            "augmentation": None if self.augmentation is None else self.augmentation.__dict__,
            "pseudolabels": None if self.pseudolabels is None else self.pseudolabels.as_dict(),
            "protocol": self.protocol,
        }
        if self.templates is not None:  # only when set, so the hashes of existing experiments do not move
            described["templates"] = list(self.templates)
        if self.setting is not None:  # likewise
            described["setting"] = self.setting
        return described

    def templates_for(self, dataset: "DatasetEntry") -> list[str]:
        """The templates this experiment uses on a dataset: its own override, else the dataset's."""
        return list(self.templates if self.templates is not None else dataset.templates)

    @property
    def config_hash(self) -> str:
        return stable_hash(self.as_dict())

    def variant_options(self) -> dict[str, Any]:
        """What distinguishes this configuration from others of the same method and shots, seed excluded, so
        that results group over seeds: the options in use and a short hash of parameters + optimization."""
        settings: dict[str, Any] = {"parameters": self.parameters, "optimization": self.optimization}
        if self.templates is not None:
            settings["templates"] = list(self.templates)
        options: dict[str, Any] = {"settings_hash": stable_hash(settings, length=8)}
        if self.augmentation is not None:
            options["augmentation"] = self.augmentation.__dict__
        if self.pseudolabels is not None:
            options["pseudolabels"] = self.pseudolabels.as_dict()
        if self.protocol != "all_classes":
            options["protocol"] = self.protocol
        if self.setting is not None:
            options["setting"] = self.setting
        if self.name:
            options["variant"] = self.name
        return options


@dataclass(frozen=True)
class TransferPlan:
    """The `transfer:` section of experiments.yaml: which experiments' checkpoints are evaluated on which other
    datasets. Every source x experiment is one transfer partition; it evaluates all targets of its source."""

    experiments: tuple[str, ...] = ()
    # protocol -> source dataset -> target datasets (catalog order)
    targets: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)

    @property
    def sources(self) -> tuple[str, ...]:
        """Every source dataset of any transfer protocol, each once, in the order they appear."""
        return tuple(dict.fromkeys(source for by_source in self.targets.values() for source in by_source))

    def targets_of(self, source: str) -> dict[str, tuple[str, ...]]:
        """protocol -> the targets a checkpoint trained on `source` is evaluated on (empty if not a source)."""
        return {protocol: by_source[source] for protocol, by_source in self.targets.items() if source in by_source}


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
    # the `test_time:` section (models/testtime/plan.py): TPT / DiffTPT runs, restricted to the grid subset in use
    test_time: TestTimePlan = field(default_factory=TestTimePlan)
    # backbones.yaml's diffusion_backbones (image-variation generators) and diffusion_default
    diffusion_backbones: dict[str, DiffusionBackboneEntry] = field(default_factory=dict)
    default_diffusion_backbone: str | None = None

    def dataset(self, name: str) -> DatasetEntry:
        if name not in self.datasets:
            raise CatalogError(f"unknown dataset {name!r}; the catalog has {sorted(self.datasets)}")
        return self.datasets[name]

    def backbone(self, name: str | None = None) -> BackboneEntry:
        name = name or self.default_backbone
        if name not in self.backbones:
            raise CatalogError(f"unknown backbone {name!r}; the catalog has {sorted(self.backbones)}")
        return self.backbones[name]

    def diffusion_backbone(self, name: str | None = None) -> DiffusionBackboneEntry:
        name = name or self.default_diffusion_backbone
        if name is None:
            raise CatalogError(f"{self.directory / 'backbones.yaml'}: lists no diffusion_backbones")
        if name not in self.diffusion_backbones:
            raise CatalogError(f"unknown diffusion backbone {name!r}; the catalog has "
                               f"{sorted(self.diffusion_backbones)}")
        return self.diffusion_backbones[name]

    def experiment(self, key: str) -> ExperimentConfig:
        if key not in self.experiments:
            raise CatalogError(f"unknown experiment {key!r}; the grid ({self.grid}) has {sorted(self.experiments)}")
        return self.experiments[key]


def _expand_env(value: Any) -> Any:
    if isinstance(value, str):
        return os.path.expandvars(value)
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise CatalogError(f"catalog file missing: {path}")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise CatalogError(f"{path}: invalid YAML: {error}") from error
    if not isinstance(content, dict):
        raise CatalogError(f"{path}: expected a mapping at the top level")
    return content


def _dataset_entry(path: Path, index: int, raw: dict[str, Any]) -> DatasetEntry:
    where = f"{path.name}: datasets[{index}]"
    name = raw.get("name")
    if not name or not re.fullmatch(r"[A-Za-z0-9_]+", str(name)):
        raise CatalogError(f"{where}: 'name' must be letters, digits or underscores, got {name!r}")
    source = raw.get("source")
    if source not in DATASET_SOURCES:
        raise CatalogError(f"{where} ({name}): 'source' must be one of {DATASET_SOURCES}, got {source!r}")
    templates = raw.get("templates") or ([raw["template"]] if raw.get("template") else [])
    if not templates or any("{}" not in t for t in templates):
        raise CatalogError(f"{where} ({name}): needs 'template' or 'templates', each with one '{{}}'")
    if source != "embedded" and not raw.get("root"):
        raise CatalogError(f"{where} ({name}): a {source} dataset needs 'root'")
    unknown = set(raw) - {"name", "source", "template", "templates", "root", "image_dir", "split_file",
                          "domain_shift_of", "split_seed"}
    if unknown:
        raise CatalogError(f"{where} ({name}): unknown field(s) {sorted(unknown)}")
    return DatasetEntry(
        name=name,
        source=source,
        templates=tuple(templates),
        root=_expand_env(raw.get("root")),
        image_dir=raw.get("image_dir", "images"),
        split_file=raw.get("split_file"),
        domain_shift_of=raw.get("domain_shift_of"),
        split_seed=int(raw.get("split_seed", 1)),
    )


def experiment_key(method: str, shots: int | None, seed: int | None, suffixes: list[str],
                   setting: str | None = None) -> str:
    parts = [method.replace("_", "")]
    if setting is not None:
        parts.append(setting)
    if shots is not None:
        parts.append(f"k{shots}")
    if seed is not None:
        parts.append(f"s{seed}")
    return "-".join(parts + suffixes)


def expand_grid(path: Path, grid: list[dict[str, Any]], methods: dict[str, dict[str, Any]]) -> dict[str, ExperimentConfig]:
    experiments: dict[str, ExperimentConfig] = {}
    for index, entry in enumerate(grid):
        where = f"{path.name}: grid[{index}]"
        method = entry.get("method")
        if method not in METHODS:
            raise CatalogError(f"{where}: unknown method {method!r}; registered: {sorted(METHODS)}")
        if method not in methods:
            raise CatalogError(f"{where}: method {method!r} is not listed in methods.yaml")
        unknown = set(entry) - {"method", "shots", "seeds", "parameters", "optimization", "augmentation",
                                "pseudolabels", "name", "protocol", "templates", "setting"}
        if unknown:
            raise CatalogError(f"{where}: unknown field(s) {sorted(unknown)}")
        method_defaults = methods[method]
        parameters = {**(method_defaults.get("parameters") or {}), **(entry.get("parameters") or {})}
        try:
            parse_method_parameters(method, parameters)
        except ValueError as error:
            raise CatalogError(f"{where}: {error}") from error
        optimization = {**(method_defaults.get("optimization") or {}), **(entry.get("optimization") or {})}
        trains = METHODS[method].trains_prompts
        setting = entry.get("setting")
        shots_list = entry.get("shots") or ([16] if trains and setting is None else [None])
        seeds = entry.get("seeds") or ([1] if trains or setting == "trzsl" else [None])
        try:
            augmentation = AugmentationOptions(**entry["augmentation"]) if entry.get("augmentation") else None
            pseudolabels = PseudolabelOptions(**entry["pseudolabels"]) if entry.get("pseudolabels") else None
            if pseudolabels is not None:
                from models.pseudolabels import LABELLED_WEIGHTINGS, STRATEGIES

                if pseudolabels.strategy not in STRATEGIES:
                    raise CatalogError(f"{where}.pseudolabels.strategy: unknown strategy {pseudolabels.strategy!r}; "
                                       f"known: {sorted(STRATEGIES)}")
                weighting = pseudolabels.labelled_weighting
                if weighting is not None and weighting not in LABELLED_WEIGHTINGS:
                    raise CatalogError(f"{where}.pseudolabels.labelled_weighting: unknown weighting {weighting!r}; "
                                       f"known: {sorted(LABELLED_WEIGHTINGS)}")
        except TypeError as error:
            raise CatalogError(f"{where}: {error}") from error
        if (augmentation or pseudolabels) and not trains:
            raise CatalogError(f"{where}: augmentation/pseudolabels need a method that trains prompts")
        protocol = entry.get("protocol", "all_classes")
        if protocol not in PROTOCOLS:
            raise CatalogError(f"{where}: protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if protocol == "base_to_new" and (augmentation or pseudolabels or not trains):
            raise CatalogError(f"{where}: base_to_new needs a method that trains prompts, without augmentation or "
                               "pseudolabels (zero-shot is scored on base and new in every run anyway)")
        if protocol == "base_to_new" and not METHODS[method].transfers_to_other_classes(parameters):
            raise CatalogError(f"{where}: {method} with these parameters learns one state per class, which cannot "
                               "be applied to the new classes of base_to_new")
        if setting is not None:
            _check_setting(where, entry, setting, method, trains, pseudolabels, augmentation, protocol)
        templates = entry.get("templates")
        if templates is not None and (not isinstance(templates, list) or not templates
                                      or any(not isinstance(t, str) or t.count("{}") != 1 for t in templates)):
            raise CatalogError(f"{where}: templates must be a non-empty list of strings with one '{{}}' each")
        suffixes = ([entry["name"]] if entry.get("name") else []) + (["b2n"] if protocol == "base_to_new" else []) + (
            ["aug"] if augmentation else []) + (
            [pseudolabels.strategy] if pseudolabels else []
        )
        for shots in shots_list:
            for seed in seeds:
                key = experiment_key(method, shots, seed, suffixes, setting)
                if key in experiments:
                    raise CatalogError(f"{where}: experiment key {key!r} appears twice; add a distinct 'name'")
                experiments[key] = ExperimentConfig(
                    key=key,
                    method=method,
                    shots=shots,
                    seed=seed,
                    parameters=parameters,
                    optimization=optimization,
                    augmentation=augmentation,
                    pseudolabels=pseudolabels,
                    protocol=protocol,
                    templates=None if templates is None else tuple(templates),
                    name=entry.get("name"),
                    setting=setting,
                    grid_entry=where,
                )
    return experiments


def _check_setting(where: str, entry: dict[str, Any], setting: Any, method: str, trains: bool,
                   pseudolabels: PseudolabelOptions | None, augmentation: AugmentationOptions | None,
                   protocol: str) -> None:
    """A grid entry with `setting:` (ssl, ul, trzsl): its labels come from the setting, not from shots."""
    from models.data.learning_settings import LEARNING_SETTINGS

    if setting not in LEARNING_SETTINGS:
        raise CatalogError(f"{where}.setting: unknown learning setting {setting!r}; known: {list(LEARNING_SETTINGS)}")
    if entry.get("shots"):
        raise CatalogError(f"{where}.shots: an experiment in setting {setting} takes its labels from the setting "
                           "(learning_settings), not from shots; remove 'shots'")
    if protocol != "all_classes" or augmentation is not None:
        raise CatalogError(f"{where}: setting {setting} runs on all classes without augmentation; remove "
                           "'protocol' / 'augmentation'")
    spec = METHODS[method]
    if not trains and setting != "trzsl":
        raise CatalogError(f"{where}.setting: {method} does not train, so in {setting} it is the plain {method} "
                           "row (test on all classes); only trzsl, which scores seen and unseen classes, needs it")
    if setting == "ul" and trains and pseudolabels is None and not spec.adapts_from_pool:
        raise CatalogError(f"{where}.pseudolabels: {method} in ul (no labels at all) has nothing to train on; give "
                           "it a pseudolabel strategy")
    if spec.adapts_from_pool and pseudolabels is not None:
        raise CatalogError(f"{where}.pseudolabels: {method} selects its own pseudolabels from the pool; remove "
                           "'pseudolabels'")


def default_transfer_targets(protocol: str, source: str, datasets: dict[str, DatasetEntry]) -> list[str]:
    """The targets of a source under a transfer protocol, in catalog order. Cross-dataset: every other dataset
    that is not a shifted variant (as in the papers, where ImageNet-V2/-Sketch/... are only domain-generalization
    targets; counting a dataset's variants too would weigh its family several times in the average), nor the
    dataset the source itself is shifted from. Domain generalization: the variants shifted from the source."""
    family = datasets[source].domain_shift_of or source
    if protocol == "cross_dataset":
        return [name for name, entry in datasets.items() if not entry.domain_shift_of and name != family]
    if protocol == "domain_generalization":
        return [name for name, entry in datasets.items() if entry.domain_shift_of == source]
    raise CatalogError(f"unknown transfer protocol {protocol!r}; known: {TRANSFER_PROTOCOLS}")


def _dataset_names(where: str, value: Any, datasets: dict[str, DatasetEntry]) -> list[str]:
    if not isinstance(value, list) or not value or any(not isinstance(name, str) for name in value):
        raise CatalogError(f"{where}: expected a non-empty list of dataset names, got {value!r}")
    unknown = [name for name in value if name not in datasets]
    if unknown:
        raise CatalogError(f"{where}: unknown dataset(s) {unknown}; datasets.yaml has {list(datasets)}")
    if len(set(value)) != len(value):
        raise CatalogError(f"{where}: a dataset is listed twice in {value}")
    return value


def _check_fields(where: str, raw: Any, known: tuple[str, ...]) -> None:
    """A catalog section must be a mapping whose keys are all known; errors name the section and the fields."""
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected a mapping with fields {list(known)}, got {raw!r}")
    unknown = set(raw) - set(known)
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {sorted(unknown)}; known: {list(known)}")


def parse_transfer(path: Path, raw: Any, datasets: dict[str, DatasetEntry],
                   experiments: dict[str, ExperimentConfig]) -> TransferPlan:
    """Validate the `transfer:` section: experiment keys or shell-style patterns (fnmatch: `coop-k16-s?`) that
    must name checkpoints trained on all classes with a state shared by all classes, and per protocol the source
    datasets and optionally a restriction of their default targets."""
    if raw is None:
        return TransferPlan()
    where = f"{path.name}: transfer"
    _check_fields(where, raw, ("experiments", *TRANSFER_PROTOCOLS))
    patterns = raw.get("experiments")
    if not isinstance(patterns, list) or not patterns or any(not isinstance(p, str) for p in patterns):
        raise CatalogError(f"{where}.experiments: expected a non-empty list of experiment keys or patterns "
                           f"(e.g. coop-k16-s?), got {patterns!r}")
    keys: list[str] = []
    for pattern in patterns:
        matched = [key for key in experiments if fnmatch.fnmatchcase(key, pattern)]
        if not matched:
            raise CatalogError(f"{where}.experiments: {pattern!r} matches no experiment of the grid "
                               f"({sorted(experiments)})")
        keys += [key for key in matched if key not in keys]
    for key in keys:
        experiment, spec = experiments[key], METHODS[experiments[key].method]
        if not spec.trains_prompts:
            raise CatalogError(f"{where}.experiments: {key!r} ({experiment.method}) learns nothing to transfer; the "
                               "transfer views show its own evaluation on each target as the reference row")
        if experiment.protocol != "all_classes":
            raise CatalogError(f"{where}.experiments: {key!r} was trained with protocol {experiment.protocol}; "
                               "transfer evaluates prompts trained on all classes of the source (all_classes)")
        if not spec.transfers_to_other_classes(experiment.parameters):
            raise CatalogError(f"{where}.experiments: {key!r}: {experiment.method} with these parameters learns one "
                               "state per class (e.g. class-specific context, a linear probe's weights), which cannot "
                               "be applied to another dataset's classes")
    targets: dict[str, dict[str, tuple[str, ...]]] = {}
    for protocol in TRANSFER_PROTOCOLS:
        section = raw.get(protocol)
        if section is None:
            continue
        place = f"{where}.{protocol}"
        if not isinstance(section, dict) or set(section) - {"sources", "targets"}:
            raise CatalogError(f"{place}: expected a mapping with 'sources' and optionally 'targets', got {section!r}")
        sources = _dataset_names(f"{place}.sources", section.get("sources"), datasets)
        chosen = None if section.get("targets") is None else _dataset_names(f"{place}.targets", section["targets"],
                                                                              datasets)
        by_source = {}
        for source in sources:
            default = default_transfer_targets(protocol, source, datasets)
            by_source[source] = tuple(name for name in default if chosen is None or name in chosen)
            if not by_source[source]:
                reason = (f"no dataset has domain_shift_of: {source}" if protocol == "domain_generalization" and
                          not default else f"none of its targets {default} is listed in targets")
                raise CatalogError(f"{place}: source {source} has no target ({reason})")
        stray = [name for name in chosen or [] if not any(name in t for t in by_source.values())]
        if stray:
            raise CatalogError(f"{place}.targets: {stray} are not {protocol} targets of {sources} (cross_dataset: "
                               "datasets other than the source and its shifted variants; domain_generalization: "
                               "datasets whose domain_shift_of is the source)")
        targets[protocol] = by_source
    if not targets:
        raise CatalogError(f"{where}: name the sources of at least one of {TRANSFER_PROTOCOLS}")
    return TransferPlan(experiments=tuple(keys), targets=targets)


def _grid_subsets(directory: Path) -> dict[str, Any]:
    """The `grids:` mapping of grids.yaml (name -> filters); empty when the file is absent."""
    path = directory / "grids.yaml"
    subsets = (_read_yaml(path).get("grids") or {}) if path.exists() else {}
    if not isinstance(subsets, dict):
        raise CatalogError(f"{path}: grids: expected a mapping of grid names to filters, got {subsets!r}")
    return subsets


def grid_subset_names(directory: Path) -> list[str]:
    """The subsets grids.yaml defines (besides `default`, the whole grid)."""
    return list(_grid_subsets(directory))


def select_grid_subset(directory: Path, name: str, experiments: dict[str, ExperimentConfig],
                       transfer: TransferPlan) -> tuple[dict[str, ExperimentConfig], TransferPlan]:
    """Keep the experiments a named subset of grids.yaml selects (every filter it sets must match; an experiment
    without shots or seed, zero-shot, passes those filters). The transfer plan keeps its surviving experiments."""
    if name == DEFAULT_GRID:
        return experiments, transfer
    subsets = _grid_subsets(directory)
    if name not in subsets:
        raise CatalogError(f"{directory / 'grids.yaml'}: no grid named {name!r}; known: {[DEFAULT_GRID, *subsets]}")
    subset = subsets[name]
    where = f"grids.yaml: grids.{name}"
    _check_fields(where, subset, ("description", *GRID_SUBSET_FILTERS))
    for field_name in GRID_SUBSET_FILTERS:
        values = subset.get(field_name)
        if values is not None and (not isinstance(values, list) or not values):
            raise CatalogError(f"{where}.{field_name}: expected a non-empty list, got {values!r}")
    unknown_methods = sorted(set(subset.get("methods") or []) - set(METHODS))
    if unknown_methods:
        raise CatalogError(f"{where}.methods: {unknown_methods} are not registered; known: {sorted(METHODS)}")
    from models.pseudolabels import STRATEGIES

    unknown_strategies = sorted(set(subset.get("strategies") or []) - {NO_PSEUDOLABELS, *STRATEGIES})
    if unknown_strategies:
        raise CatalogError(f"{where}.strategies: {unknown_strategies} are not pseudolabel strategies; known: "
                           f"{[NO_PSEUDOLABELS, *sorted(STRATEGIES)]}")
    patterns = subset.get("experiments")
    for pattern in patterns or []:
        if not any(fnmatch.fnmatchcase(key, str(pattern)) for key in experiments):
            raise CatalogError(f"{where}.experiments: {pattern!r} matches no experiment key of the grid")

    def kept(experiment: ExperimentConfig) -> bool:
        if subset.get("methods") is not None and experiment.method not in subset["methods"]:
            return False
        if patterns is not None and not any(fnmatch.fnmatchcase(experiment.key, str(p)) for p in patterns):
            return False
        if subset.get("settings") is not None and (experiment.setting or "few_shot") not in subset["settings"]:
            return False
        strategy = experiment.pseudolabels.strategy if experiment.pseudolabels is not None else NO_PSEUDOLABELS
        if subset.get("strategies") is not None and strategy not in subset["strategies"]:
            return False
        for field_name, value in (("shots", experiment.shots), ("seeds", experiment.seed)):
            if subset.get(field_name) is not None and value is not None and value not in subset[field_name]:
                return False
        return True

    selected = {key: experiment for key, experiment in experiments.items() if kept(experiment)}
    if not selected:
        raise CatalogError(f"{where}: selects no experiment of the grid")
    transferred = tuple(key for key in transfer.experiments if key in selected)
    return selected, (TransferPlan(transferred, transfer.targets) if transferred else TransferPlan())


def load_catalog(directory: Path | str | None = None, grid: str | None = None) -> Catalog:
    """The catalog in `directory` ($PROMPTLAB_CATALOG, else assets_catalog/), its experiments restricted to the
    named subset `grid` of grids.yaml ($PROMPTLAB_GRID, else the whole grid)."""
    directory = Path(directory or os.environ.get("PROMPTLAB_CATALOG", DEFAULT_CATALOG_DIR))
    grid = grid or os.environ.get("PROMPTLAB_GRID") or DEFAULT_GRID
    datasets_file = directory / "datasets.yaml"
    datasets = [
        _dataset_entry(datasets_file, i, raw) for i, raw in enumerate(_read_yaml(datasets_file).get("datasets") or [])
    ]
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise CatalogError(f"{datasets_file}: duplicate dataset names {names}")
    for entry in datasets:
        if entry.domain_shift_of and entry.domain_shift_of not in names:
            raise CatalogError(f"{datasets_file}: {entry.name}: domain_shift_of names unknown {entry.domain_shift_of!r}")

    backbones_file = directory / "backbones.yaml"
    backbones_raw = _read_yaml(backbones_file)
    backbones = {}
    for index, raw in enumerate(backbones_raw.get("backbones") or []):
        if raw.get("source") not in BACKBONE_SOURCES:
            raise CatalogError(f"{backbones_file.name}: backbones[{index}]: source must be one of {BACKBONE_SOURCES}")
        backbones[raw["name"]] = BackboneEntry(**{k: _expand_env(v) for k, v in raw.items()})
    default_backbone = backbones_raw.get("default")
    if default_backbone not in backbones:
        raise CatalogError(f"{backbones_file.name}: default backbone {default_backbone!r} is not listed")
    diffusion_backbones, default_diffusion_backbone = parse_diffusion_backbones(backbones_file, backbones_raw)

    methods_file = directory / "methods.yaml"
    methods = _read_yaml(methods_file).get("methods") or {}
    for name in methods:
        if name not in METHODS:
            raise CatalogError(f"{methods_file.name}: method {name!r} is not registered; known: {sorted(METHODS)}")
    experiments_file = directory / "experiments.yaml"
    experiments_raw = _read_yaml(experiments_file)
    experiments = expand_grid(experiments_file, experiments_raw.get("grid") or [], methods)
    dataset_entries = {d.name: d for d in datasets}
    transfer = parse_transfer(experiments_file, experiments_raw.get("transfer"), dataset_entries, experiments)
    learning_settings = parse_learning_settings(experiments_file, experiments_raw.get("learning_settings"),
                                                experiments)
    test_time = parse_test_time(experiments_file, experiments_raw.get("test_time"), dataset_entries, experiments,
                                diffusion_backbones, default_diffusion_backbone)
    experiments, transfer = select_grid_subset(directory, grid, experiments, transfer)
    if grid != DEFAULT_GRID:
        test_time = test_time.restricted_to(experiments, _grid_subsets(directory)[grid].get("seeds"))
    return Catalog(
        directory=directory,
        datasets={d.name: d for d in datasets},
        backbones=backbones,
        default_backbone=default_backbone,
        methods=methods,
        experiments=experiments,
        world=_read_yaml(directory / "world.yaml"),
        transfer=transfer,
        grid=grid,
        learning_settings=learning_settings,
        test_time=test_time,
        diffusion_backbones=diffusion_backbones,
        default_diffusion_backbone=default_diffusion_backbone,
    )


DIFFUSION_ENTRY_FIELDS = ("name", "source", "kind", "model_id", "revision", "path", "cache_dir", "dtype",
                          "num_inference_steps", "strength", "guidance_scale", "output_size", "prompt")


def parse_diffusion_backbones(path: Path, raw: dict[str, Any]) -> tuple[dict[str, DiffusionBackboneEntry], str | None]:
    """backbones.yaml's `diffusion_backbones:` list and `diffusion_default` (both optional; a list needs a default)."""
    listed = raw.get("diffusion_backbones") or []
    if not isinstance(listed, list):
        raise CatalogError(f"{path.name}: diffusion_backbones: expected a list of entries, got {listed!r}")
    entries: dict[str, DiffusionBackboneEntry] = {}
    for index, entry_raw in enumerate(listed):
        name = entry_raw.get("name") if isinstance(entry_raw, dict) else None
        entry = diffusion_backbone_entry(f"{path.name}: diffusion_backbones[{index}] ({name})", entry_raw)
        if entry.name in entries:
            raise CatalogError(f"{path.name}: diffusion_backbones[{index}]: the name {entry.name!r} appears twice")
        entries[entry.name] = entry
    default = raw.get("diffusion_default")
    if (entries or default is not None) and default not in entries:
        raise CatalogError(f"{path.name}: diffusion_default {default!r} is not one of the diffusion_backbones "
                           f"{list(entries)}")
    return entries, default


def diffusion_backbone_entry(where: str, raw: Any, expand_env: bool = True) -> DiffusionBackboneEntry:
    """Validate one diffusion backbone mapping; unset settings of its kind take the kind's defaults."""
    _check_fields(where, raw, DIFFUSION_ENTRY_FIELDS)
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise CatalogError(f"{where}: 'name' must be letters, digits, '.', '_' or '-', got {name!r}")
    source, kind = raw.get("source"), raw.get("kind")
    if source not in DIFFUSION_SOURCES:
        raise CatalogError(f"{where}: 'source' must be one of {DIFFUSION_SOURCES}, got {source!r}")
    if kind not in GENERATOR_KINDS:
        raise CatalogError(f"{where}: 'kind' must be one of {GENERATOR_KINDS}, got {kind!r}")
    needed = {"embedded": (), "hub": ("model_id",), "local_dir": ("path",)}[source]
    allowed = {"embedded": (), "hub": ("model_id", "revision", "cache_dir"), "local_dir": ("path",)}[source]
    for location in ("model_id", "revision", "path", "cache_dir"):
        value = raw.get(location)
        if location in needed and (not isinstance(value, str) or not value):
            raise CatalogError(f"{where}: source {source!r} needs '{location}' (a string), got {value!r}")
        if location not in allowed and value is not None:
            raise CatalogError(f"{where}: '{location}' does not apply to source {source!r} (it takes {list(allowed)})")
    if source == "embedded" and kind != "embedded_img2img":
        raise CatalogError(f"{where}: source 'embedded' is the workspace's pretrained DDPM, which only runs as kind "
                           f"'embedded_img2img', not {kind!r}")
    defaults = GENERATOR_SETTINGS[kind]
    all_settings = sorted({setting for settings in GENERATOR_SETTINGS.values() for setting in settings})
    stray = [setting for setting in all_settings if setting not in defaults and raw.get(setting) is not None]
    if stray:
        raise CatalogError(f"{where}: {stray} do not apply to kind {kind!r} (it takes {list(defaults)})")
    settings = {setting: default if raw.get(setting) is None else raw[setting] for setting, default in defaults.items()}
    _check_generation_settings(where, kind, settings)
    for setting in ("strength", "guidance_scale"):  # 3 and 3.0 are one setting (and one provenance hash)
        if settings.get(setting) is not None:
            settings[setting] = float(settings[setting])
    dtype = raw.get("dtype", "float32")
    if dtype not in DIFFUSION_DTYPES:
        raise CatalogError(f"{where}: 'dtype' must be one of {DIFFUSION_DTYPES}, got {dtype!r}")
    location = {key: (_expand_env(raw.get(key)) if expand_env else raw.get(key))
                for key in ("model_id", "revision", "path", "cache_dir")}
    return DiffusionBackboneEntry(name=name, source=source, kind=kind, dtype=dtype, **location, **settings)


def _check_generation_settings(where: str, kind: str, settings: dict[str, Any]) -> None:
    def is_number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    steps = settings["num_inference_steps"]
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise CatalogError(f"{where}: 'num_inference_steps' must be an integer >= 1, got {steps!r}")
    strength = settings.get("strength")
    if "strength" in settings and (not is_number(strength) or not 0.0 <= strength <= 1.0):
        raise CatalogError(f"{where}: 'strength' must be a number in [0, 1], got {strength!r}")
    if kind == "sd_img2img" and int(steps * strength) < 1:
        raise CatalogError(f"{where}: strength {strength} x num_inference_steps {steps} leaves no denoising step "
                           "(the pipeline runs int(steps x strength) of them); raise either")
    guidance = settings.get("guidance_scale")
    if "guidance_scale" in settings and (not is_number(guidance) or guidance < 0):
        raise CatalogError(f"{where}: 'guidance_scale' must be a number >= 0 (above 1 turns on classifier-free "
                           f"guidance), got {guidance!r}")
    size = settings.get("output_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise CatalogError(f"{where}: 'output_size' must be a positive integer (pixels), got {size!r}")
    if kind != "embedded_img2img" and size % SD_SIZE_MULTIPLE:
        raise CatalogError(f"{where}: 'output_size' {size} is not a multiple of {SD_SIZE_MULTIPLE}, the downsampling "
                           f"factor of the Stable Diffusion VAE (e.g. {max(SD_SIZE_MULTIPLE, size // 8 * 8)} or 512)")
    prompt = settings.get("prompt")
    if "prompt" in settings and not isinstance(prompt, str):
        raise CatalogError(f"{where}: 'prompt' must be a string (may be empty), got {prompt!r}")


def parse_learning_settings(path: Path, raw: Any, experiments: dict[str, ExperimentConfig]) -> LearningSettingsPlan:
    """The `learning_settings:` section (defaults when absent); every trzsl experiment's seed needs a split seed."""
    where = f"{path.name}: learning_settings"
    raw = raw or {}
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected a mapping, got {raw!r}")
    _check_fields(where, raw, ("labels_per_class", "trzsl_split_seeds"))
    defaults = LearningSettingsPlan()
    labels_per_class = raw.get("labels_per_class", defaults.labels_per_class)
    if not isinstance(labels_per_class, int) or isinstance(labels_per_class, bool) or labels_per_class < 1:
        raise CatalogError(f"{where}.labels_per_class: expected an integer >= 1, got {labels_per_class!r}")
    split_seeds = raw.get("trzsl_split_seeds", defaults.trzsl_split_seeds)
    if not isinstance(split_seeds, dict) or not all(
            isinstance(k, int) and isinstance(v, int) for k, v in split_seeds.items()):
        raise CatalogError(f"{where}.trzsl_split_seeds: expected a mapping of experiment seed to split seed "
                           f"(integers), got {split_seeds!r}")
    plan = LearningSettingsPlan(labels_per_class, dict(split_seeds))
    for key, experiment in experiments.items():
        if experiment.setting == "trzsl" and experiment.seed not in plan.trzsl_split_seeds:
            raise CatalogError(f"{where}.trzsl_split_seeds: experiment {key!r} has seed {experiment.seed}, which "
                               f"has no split seed (have {sorted(plan.trzsl_split_seeds)})")
    return plan
