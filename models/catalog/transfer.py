"""The `transfer:` section of experiments.yaml: which trained prompts are evaluated on which other datasets
(cross-dataset and domain-generalization transfer), as a `TransferPlan`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.catalog.datasets import DatasetEntry, _dataset_names
from models.catalog.grid import ExperimentConfig
from models.catalog.validation import CatalogError, _check_fields, _shown
from models.prompting.methods import METHODS


# Transfer protocols (the `transfer:` section of experiments.yaml): a prompt trained on all classes of a source
# dataset is evaluated on other datasets with their own class names. cross_dataset: every other dataset except the
# source's domain-shifted variants; domain_generalization: the datasets whose domain_shift_of is the source.
TRANSFER_PROTOCOLS = ("cross_dataset", "domain_generalization")


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

    def on_datasets(self, datasets: Collection[str]) -> "TransferPlan":
        """The plan a grid subset's `datasets` filter leaves: its sources among `datasets`, each with its targets
        among them; a source left without a target, and a protocol without a source, drop out."""
        targets = {}
        for protocol, by_source in self.targets.items():
            kept = {source: tuple(name for name in names if name in datasets)
                    for source, names in by_source.items() if source in datasets}
            kept = {source: names for source, names in kept.items() if names}
            if kept:
                targets[protocol] = kept
        return TransferPlan(self.experiments, targets) if targets else TransferPlan()


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
    raise CatalogError(f"unknown transfer protocol {_shown(protocol)}; known: {TRANSFER_PROTOCOLS}")


def matched_experiment_keys(where: str, patterns: Any, experiments: dict[str, ExperimentConfig],
                            example: str) -> list[str]:
    """The grid's experiment keys a section's `experiments:` list names (keys or fnmatch patterns), in the order
    first matched; a list that is not one of strings, or a pattern that matches nothing, is refused naming `where`."""
    if not isinstance(patterns, list) or not patterns or any(not isinstance(p, str) for p in patterns):
        raise CatalogError(f"{where}: expected a non-empty list of experiment keys or patterns (e.g. {example}), got "
                           f"{_shown(patterns)}")
    keys: list[str] = []
    for pattern in patterns:
        matched = [key for key in experiments if fnmatch.fnmatchcase(key, pattern)]
        if not matched:
            raise CatalogError(f"{where}: {_shown(pattern)} matches no experiment of the grid ({sorted(experiments)})")
        keys += [key for key in matched if key not in keys]
    return keys


def parse_transfer(path: Path, raw: Any, datasets: dict[str, DatasetEntry],
                   experiments: dict[str, ExperimentConfig]) -> TransferPlan:
    """Validate the `transfer:` section: experiment keys or shell-style patterns (fnmatch: `coop-k16-s?`) that
    must name checkpoints trained on all classes with a state shared by all classes, and per protocol the source
    datasets and optionally a restriction of their default targets."""
    if raw is None:
        return TransferPlan()
    where = f"{path.name}: transfer"
    _check_fields(where, raw, ("experiments", *TRANSFER_PROTOCOLS))
    keys = matched_experiment_keys(f"{where}.experiments", raw.get("experiments"), experiments, "coop-k16-s?")
    for key in keys:
        experiment, spec = experiments[key], METHODS[experiments[key].method]
        if not spec.trains_prompts:
            raise CatalogError(f"{where}.experiments: {_shown(key)} ({experiment.method}) learns nothing to transfer; the "
                               "transfer views show its own evaluation on each target as the reference row")
        if experiment.protocol != "all_classes":
            raise CatalogError(f"{where}.experiments: {_shown(key)} was trained with protocol {experiment.protocol}; "
                               "transfer evaluates prompts trained on all classes of the source (all_classes)")
        if not spec.transfers_to_other_classes(experiment.parameters):
            raise CatalogError(f"{where}.experiments: {_shown(key)}: {experiment.method} with these parameters learns one "
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
