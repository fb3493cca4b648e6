"""Reads the declarative catalog (assets_catalog/*.yaml): datasets, backbones, methods and experiment grids.

The catalog is data; this module only parses and validates it, and expands grids into experiment configurations
with stable keys. Errors name the file and the entry.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.augmentation.generation import (DIFFUSION_DTYPES, DIFFUSION_SOURCES, GENERATOR_KINDS, GENERATOR_SETTINGS,
                                            SD_SIZE_MULTIPLE)
from models.data.near_duplicates import NearDuplicatePolicy
from models.prompting.methods import METHODS, parse_method_parameters
from models.prompting.training import OptimizationConfig
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
# The sections of experiments.yaml; its other top-level keys hold YAML anchors (`embedded_coop: &embedded_coop`).
EXPERIMENTS_SECTIONS = ("grid", "transfer", "test_time", "learning_settings")


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
    near_duplicates: NearDuplicatePolicy = NearDuplicatePolicy()

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
        raise CatalogError(f"{where}: source {raw['source']!r} needs {missing}")
    return BackboneEntry(**{key: _expand_env(value) for key, value in raw.items()})


def _near_duplicate_policy(where: str, raw: Any) -> NearDuplicatePolicy:
    """A dataset's `near_duplicates: {max_distance: <RMS grey levels >= 0>, allow: [[path, path], ...]}`."""
    if raw is None:
        return NearDuplicatePolicy()
    place = f"{where}: near_duplicates"
    if not isinstance(raw, dict):
        raise CatalogError(f"{place}: expected a mapping with 'max_distance' and/or 'allow', got {raw!r}")
    unknown = sorted(set(raw) - {"max_distance", "allow"})
    if unknown:
        raise CatalogError(f"{place}: unknown field(s) {unknown}; known: ['allow', 'max_distance']")
    max_distance = raw.get("max_distance", NearDuplicatePolicy().max_distance)
    if isinstance(max_distance, bool) or not isinstance(max_distance, (int, float)) or not 0 <= max_distance < 256:
        raise CatalogError(f"{place}.max_distance: expected a number of grey levels in [0, 256), got {max_distance!r}")
    pairs = raw.get("allow") or []
    if not isinstance(pairs, list):
        raise CatalogError(f"{place}.allow: expected a list of [path, path] pairs, got {pairs!r}")
    for position, pair in enumerate(pairs):
        if (not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(p, str) and p for p in pair)
                or pair[0] == pair[1]):
            raise CatalogError(f"{place}.allow[{position}]: expected two different relative image paths, got {pair!r}")
    return NearDuplicatePolicy.allowing(float(max_distance), [tuple(pair) for pair in pairs])


def _dataset_entry(path: Path, index: int, raw: dict[str, Any]) -> DatasetEntry:
    where = f"{path.name}: datasets[{index}]"
    name = raw.get("name")
    if not name or not re.fullmatch(r"[A-Za-z0-9_]+", str(name)):
        raise CatalogError(f"{where}: 'name' must be letters, digits or underscores, got {name!r}")
    source = raw.get("source")
    if source not in DATASET_SOURCES:
        raise CatalogError(f"{where} ({name}): 'source' must be one of {DATASET_SOURCES}, got {source!r}")
    templates = raw.get("templates") or ([raw["template"]] if raw.get("template") else [])
    if not isinstance(templates, list) or not templates or any(not isinstance(t, str) or "{}" not in t
                                                               for t in templates):
        raise CatalogError(f"{where} ({name}): needs 'template' or 'templates', each with one '{{}}'")
    if source != "embedded" and not raw.get("root"):
        raise CatalogError(f"{where} ({name}): a {source} dataset needs 'root'")
    unknown = set(raw) - {"name", "source", "template", "templates", "root", "image_dir", "split_file",
                          "domain_shift_of", "split_seed", "near_duplicates"}
    if unknown:
        known = ("template", *(entry_field.name for entry_field in dataclasses.fields(DatasetEntry)))
        raise CatalogError(f"{where} ({name}): unknown field(s) {sorted(unknown)}{_nearest(min(unknown), known)}")
    for text_field in ("template", "root", "image_dir", "split_file", "domain_shift_of"):
        if raw.get(text_field) is not None and not isinstance(raw[text_field], str):
            raise _field_error(f"{where} ({name})", text_field, "a string", raw[text_field])
    if "split_seed" in raw:
        _integer_value(f"{where} ({name})", "split_seed", raw["split_seed"])
    return DatasetEntry(
        name=name,
        source=source,
        templates=tuple(templates),
        root=_expand_env(raw.get("root")),
        image_dir=raw.get("image_dir", "images"),
        split_file=raw.get("split_file"),
        near_duplicates=_near_duplicate_policy(f"{where} ({name})", raw.get("near_duplicates")),
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
    if not isinstance(grid, list):
        raise CatalogError(f"{path.name}: grid: expected a list of entries, got {grid!r}")
    for index, entry in enumerate(grid):
        where = f"{path.name}: grid[{index}]"
        if not isinstance(entry, dict):
            raise CatalogError(f"{where}: expected a mapping with fields {list(GRID_ENTRY_FIELDS)}, got {entry!r}")
        method = entry.get("method")
        if method not in METHODS:
            raise CatalogError(f"{where}: unknown method {method!r}{_nearest(method, METHODS)}; registered: "
                               f"{sorted(METHODS)}")
        if method not in methods:
            raise CatalogError(f"{where}: method {method!r} is not listed in methods.yaml")
        method_defaults = methods[method]
        _check_grid_entry(f"{where}{_grid_entry_label(entry)}", entry, method_defaults)
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
        if augmentation and (pseudolabels or METHODS[method].adapts_from_pool):
            raise CatalogError(f"{where}: augmentation cannot be combined with pseudolabels or a method that adapts "
                               f"from the unlabelled pool ({method}): those train through the pool's rounds, which "
                               "take no augmented images; make them separate grid entries")
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


GRID_ENTRY_FIELDS = ("method", "shots", "seeds", "parameters", "optimization", "augmentation", "pseudolabels",
                     "name", "protocol", "templates", "setting")


def _trains_in_closed_form(method: str, method_defaults: dict[str, Any]) -> bool:
    """A method fitted outside the SGD loop whose methods.yaml schedule says `epochs: 0` (the linear probe, TFUP)."""
    fitted = not getattr(METHODS[method].build, "trained_by_gradient", True)
    return fitted and (method_defaults.get("optimization") or {}).get("epochs") == 0


def _check_optimization(where: str, optimization: Any, closed_form: bool) -> None:
    """An `optimization:` mapping: OptimizationConfig's fields (the seed comes from the experiment) and
    epochs_by_shots; epochs >= 1 (0 for a method fitted in closed form)."""
    _check_dataclass_fields(where, optimization, OptimizationConfig, prefix="optimization.",
                            exclude=("seed", "experiment", "epochs"), extra=("epochs", "epochs_by_shots"))
    if optimization.get("epochs") is not None:
        _integer_value(where, "optimization.epochs", optimization["epochs"], 0 if closed_form else 1)
    by_shots = optimization.get("epochs_by_shots")
    if by_shots is not None and (not isinstance(by_shots, dict) or not by_shots or not all(
            _is_integer(shots) and shots >= 1 and _is_integer(epochs) and epochs >= 1
            for shots, epochs in by_shots.items())):
        raise _field_error(where, "optimization.epochs_by_shots", "a mapping of shots to epochs (integers >= 1), "
                           "e.g. {1: 50, 16: 200}", by_shots)


def _check_method_entry(path: Path, name: str, raw: Any) -> None:
    """One methods.yaml entry: parameters of the method's dataclass, and its published optimization schedule."""
    where = f"{path.name}: methods.{name}"
    _check_fields(where, raw, ("parameters", "optimization"))
    for section in ("parameters", "optimization"):
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            raise _field_error(where, section, "a mapping", raw[section])
    _check_dataclass_fields(where, raw.get("parameters") or {}, METHODS[name].parameters_type, prefix="parameters.")
    if METHODS[name].trains_prompts:
        _check_optimization(where, raw.get("optimization") or {}, _trains_in_closed_form(name, raw))


def _grid_entry_label(entry: Any) -> str:
    """How an error names a grid entry before it expands: method, setting and name as in its keys ("coop-csc")."""
    if not isinstance(entry, dict) or not isinstance(entry.get("method"), str):
        return ""
    suffixes = [str(entry["name"])] if entry.get("name") else []
    setting = entry.get("setting") if isinstance(entry.get("setting"), str) else None
    return f" ({experiment_key(entry['method'], None, None, suffixes, setting)})"


def _check_grid_entry(where: str, entry: dict[str, Any], method_defaults: dict[str, Any]) -> None:
    """Every field of one grid entry, before it expands into experiments: a typo, a scalar where a list of shots or
    seeds is expected, a string or float where an integer is, or a value out of range is refused here, naming the
    entry and the field, rather than in a stage after the world and curation ran."""
    _check_fields(where, entry, GRID_ENTRY_FIELDS)
    method = entry["method"]
    spec = METHODS[method]
    if entry.get("shots") is not None:
        shots = _integer_list(where, "shots", entry["shots"], 1 if spec.trains_prompts else 0)
        if not spec.trains_prompts and shots != [0]:
            raise _field_error(where, "shots", f"[0] or absent ({method} learns nothing from labelled shots)", shots)
    if entry.get("seeds") is not None:
        _integer_list(where, "seeds", entry["seeds"], 0)
    name = entry.get("name")
    if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_]+", name)):
        raise _field_error(where, "name", "letters, digits or underscores (it ends the experiment keys)", name)
    for section in ("parameters", "optimization", "augmentation", "pseudolabels"):
        if entry.get(section) is not None and not isinstance(entry[section], dict):
            raise _field_error(where, section, "a mapping", entry[section])
    _check_dataclass_fields(where, entry.get("parameters") or {}, spec.parameters_type, prefix="parameters.")
    if spec.trains_prompts:
        optimization = {**(method_defaults.get("optimization") or {}), **(entry.get("optimization") or {})}
        _check_optimization(where, optimization, _trains_in_closed_form(method, method_defaults))
        if optimization.get("epochs") is None:
            by_shots = optimization.get("epochs_by_shots") or {}
            unscheduled = [shots for shots in entry.get("shots") or [16] if shots not in by_shots]
            if entry.get("setting") is not None or unscheduled:
                needs = ("'optimization.epochs' (a learning setting has no shots to look up in epochs_by_shots)"
                         if entry.get("setting") is not None else
                         f"'optimization.epochs', or epochs_by_shots entries for shots {unscheduled}")
                raise CatalogError(f"{where}: {method} needs {needs}")
    if entry.get("augmentation"):
        _check_dataclass_fields(where, entry["augmentation"], AugmentationOptions, prefix="augmentation.")
    if entry.get("pseudolabels"):
        _check_dataclass_fields(where, entry["pseudolabels"], PseudolabelOptions, prefix="pseudolabels.")


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


def _nearest(name: Any, known: Any) -> str:
    """' (did you mean 'x'?)' for a misspelt key, else ''."""
    match = difflib.get_close_matches(str(name), [str(key) for key in known], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _check_fields(where: str, raw: Any, known: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
    """A catalog section must be a mapping whose keys are all known (a typo is told its nearest known key) and which
    sets every required key; errors name the section and the fields."""
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected a mapping with fields {list(known)}, got {raw!r}")
    unknown = sorted((key for key in raw if key not in known), key=str)
    if unknown:
        hints = "".join(_nearest(key, known) for key in unknown[:1])
        raise CatalogError(f"{where}: unknown field(s) {unknown}{hints}; known: {list(known)}")
    missing = [key for key in required if raw.get(key) is None]
    if missing:
        raise CatalogError(f"{where}: missing required field(s) {missing}")


# Ranges by field name, wherever the field appears (optimization, augmentation, pseudolabels, world.yaml recipes,
# datasets): one rule per name. Integers below their minimum, and numbers outside their range, are refused.
INTEGER_MINIMUMS = {
    "epochs": 1, "batch_size": 1, "warmup_epochs": 0, "warmup_steps": 0, "seed": 0, "split_seed": 0,
    "num_pairs": 1, "image_size": 1, "family_size": 1, "num_threads": 1, "subject_caption_epochs": 0,
    "random_shift_pixels": 0, "sample_size": 1, "layers_per_block": 1, "norm_num_groups": 1,
    "num_train_timesteps": 1, "per_class": 1, "variations_per_image": 1, "num_inference_steps": 1,
}
POSITIVE_NUMBERS = ("learning_rate", "warmup_learning_rate")
NON_NEGATIVE_NUMBERS = ("momentum", "weight_decay")
FRACTIONS = ("strength", "similarity_threshold")  # in [0, 1]


def _field_error(where: str, name: str, expected: str, value: Any) -> CatalogError:
    hint = ""
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
        hint = f" (YAML reads {value} as a string: write it with a dot and a signed exponent, e.g. 1.0e-5)"
    return CatalogError(f"{where}: '{name}' must be {expected}, got {value!r}{hint}")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML's true is no integer


def _integer_value(where: str, name: str, value: Any, minimum: int | None = None) -> int:
    minimum = INTEGER_MINIMUMS.get(name.rsplit(".", 1)[-1]) if minimum is None else minimum
    expected = "an integer" + ("" if minimum is None else f" >= {minimum}")
    if not _is_integer(value) or (minimum is not None and value < minimum):
        raise _field_error(where, name, expected, value)
    return value


def _number_value(where: str, name: str, value: Any) -> float:
    base = name.rsplit(".", 1)[-1]
    if base in POSITIVE_NUMBERS:
        expected, valid = "a finite number > 0", lambda number: number > 0
    elif base in NON_NEGATIVE_NUMBERS:
        expected, valid = "a finite number >= 0", lambda number: number >= 0
    elif base in FRACTIONS:
        expected, valid = "a number in [0, 1]", lambda number: 0 <= number <= 1
    else:
        expected, valid = "a finite number", lambda number: True
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or not math.isfinite(value) or not valid(
            value):
        raise _field_error(where, name, expected, value)
    return value


def _integer_list(where: str, name: str, value: Any, minimum: int) -> list[int]:
    """A non-empty list of distinct integers >= minimum (one experiment per value: a scalar is refused)."""
    expected = f"a non-empty list of distinct integers >= {minimum}, e.g. [{max(minimum, 1)}]"
    if not isinstance(value, list) or not value or len(set(map(repr, value))) != len(value) or any(
            not _is_integer(item) or item < minimum for item in value):
        raise _field_error(where, name, expected, value)
    return value


def _value_of_type(where: str, name: str, value: Any, annotation: Any) -> None:
    """Check a value against a dataclass field's annotation (int, float, bool, str, Literal, X | None, tuple)."""
    options = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        if value is None and type(None) in options:
            return
        annotation = next(option for option in options if option is not type(None))
        options = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        if value not in options:
            raise _field_error(where, name, f"one of {list(options)}", value)
    elif annotation is bool:
        if not isinstance(value, bool):
            raise _field_error(where, name, "true or false", value)
    elif annotation is int:
        _integer_value(where, name, value)
    elif annotation is float:
        _number_value(where, name, value)
    elif annotation is str:
        if not isinstance(value, str):
            raise _field_error(where, name, "a string", value)
    elif typing.get_origin(annotation) is tuple:
        if not isinstance(value, list) or not value:
            raise _field_error(where, name, "a non-empty list", value)
        for index, item in enumerate(value):
            _value_of_type(where, f"{name}[{index}]", item, options[0])


def _check_dataclass_fields(where: str, raw: Any, recipe: type, prefix: str = "", exclude: tuple[str, ...] = (),
                            extra: tuple[str, ...] = (), required: tuple[str, ...] = ()) -> None:
    """A catalog mapping read into a dataclass (`recipe`): only its fields (less `exclude`, plus `extra`, which the
    caller checks), each of the field's type and in the range its name has."""
    hints = typing.get_type_hints(recipe)
    known = tuple(f.name for f in dataclasses.fields(recipe) if f.name not in exclude) + extra
    _check_fields(f"{where}{' ' + prefix.rstrip('.') if prefix else ''}", raw, known, required)
    for name, value in raw.items():
        if name not in extra:
            _value_of_type(where, f"{prefix}{name}", value, hints[name])


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
        _check_fields(place, section, ("sources", "targets"), required=("sources",))
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


def _check_grid_subset(where: str, subset: Any, experiments: dict[str, ExperimentConfig],
                       require_matches: bool = True) -> None:
    """One named subset of grids.yaml: known filters, each a non-empty list of known values; with
    ``require_matches`` (the subset being run) every experiment pattern must match a key of this grid. Subsets not
    being run are checked without it: a catalog with a smaller grid keeps the shipped subsets' patterns."""
    _check_fields(where, subset, ("description", *GRID_SUBSET_FILTERS))
    for field_name in GRID_SUBSET_FILTERS:
        values = subset.get(field_name)
        if values is not None and (not isinstance(values, list) or not values):
            raise CatalogError(f"{where}.{field_name}: expected a non-empty list, got {values!r}")
    for field_name, minimum in (("shots", 0), ("seeds", 0)):
        if subset.get(field_name) is not None:
            _integer_list(where, field_name, subset[field_name], minimum)
    unknown_methods = sorted(set(subset.get("methods") or []) - set(METHODS))
    if unknown_methods:
        raise CatalogError(f"{where}.methods: {unknown_methods} are not registered"
                           f"{_nearest(unknown_methods[0], METHODS)}; known: {sorted(METHODS)}")
    from models.data.learning_settings import LEARNING_SETTINGS
    from models.pseudolabels import STRATEGIES

    unknown_settings = sorted(set(subset.get("settings") or []) - {"few_shot", *LEARNING_SETTINGS})
    if unknown_settings:
        raise CatalogError(f"{where}.settings: {unknown_settings} are not learning settings; known: "
                           f"{['few_shot', *LEARNING_SETTINGS]}")
    unknown_strategies = sorted(set(subset.get("strategies") or []) - {NO_PSEUDOLABELS, *STRATEGIES})
    if unknown_strategies:
        raise CatalogError(f"{where}.strategies: {unknown_strategies} are not pseudolabel strategies; known: "
                           f"{[NO_PSEUDOLABELS, *sorted(STRATEGIES)]}")
    for pattern in (subset.get("experiments") or []) if require_matches else []:
        if not any(fnmatch.fnmatchcase(key, str(pattern)) for key in experiments):
            raise CatalogError(f"{where}.experiments: {pattern!r} matches no experiment key of the grid")


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
    _check_grid_subset(where, subset, experiments)
    patterns = subset.get("experiments")

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
    world = parse_world(directory / "world.yaml")  # first: the embedded world is the first stage to run
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
    _check_fields(backbones_file.name, backbones_raw, ("default", "backbones", "diffusion_default",
                                                      "diffusion_backbones"), required=("default", "backbones"))
    if not isinstance(backbones_raw["backbones"], list):
        raise CatalogError(f"{backbones_file.name}: backbones: expected a list of entries")
    for index, raw in enumerate(backbones_raw["backbones"]):
        entry = _backbone_entry(backbones_file, index, raw)
        if entry.name in backbones:
            raise CatalogError(f"{backbones_file.name}: backbones[{index}]: the name {entry.name!r} appears twice")
        backbones[entry.name] = entry
    default_backbone = backbones_raw.get("default")
    if default_backbone not in backbones:
        raise CatalogError(f"{backbones_file.name}: default backbone {default_backbone!r} is not listed"
                           f"{_nearest(default_backbone, backbones)}; listed: {list(backbones)}")
    diffusion_backbones, default_diffusion_backbone = parse_diffusion_backbones(backbones_file, backbones_raw)

    methods_file = directory / "methods.yaml"
    methods_raw = _read_yaml(methods_file)
    _check_fields(methods_file.name, methods_raw, ("methods",), required=("methods",))
    methods = methods_raw["methods"]
    if not isinstance(methods, dict):
        raise CatalogError(f"{methods_file.name}: methods: expected a mapping of method name to its defaults")
    for name in methods:
        if name not in METHODS:
            raise CatalogError(f"{methods_file.name}: method {name!r} is not registered{_nearest(name, METHODS)}; "
                               f"known: {sorted(METHODS)}")
        _check_method_entry(methods_file, name, methods[name] or {})
    experiments_file = directory / "experiments.yaml"
    experiments_raw = _read_yaml(experiments_file)
    for key in experiments_raw:
        if key not in EXPERIMENTS_SECTIONS and _nearest(key, EXPERIMENTS_SECTIONS):
            raise CatalogError(f"{experiments_file.name}: unknown section {key!r}{_nearest(key, EXPERIMENTS_SECTIONS)}"
                               f"; sections: {list(EXPERIMENTS_SECTIONS)} (other top-level keys only hold YAML "
                               "anchors)")
    experiments = expand_grid(experiments_file, experiments_raw.get("grid") or [], methods)
    dataset_entries = {d.name: d for d in datasets}
    transfer = parse_transfer(experiments_file, experiments_raw.get("transfer"), dataset_entries, experiments)
    learning_settings = parse_learning_settings(experiments_file, experiments_raw.get("learning_settings"),
                                                experiments)
    test_time = parse_test_time(experiments_file, experiments_raw.get("test_time"), dataset_entries, experiments,
                                diffusion_backbones, default_diffusion_backbone)
    for name, subset in _grid_subsets(directory).items():
        _check_grid_subset(f"grids.yaml: grids.{name}", subset, experiments, require_matches=False)
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
        world=world,
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


WORLD_SECTIONS = ("corpus", "tiny_clip", "tiny_clip_weights", "diffusion", "benchmark")
BENCHMARK_SPLITS = ("train", "val", "test")


def parse_world(path: Path) -> dict[str, Any]:
    """world.yaml, checked against what consumes each section: the corpus against write_corpus's arguments, the
    recipes against ClipPretrainConfig and DiffusionPretrainConfig, the benchmark's seed and images per split, and
    the shipped weights' folder and SHA-256; a typo fails here, naming the file, section and field."""
    import inspect

    from models.backbones.tiny_clip import ClipPretrainConfig
    from models.backbones.tiny_diffusion import DiffusionPretrainConfig
    from models.embedded.corpus import write_corpus

    world = _read_yaml(path)
    _check_fields(path.name, world, WORLD_SECTIONS, required=("corpus", "tiny_clip", "diffusion", "benchmark"))
    corpus_arguments = {name: parameter for name, parameter in inspect.signature(write_corpus).parameters.items()
                        if name != "output_dir"}
    required = tuple(name for name, parameter in corpus_arguments.items() if parameter.default is inspect.Parameter.empty)
    _check_fields(f"{path.name}: corpus", world["corpus"], tuple(corpus_arguments), required)
    for name, value in world["corpus"].items():
        _integer_value(f"{path.name}: corpus", name, value)
    _check_dataclass_fields(f"{path.name}: tiny_clip", world["tiny_clip"], ClipPretrainConfig)
    _check_dataclass_fields(f"{path.name}: diffusion", world["diffusion"], DiffusionPretrainConfig)
    where = f"{path.name}: benchmark"
    benchmark = world["benchmark"]
    _check_fields(where, benchmark, ("seed", "images_per_class"), required=("seed", "images_per_class"))
    _integer_value(where, "seed", benchmark["seed"])
    _check_fields(f"{where}: images_per_class", benchmark["images_per_class"], BENCHMARK_SPLITS, BENCHMARK_SPLITS)
    for split, count in benchmark["images_per_class"].items():
        _integer_value(where, f"images_per_class.{split}", count, 1)
    if world.get("tiny_clip_weights") is not None:
        where = f"{path.name}: tiny_clip_weights"
        shipped = world["tiny_clip_weights"]
        _check_fields(where, shipped, ("folder", "weights_sha256"), required=("folder", "weights_sha256"))
        if not isinstance(shipped["folder"], str):
            raise _field_error(where, "folder", "a folder relative to the catalog", shipped["folder"])
        if not isinstance(shipped["weights_sha256"], str) or not re.fullmatch(r"[0-9a-f]{64}", shipped["weights_sha256"]):
            raise _field_error(where, "weights_sha256", "64 lowercase hexadecimal digits", shipped["weights_sha256"])
    return world


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
            _is_integer(k) and _is_integer(v) and k >= 0 and v >= 0 for k, v in split_seeds.items()):
        raise CatalogError(f"{where}.trzsl_split_seeds: expected a mapping of experiment seed to split seed "
                           f"(integers), got {split_seeds!r}")
    plan = LearningSettingsPlan(labels_per_class, dict(split_seeds))
    for key, experiment in experiments.items():
        if experiment.setting == "trzsl" and experiment.seed not in plan.trzsl_split_seeds:
            raise CatalogError(f"{where}.trzsl_split_seeds: experiment {key!r} has seed {experiment.seed}, which "
                               f"has no split seed (have {sorted(plan.trzsl_split_seeds)})")
    return plan
