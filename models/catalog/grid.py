"""The methods of methods.yaml and the grid of experiments.yaml, expanded into experiments.

A grid entry names a method (registered in models/prompting/methods and listed in methods.yaml, whose parameters
and optimization schedule it overrides), its shots and seeds, and optionally augmentation, pseudolabels, a protocol,
templates or a limited-label learning setting; it expands into one `ExperimentConfig` per shots x seed, with a
stable key (`coop-k16-s1`) and a configuration hash. Every field is checked before it expands, naming the entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.catalog.datasets import DatasetEntry
from models.catalog.validation import (CatalogError, _check_dataclass_fields, _check_fields, _field_error,
                                       _integer_list, _integer_value, _is_integer, _nearest, _read_yaml,
                                       _shown)
from models.prompting.methods import METHODS, parse_method_parameters
from models.prompting.methods.registry import SELECTION_POLICIES
from models.prompting.training import OPTIMIZERS, OptimizationConfig
from models.prompting.view_recipes import ViewRecipe
from models.provenance import stable_hash


# all_classes: train on every class; base_to_new: train on the base half, test base and new separately.
PROTOCOLS = ("all_classes", "base_to_new")


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
    # The grid entry's model-selection policy and view recipe, when it sets them (else the method's published ones:
    # selection_policy, view_recipe).
    selection: str | None = None
    views: ViewRecipe | None = None
    # The upstream initialisation its prompt starts from (experiments.yaml `initialisations:`; GRAM, PVP)
    initialisation: str | None = None

    @property
    def selection_policy(self) -> str:
        """Which labelled images choose the epoch or hyperparameters (registry.SELECTION_POLICIES; never test)."""
        return self.selection or METHODS[self.method].selection

    @property
    def view_recipe(self) -> ViewRecipe | None:
        """The augmented views the method trains on (None: the original and mirrored views)."""
        return self.views if self.views is not None else METHODS[self.method].training_views

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
        if self.selection is not None:  # likewise; the method's own policy is code, recorded with the commit
            described["selection"] = self.selection
        if self.views is not None:
            described["views"] = self.views.as_dict()
        if self.initialisation is not None:
            described["initialisation"] = self.initialisation
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
        if self.selection is not None:
            options["selection"] = self.selection
        if self.views is not None:
            options["views"] = self.views.as_dict()
        if self.initialisation is not None:
            options["initialisation"] = self.initialisation
        return options


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
        raise CatalogError(f"{path.name}: grid: expected a list of entries, got {_shown(grid)}")
    for index, entry in enumerate(grid):
        where = f"{path.name}: grid[{index}]"
        if not isinstance(entry, dict):
            raise CatalogError(f"{where}: expected a mapping with fields {list(GRID_ENTRY_FIELDS)}, got {_shown(entry)}")
        method = entry.get("method")
        if not isinstance(method, str):
            raise _field_error(where, "method", f"a method name, one of {sorted(METHODS)}", method)
        if method not in METHODS:
            raise CatalogError(f"{where}: unknown method {_shown(method)}{_nearest(method, METHODS)}; registered: "
                               f"{sorted(METHODS)}")
        if method not in methods:
            raise CatalogError(f"{where}: method {_shown(method)} is not listed in methods.yaml")
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
                    raise CatalogError(f"{where}.pseudolabels.strategy: unknown strategy {_shown(pseudolabels.strategy)}; "
                                       f"known: {sorted(STRATEGIES)}")
                weighting = pseudolabels.labelled_weighting
                if weighting is not None and weighting not in LABELLED_WEIGHTINGS:
                    raise CatalogError(f"{where}.pseudolabels.labelled_weighting: unknown weighting {_shown(weighting)}; "
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
            raise CatalogError(f"{where}: protocol must be one of {PROTOCOLS}, got {_shown(protocol)}")
        if protocol == "base_to_new" and (augmentation or pseudolabels or not trains):
            raise CatalogError(f"{where}: base_to_new needs a method that trains prompts, without augmentation or "
                               "pseudolabels (zero-shot is scored on base and new in every run anyway)")
        if protocol == "base_to_new" and not METHODS[method].transfers_to_other_classes(parameters):
            raise CatalogError(f"{where}: {method} with these parameters learns one state per class, which cannot "
                               "be applied to the new classes of base_to_new")
        if setting is not None:
            _check_setting(where, entry, setting, method, trains, pseudolabels, augmentation, protocol)
        selection = entry.get("selection")
        views = _view_recipe(where, entry.get("views"))
        if (selection is not None or views is not None) and not trains:
            raise CatalogError(f"{where}: {method} learns nothing, so it has no 'selection' or 'views' to set")
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
                    raise CatalogError(f"{where}: experiment key {_shown(key)} appears twice; add a distinct 'name'")
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
                    selection=selection,
                    views=views,
                    initialisation=entry.get("initialisation"),
                )
    return experiments


GRID_ENTRY_FIELDS = ("method", "shots", "seeds", "parameters", "optimization", "augmentation", "pseudolabels",
                     "name", "protocol", "templates", "setting", "selection", "views", "initialisation")


def _view_recipe(where: str, raw: Any) -> ViewRecipe | None:
    """A grid entry's `views:` (models.prompting.view_recipes.ViewRecipe), refused naming the entry and field."""
    if raw is None:
        return None
    try:
        return ViewRecipe.from_mapping(raw)
    except (TypeError, ValueError) as error:
        raise CatalogError(f"{where}: {error}") from error


def _trains_in_closed_form(method: str, method_defaults: dict[str, Any]) -> bool:
    """A method fitted outside the SGD loop whose methods.yaml schedule says `epochs: 0` (the linear probe, TFUP)."""
    fitted = not getattr(METHODS[method].build, "trained_by_gradient", True)
    return fitted and (method_defaults.get("optimization") or {}).get("epochs") == 0


def _check_optimization(where: str, optimization: Any, closed_form: bool) -> None:
    """An `optimization:` mapping: OptimizationConfig's fields (the seed comes from the experiment) and
    epochs_by_shots; epochs >= 1 (0 for a method fitted in closed form)."""
    _check_dataclass_fields(where, optimization, OptimizationConfig, prefix="optimization.",
                            exclude=("seed", "experiment", "epochs", "steps"),
                            extra=("epochs", "epochs_by_shots", "iterations_per_shot"))
    if optimization.get("optimizer") is not None and optimization["optimizer"] not in OPTIMIZERS:
        raise _field_error(where, "optimization.optimizer", f"one of {list(OPTIMIZERS)}", optimization["optimizer"])
    if optimization.get("iterations_per_shot") is not None:
        _integer_value(where, "optimization.iterations_per_shot", optimization["iterations_per_shot"], 1)
    betas = optimization.get("betas")
    if betas is not None and (not isinstance(betas, list) or len(betas) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        raise _field_error(where, "optimization.betas", "[beta1, beta2], each in [0, 1)", betas)
    if optimization.get("epochs") is not None:
        _integer_value(where, "optimization.epochs", optimization["epochs"], 0 if closed_form else 1)
    by_shots = optimization.get("epochs_by_shots")
    if by_shots is not None and (not isinstance(by_shots, dict) or not by_shots or not all(
            _is_integer(shots) and shots >= 1 and _is_integer(epochs) and epochs >= 1
            for shots, epochs in by_shots.items())):
        raise _field_error(where, "optimization.epochs_by_shots", "a mapping of shots to epochs (integers >= 1), "
                           "e.g. {1: 50, 16: 200}", by_shots)


def parse_methods(methods_file: Path) -> dict[str, dict[str, Any]]:
    """methods.yaml's `methods:` mapping (method name -> its default parameters and optimization), each a method
    registered in models/prompting/methods."""
    methods_raw = _read_yaml(methods_file)
    _check_fields(methods_file.name, methods_raw, ("methods",), required=("methods",))
    methods = methods_raw["methods"]
    if not isinstance(methods, dict):
        raise CatalogError(f"{methods_file.name}: methods: expected a mapping of method name to its defaults")
    for name in methods:
        if name not in METHODS:
            raise CatalogError(f"{methods_file.name}: method {_shown(name)} is not registered{_nearest(name, METHODS)}; "
                               f"known: {sorted(METHODS)}")
        _check_method_entry(methods_file, name, methods[name] or {})
    return methods


def _check_method_entry(path: Path, name: str, raw: Any) -> None:
    """One methods.yaml entry: parameters of the method's dataclass, and its published optimization schedule."""
    where = f"{path.name}: methods.{name}"
    _check_fields(where, raw, ("parameters", "optimization"))
    for section in ("parameters", "optimization"):
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            raise _field_error(where, section, "a mapping", raw[section])
    _check_dataclass_fields(where, raw.get("parameters") or {}, METHODS[name].parameters_type, prefix="parameters.")
    try:  # the method's own checks (its parameters dataclass's __post_init__), named by this file and entry
        parse_method_parameters(name, raw.get("parameters") or {})
    except ValueError as error:
        raise CatalogError(f"{where}: {error}") from error
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
    initialisation = entry.get("initialisation")
    if initialisation is not None and not isinstance(initialisation, str):
        raise _field_error(where, "initialisation", "the name of an entry of `initialisations:`", initialisation)
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
        if optimization.get("iterations_per_shot") is not None and entry.get("setting") is not None:
            raise CatalogError(f"{where}: {method}'s 'optimization.iterations_per_shot' needs shots; a learning "
                               "setting has none: set 'optimization.epochs'")
        if optimization.get("epochs") is None and optimization.get("iterations_per_shot") is None:
            by_shots = optimization.get("epochs_by_shots") or {}
            unscheduled = [shots for shots in entry.get("shots") or [16] if shots not in by_shots]
            if entry.get("setting") is not None or unscheduled:
                needs = ("'optimization.epochs' (a learning setting has no shots to look up in epochs_by_shots)"
                         if entry.get("setting") is not None else
                         f"'optimization.epochs', or epochs_by_shots entries for shots {unscheduled}")
                raise CatalogError(f"{where}: {method} needs {needs}")
    selection = entry.get("selection")
    if selection is not None and selection not in SELECTION_POLICIES:
        hint = (" (selecting on test is not a policy: choose on val)" if isinstance(selection, str)
                and "test" in selection else "")
        raise _field_error(where, "selection", f"one of {list(SELECTION_POLICIES)}{hint}", selection)
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
        raise CatalogError(f"{where}.setting: unknown learning setting {_shown(setting)}; known: {list(LEARNING_SETTINGS)}")
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
