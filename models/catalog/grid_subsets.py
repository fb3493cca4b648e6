"""The named subsets of the grid (grids.yaml), picked with `promptlab run --grid NAME` or $PROMPTLAB_GRID.

A subset only removes experiments (by method, shots, seed, learning setting, pseudolabel strategy or key pattern)
and datasets; the ones it keeps have the same keys and hashes as in the full grid, and the transfer and test-time
plans keep their surviving checkpoints, sources and targets. Its `test_time:` block keeps the test-time runs of some
modes and starts and may score fewer test images (`max_test_images`, recorded with each run's configuration).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.catalog.datasets import DatasetEntry
from models.catalog.grid import ExperimentConfig
from models.catalog.testtime import TestTimePlan
from models.catalog.testtime_settings import TEST_TIME_MODES
from models.catalog.transfer import TransferPlan
from models.catalog.validation import (CatalogError, _check_fields, _field_error, _integer_list, _integer_value,
                                       _nearest, _read_yaml, _shown)
from models.prompting.methods import METHODS


# Named subsets of the default grid (grids.yaml), picked with `promptlab run --grid NAME` or $PROMPTLAB_GRID. A
# subset only removes experiments; the ones it keeps have the same keys and hashes as in the full grid.
GRID_SUBSET_FILTERS = ("methods", "shots", "seeds", "settings", "strategies", "experiments", "datasets", "exclude")
# A subset's `test_time:` block: the test-time runs it keeps, by mode and by start (experiment keys or shell-style
# patterns), and how many test images per dataset they score instead of the test_time section's max_test_images;
# `test_time: false` keeps none.
TEST_TIME_FILTERS = ("modes", "starts", "max_test_images")
NO_PSEUDOLABELS = "none"  # the `strategies` filter's name for experiments without a pseudolabel strategy
DEFAULT_GRID = "default"


def _grid_subsets(directory: Path) -> dict[str, Any]:
    """The `grids:` mapping of grids.yaml (name -> filters); empty when the file is absent."""
    path = directory / "grids.yaml"
    subsets = (_read_yaml(path).get("grids") or {}) if path.exists() else {}
    if not isinstance(subsets, dict):
        raise CatalogError(f"{path}: grids: expected a mapping of grid names to filters, got {_shown(subsets)}")
    return subsets


def _check_string_lists(where: str, raw: dict[str, Any], field_names: tuple[str, ...]) -> None:
    """Each of `field_names` that `raw` sets is a non-empty list of strings (names and patterns)."""
    for field_name in field_names:
        values = raw.get(field_name)
        if values is not None and (not isinstance(values, list) or not values):
            raise CatalogError(f"{where}.{field_name}: expected a non-empty list, got {_shown(values)}")
        for position, value in enumerate(values or []):
            if not isinstance(value, str):
                raise _field_error(where, f"{field_name}[{position}]", "a string", value)


def _check_test_time_filter(where: str, block: Any) -> None:
    """A subset's `test_time:` block: known fields, modes among the test-time modes, starts strings, a positive
    max_test_images. Whether its starts match a run is checked when the subset is run (TestTimePlan.restricted_to)."""
    if block is None or block is False:  # false: the subset keeps no test-time run
        return
    _check_fields(where, block, TEST_TIME_FILTERS)
    _check_string_lists(where, block, ("modes", "starts"))
    unknown_modes = sorted(set(block.get("modes") or []) - set(TEST_TIME_MODES))
    if unknown_modes:
        raise CatalogError(f"{where}.modes: {unknown_modes} are not test-time modes"
                           f"{_nearest(unknown_modes[0], TEST_TIME_MODES)}; known: {list(TEST_TIME_MODES)}")
    if block.get("max_test_images") is not None:
        _integer_value(where, "max_test_images", block["max_test_images"], minimum=1)


def _check_grid_subset(where: str, subset: Any, experiments: dict[str, ExperimentConfig],
                       require_matches: bool = True, datasets: Collection[str] | None = None) -> None:
    """One named subset of grids.yaml: known filters, each a non-empty list of known values; with
    ``require_matches`` (the subset being run) every experiment pattern must match a key of this grid, and every
    name of its `datasets` filter a dataset of `datasets`. Subsets not being run are checked without it: a catalog
    with a smaller grid or fewer datasets keeps the shipped subsets' patterns and names."""
    _check_fields(where, subset, ("description", *GRID_SUBSET_FILTERS, "test_time", "multi_source"))
    if "multi_source" in subset and subset["multi_source"] is not False:
        raise CatalogError(f"{where}.multi_source: only `false` (keep no multi-source partition) is allowed, got "
                           f"{_shown(subset['multi_source'])}; the splits kept otherwise follow the subset's datasets "
                           "and experiments")
    _check_string_lists(where, subset, tuple(name for name in GRID_SUBSET_FILTERS if name not in ("shots", "seeds")))
    for field_name in ("shots", "seeds"):
        values = subset.get(field_name)
        if values is not None and (not isinstance(values, list) or not values):
            raise CatalogError(f"{where}.{field_name}: expected a non-empty list, got {_shown(values)}")
    _check_test_time_filter(f"{where}.test_time", subset.get("test_time"))
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
    for field_name in ("experiments", "exclude"):
        for pattern in (subset.get(field_name) or []) if require_matches else []:
            if not any(fnmatch.fnmatchcase(key, str(pattern)) for key in experiments):
                raise CatalogError(f"{where}.{field_name}: {_shown(pattern)} matches no experiment key of the grid")
    unknown_datasets = [name for name in subset.get("datasets") or [] if name not in datasets] \
        if require_matches and datasets is not None else []
    if unknown_datasets:
        raise CatalogError(f"{where}.datasets: {unknown_datasets} are not datasets of datasets.yaml"
                           f"{_nearest(unknown_datasets[0], datasets)}; known: {list(datasets)}")


def grid_subset_names(directory: Path) -> list[str]:
    """The subsets grids.yaml defines (besides `default`, the whole grid): the CLI's choices, read before any
    catalog is loaded. A grids.yaml that cannot be read gives none here; load_catalog refuses it, naming the file."""
    try:
        return [name for name in _grid_subsets(directory) if isinstance(name, str)]
    except CatalogError:
        return []


@dataclass(frozen=True)
class GridSelection:
    """What a grid subset leaves of the catalog's sections."""

    datasets: dict[str, DatasetEntry]
    experiments: dict[str, ExperimentConfig]
    transfer: TransferPlan
    test_time: TestTimePlan
    keeps_multi_source: bool = True  # `multi_source: false` keeps none of the multi_source section's partitions


def select_grid_subset(directory: Path, name: str, datasets: dict[str, DatasetEntry],
                       experiments: dict[str, ExperimentConfig], transfer: TransferPlan,
                       test_time: TestTimePlan) -> GridSelection:
    """Keep the datasets and experiments a named subset of grids.yaml selects (every filter it sets must match; an
    experiment without shots or seed, zero-shot, passes those filters). The transfer plan keeps its surviving
    experiments, sources and targets; the test-time plan the runs whose start, seed, mode and start pattern survive,
    on the surviving datasets, with the subset's max_test_images if it sets one."""
    if name == DEFAULT_GRID:
        return GridSelection(datasets, experiments, transfer, test_time)
    subsets = _grid_subsets(directory)
    if name not in subsets:
        raise CatalogError(f"{directory / 'grids.yaml'}: no grid named {_shown(name)}; known: {[DEFAULT_GRID, *subsets]}")
    subset = subsets[name]
    where = f"grids.yaml: grids.{name}"
    _check_grid_subset(where, subset, experiments, datasets=datasets)
    patterns = subset.get("experiments")

    def kept(experiment: ExperimentConfig) -> bool:
        if subset.get("methods") is not None and experiment.method not in subset["methods"]:
            return False
        if patterns is not None and not any(fnmatch.fnmatchcase(experiment.key, str(p)) for p in patterns):
            return False
        if any(fnmatch.fnmatchcase(experiment.key, str(p)) for p in subset.get("exclude") or []):
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
    if subset.get("datasets") is not None:
        datasets = {key: entry for key, entry in datasets.items() if key in subset["datasets"]}
        transfer = transfer.on_datasets(datasets)
    transferred = tuple(key for key in transfer.experiments if key in selected)
    block = subset.get("test_time") or {}
    if subset.get("test_time") is False:
        test_time = TestTimePlan()
    else:
        test_time = test_time.restricted_to(selected, subset.get("seeds"),
                                            datasets if subset.get("datasets") is not None else None,
                                            block.get("modes"), block.get("starts"), block.get("max_test_images"),
                                            where=f"{where}.test_time")
    return GridSelection(datasets, selected,
                         TransferPlan(transferred, transfer.targets) if transferred else TransferPlan(), test_time,
                         keeps_multi_source=subset.get("multi_source") is not False)
