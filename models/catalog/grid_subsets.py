"""The named subsets of the grid (grids.yaml), picked with `promptlab run --grid NAME` or $PROMPTLAB_GRID.

A subset only removes experiments (by method, shots, seed, learning setting, pseudolabel strategy or key pattern);
the ones it keeps have the same keys and hashes as in the full grid, and the transfer plan keeps its surviving ones.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from models.catalog.grid import ExperimentConfig
from models.catalog.transfer import TransferPlan
from models.catalog.validation import (CatalogError, _check_fields, _field_error, _integer_list, _nearest, _read_yaml,
                                       _shown)
from models.prompting.methods import METHODS


# Named subsets of the default grid (grids.yaml), picked with `promptlab run --grid NAME` or $PROMPTLAB_GRID. A
# subset only removes experiments; the ones it keeps have the same keys and hashes as in the full grid.
GRID_SUBSET_FILTERS = ("methods", "shots", "seeds", "settings", "strategies", "experiments")
NO_PSEUDOLABELS = "none"  # the `strategies` filter's name for experiments without a pseudolabel strategy
DEFAULT_GRID = "default"


def _grid_subsets(directory: Path) -> dict[str, Any]:
    """The `grids:` mapping of grids.yaml (name -> filters); empty when the file is absent."""
    path = directory / "grids.yaml"
    subsets = (_read_yaml(path).get("grids") or {}) if path.exists() else {}
    if not isinstance(subsets, dict):
        raise CatalogError(f"{path}: grids: expected a mapping of grid names to filters, got {_shown(subsets)}")
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
            raise CatalogError(f"{where}.{field_name}: expected a non-empty list, got {_shown(values)}")
        if field_name not in ("shots", "seeds"):  # names and patterns (shots and seeds: integers, below)
            for position, value in enumerate(values or []):
                if not isinstance(value, str):
                    raise _field_error(where, f"{field_name}[{position}]", "a string", value)
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
            raise CatalogError(f"{where}.experiments: {_shown(pattern)} matches no experiment key of the grid")


def grid_subset_names(directory: Path) -> list[str]:
    """The subsets grids.yaml defines (besides `default`, the whole grid): the CLI's choices, read before any
    catalog is loaded. A grids.yaml that cannot be read gives none here; load_catalog refuses it, naming the file."""
    try:
        return [name for name in _grid_subsets(directory) if isinstance(name, str)]
    except CatalogError:
        return []


def select_grid_subset(directory: Path, name: str, experiments: dict[str, ExperimentConfig],
                       transfer: TransferPlan) -> tuple[dict[str, ExperimentConfig], TransferPlan]:
    """Keep the experiments a named subset of grids.yaml selects (every filter it sets must match; an experiment
    without shots or seed, zero-shot, passes those filters). The transfer plan keeps its surviving experiments."""
    if name == DEFAULT_GRID:
        return experiments, transfer
    subsets = _grid_subsets(directory)
    if name not in subsets:
        raise CatalogError(f"{directory / 'grids.yaml'}: no grid named {_shown(name)}; known: {[DEFAULT_GRID, *subsets]}")
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
