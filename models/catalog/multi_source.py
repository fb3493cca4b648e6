"""The `multi_source:` section of experiments.yaml: multi-source domain generalisation over catalog datasets that are
domains of one class set (the embedded Shapes, ShapesSketch, ShapesNoisy: datasets.yaml `domain_shift_of`), as a
`MultiSourcePlan`. Each split holds one domain out as its test set and trains the listed experiments on the union of
the other domains' few-shot splits (models/experiments/multi_source.py), with a domain label per image.

    multi_source:
      experiments: [coop-k16-s?, spg-k16-s?]
      splits:
        - held_out: ShapesSketch             # required: the domain tested on, never trained on
          sources: [Shapes, ShapesNoisy]     # optional: default every other domain of its family

A family is a dataset and the datasets whose domain_shift_of it is. DomainBed's datasets need no section: each of
their entries is already one leave-one-domain-out split (models/data/layouts/domainbed.py).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.catalog.datasets import DatasetEntry, _dataset_names
from models.catalog.grid import ExperimentConfig
from models.catalog.transfer import matched_experiment_keys
from models.catalog.validation import CatalogError, _check_fields, _shown
from models.prompting.methods import METHODS


@dataclass(frozen=True)
class MultiSourceSplit:
    held_out: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class MultiSourcePlan:
    """Which experiments train on which source domains and are tested on which held-out domain; each split x
    experiment is one multi-source partition."""

    experiments: tuple[str, ...] = ()
    splits: tuple[MultiSourceSplit, ...] = ()

    def on_experiments(self, keys: Collection[str]) -> "MultiSourcePlan":
        """The plan a grid subset leaves: its experiments among `keys`; no split without an experiment."""
        kept = tuple(key for key in self.experiments if key in keys)
        return MultiSourcePlan(kept, self.splits) if kept else MultiSourcePlan()

    def on_datasets(self, datasets: Collection[str]) -> "MultiSourcePlan":
        """The plan a grid subset's `datasets` filter leaves: the splits whose held-out domain and sources are all
        among `datasets` (a split is not changed by dropping a source: its key would name another experiment)."""
        kept = tuple(split for split in self.splits if split.held_out in datasets
                     and all(name in datasets for name in split.sources))
        return MultiSourcePlan(self.experiments, kept) if kept else MultiSourcePlan()

    def split_of(self, held_out: str) -> MultiSourceSplit:
        """The split that holds `held_out` out; refused, naming the plan's, when there is none."""
        for split in self.splits:
            if split.held_out == held_out:
                return split
        raise KeyError(f"no multi_source split holds {held_out!r} out; held-out domains: "
                       f"{[split.held_out for split in self.splits]}")

    @property
    def held_out(self) -> tuple[str, ...]:
        return tuple(split.held_out for split in self.splits)

    def partition_keys(self) -> list[tuple[str, str]]:
        """(held-out domain, experiment) of each multi-source partition, split by split."""
        return [(split.held_out, key) for split in self.splits for key in self.experiments]


def domain_family(name: str, datasets: dict[str, DatasetEntry]) -> list[str]:
    """The datasets of one class set that `name` belongs to, in catalog order: the root and its shifted variants."""
    root = datasets[name].domain_shift_of or name
    return [other for other, entry in datasets.items() if other == root or entry.domain_shift_of == root]


def parse_multi_source(path: Path, raw: Any, datasets: dict[str, DatasetEntry],
                       experiments: dict[str, ExperimentConfig]) -> MultiSourcePlan:
    """Validate the `multi_source:` section (module docstring): experiments as keys or fnmatch patterns trained on
    all classes, and splits whose held-out domain is named, is no source, and leaves at least one source of its
    own family."""
    if raw is None:
        return MultiSourcePlan()
    where = f"{path.name}: multi_source"
    _check_fields(where, raw, ("experiments", "splits"), required=("experiments", "splits"))
    keys = matched_experiment_keys(f"{where}.experiments", raw["experiments"], experiments, "spg-k16-s?")
    for key in keys:
        experiment = experiments[key]
        if not METHODS[experiment.method].trains_prompts:
            raise CatalogError(f"{where}.experiments: {_shown(key)} ({experiment.method}) trains nothing; its own "
                               "evaluation on the held-out dataset is the reference row")
        if experiment.protocol != "all_classes":
            raise CatalogError(f"{where}.experiments: {_shown(key)} was trained with protocol {experiment.protocol}; "
                               "multi-source training uses all classes of the sources (all_classes)")
        if (experiment.setting is not None or experiment.pseudolabels is not None or experiment.augmentation is not None
                or METHODS[experiment.method].adapts_from_pool):
            raise CatalogError(f"{where}.experiments: {_shown(key)} trains from a learning setting, pseudolabels, "
                               "augmentation or the unlabelled pool, which belong to one dataset's partition; "
                               "multi-source training takes the sources' few-shot subsets alone")
    splits_raw = raw["splits"]
    if not isinstance(splits_raw, list) or not splits_raw:
        raise CatalogError(f"{where}.splits: expected a non-empty list of {{held_out: <dataset>, sources: "
                           f"[<dataset>, ...]}}, got {_shown(splits_raw)}")
    splits: list[MultiSourceSplit] = []
    for index, entry in enumerate(splits_raw):
        place = f"{where}.splits[{index}]"
        _check_fields(place, entry, ("held_out", "sources"))
        if entry.get("held_out") is None:
            raise CatalogError(f"{place}.held_out: missing; a domain generalisation split names the domain it is "
                               "tested on (a dataset of datasets.yaml)")
        held_out = entry["held_out"]
        if not isinstance(held_out, str) or held_out not in datasets:
            raise CatalogError(f"{place}.held_out: unknown dataset {_shown(held_out)}; datasets.yaml has "
                               f"{list(datasets)}")
        family = domain_family(held_out, datasets)
        if entry.get("sources") is None:
            sources = [name for name in family if name != held_out]
            if not sources:
                raise CatalogError(f"{place}.held_out: {held_out} is the only domain of its family (no dataset has "
                                   f"domain_shift_of: {datasets[held_out].domain_shift_of or held_out}), so holding it "
                                   "out leaves no source domain to train on")
        else:
            sources = _dataset_names(f"{place}.sources", entry["sources"], datasets)
            if held_out in sources:
                raise CatalogError(f"{place}.sources: the held-out domain {held_out} is also a source; its images "
                                   "would be trained on")
            strangers = [name for name in sources if name not in family]
            if strangers:
                raise CatalogError(f"{place}.sources: {strangers} are not domains of {held_out}'s class set (its "
                                   f"family by domain_shift_of: {family})")
        if any(datasets[name].test_only for name in sources):
            raise CatalogError(f"{place}.sources: {[n for n in sources if datasets[n].test_only]} have no training "
                               "images (test-only)")
        split = MultiSourceSplit(held_out, tuple(sources))
        if split in splits:
            raise CatalogError(f"{place}: the same split as an earlier entry")
        if any(earlier.held_out == held_out for earlier in splits):
            # a partition is (held-out domain, experiment): one split per held-out domain
            raise CatalogError(f"{place}.held_out: {held_out} is already held out by an earlier split; a domain is "
                               "held out once (its partitions are keyed by it)")
        splits.append(split)
    return MultiSourcePlan(tuple(keys), tuple(splits))
