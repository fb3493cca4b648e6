"""The `multitask:` section of experiments.yaml: MVLPT's source prompts (models/prompting/methods/mvlpt.py), trained
jointly on several datasets of different class sets and averaged over seeds, and the target experiments they start,
as a `MultitaskPlan`.

    multitask:
      sources: [Shapes, Colours, Textures, ColourShapes]   # required: >= 2 datasets, trained jointly
      experiments: ["mvlptcoop-k*-s?-source"]             # required: the source runs (keys or patterns)
      targets: [ShapesNoisy, Digits]                      # optional: default every dataset that is not a source

The source runs are grid entries of an MVLPT method (mvlpt_coop, mvlpt_vpt, mvlpt_ivlp); each is one multitask
partition, trained on the pooled few-shot sets of the sources, never on one dataset. The runs of one configuration
that differ only in their seed are averaged (their key without the seed names the average). Every other grid
experiment of an MVLPT method is a target: an ordinary experiment on the target datasets, which starts from the
average of the source runs of its method, parameters and shots.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.catalog.datasets import DatasetEntry, _dataset_names
from models.catalog.grid import ExperimentConfig
from models.catalog.transfer import matched_experiment_keys
from models.catalog.validation import CatalogError, _check_fields, _shown


@dataclass(frozen=True)
class MultitaskPlan:
    """Which source runs train jointly on which datasets, how they are averaged, and which targets start from
    each average on which datasets."""

    sources: tuple[str, ...] = ()
    experiments: tuple[str, ...] = ()  # the source runs, one multitask partition each
    averages: dict[str, tuple[str, ...]] = field(default_factory=dict)  # average key -> its source runs (seeds)
    targets: dict[str, str] = field(default_factory=dict)  # target experiment key -> the average it starts from
    target_datasets: tuple[str, ...] = ()
    # the sources' catalog entries, kept when a grid subset's `datasets` leaves them out: the sources are curated
    # and trained on whatever the subset runs the targets on
    source_entries: dict[str, DatasetEntry] = field(default_factory=dict)

    def runs_on(self, dataset: str, experiment: str) -> bool:
        """Whether (dataset, experiment) is an experiment partition: a source run trains on no single dataset, a
        target only on the target datasets; every other experiment is not this plan's business."""
        if experiment in self.experiments:
            return False
        return experiment not in self.targets or dataset in self.target_datasets

    def average_of(self, experiment: str) -> str | None:
        """The average a target starts from (None: not an MVLPT target)."""
        return self.targets.get(experiment)

    def on_experiments(self, keys: Collection[str]) -> "MultitaskPlan":
        """The plan a grid subset leaves: the targets among `keys`, each with its average over ALL the seeds of its
        source runs (a seed filter never shrinks an average: the checkpoint a key names is the same in every grid).
        Source runs the subset names without a target stay too."""
        targets = {key: average for key, average in self.targets.items() if key in keys}
        kept = {average for average in targets.values()}
        kept |= {average for average, runs in self.averages.items() if any(run in keys for run in runs)}
        averages = {average: runs for average, runs in self.averages.items() if average in kept}
        if not averages:
            return MultitaskPlan()
        experiments = tuple(run for runs in averages.values() for run in runs)
        return MultitaskPlan(self.sources, experiments, averages, targets, self.target_datasets, self.source_entries)


def average_key(experiment_key: str) -> str:
    """The key of the seed average of a source run: its key without the seed (`mvlptcoop-k16-s2-source` ->
    `mvlptcoop-k16-source`)."""
    return re.sub(r"-s\d+(?=-|$)", "", experiment_key, count=1)


def _prompt_configuration(experiment: ExperimentConfig) -> tuple:
    return experiment.method, experiment.shots, repr(sorted(experiment.parameters.items()))


def parse_multitask(path: Path, raw: Any, datasets: dict[str, DatasetEntry],
                    experiments: dict[str, ExperimentConfig]) -> MultitaskPlan:
    """Validate the `multitask:` section (module docstring) against the datasets and the grid: at least 2 known
    sources with training images; source runs of an MVLPT method on all classes, without augmentation, pseudolabels
    or a learning setting; targets that are no source; and every MVLPT experiment of the grid that is no source run
    started by exactly one average of its method, parameters and shots."""
    from models.prompting.methods.mvlpt import PROMPT_TYPES

    mvlpt_keys = [key for key, experiment in experiments.items() if experiment.method in PROMPT_TYPES]
    if raw is None:
        if mvlpt_keys:
            experiment = experiments[mvlpt_keys[0]]
            raise CatalogError(f"{experiment.where}: {experiment.method} starts from a multitask source prompt, but "
                               f"{path.name} has no `multitask:` section naming its sources")
        return MultitaskPlan()
    where = f"{path.name}: multitask"
    _check_fields(where, raw, ("sources", "experiments", "targets"), required=("sources", "experiments"))
    sources = _dataset_names(f"{where}.sources", raw["sources"], datasets)
    if len(sources) < 2:
        raise CatalogError(f"{where}.sources: MVLPT trains one prompt jointly on several datasets; {sources} is "
                           "one, give at least 2")
    if any(datasets[name].test_only for name in sources):
        raise CatalogError(f"{where}.sources: {[n for n in sources if datasets[n].test_only]} have no training "
                           "images (test-only)")
    keys = matched_experiment_keys(f"{where}.experiments", raw["experiments"], experiments, "mvlptcoop-k*-s?-source")
    averages: dict[str, list[str]] = {}
    for key in keys:
        experiment = experiments[key]
        if experiment.method not in PROMPT_TYPES:
            raise CatalogError(f"{where}.experiments: {_shown(key)} ({experiment.method}) is not an MVLPT method "
                               f"({sorted(PROMPT_TYPES)}); a source run is the prompt type its targets train")
        if (experiment.protocol != "all_classes" or experiment.setting is not None
                or experiment.augmentation is not None or experiment.pseudolabels is not None):
            raise CatalogError(f"{where}.experiments: {_shown(key)} sets a protocol, setting, augmentation or "
                               "pseudolabels; a source run trains on all classes of the sources' few-shot sets")
        averages.setdefault(average_key(key), []).append(key)
    for average, runs in averages.items():
        if len({_prompt_configuration(experiments[run]) for run in runs}) > 1:
            raise CatalogError(f"{where}.experiments: {runs} share the average {average} but differ in method, "
                               "parameters or shots; give their grid entries distinct names")
    if raw.get("targets") is None:
        target_datasets = [name for name, entry in datasets.items() if name not in sources and not entry.test_only]
    else:
        target_datasets = _dataset_names(f"{where}.targets", raw["targets"], datasets)
        shared = [name for name in target_datasets if name in sources]
        if shared:
            raise CatalogError(f"{where}.targets: {shared} are also sources; an MVLPT target is a task the source "
                               "prompt never trained on")
    if not target_datasets:
        raise CatalogError(f"{where}.targets: no dataset is left that is not a source")
    targets = {}
    by_configuration = {_prompt_configuration(experiments[runs[0]]): average for average, runs in averages.items()}
    for key in mvlpt_keys:
        if key in keys:
            continue
        experiment = experiments[key]
        average = by_configuration.get(_prompt_configuration(experiment))
        if average is None:
            same_shots = {name: experiments[runs[0]].method for name, runs in averages.items()
                          if experiments[runs[0]].shots == experiment.shots}
            reason = (f"the source runs at {experiment.shots} shots are {same_shots}: another prompt type or other "
                      "parameters than this target's" if same_shots else
                      f"no source run of {path.name} multitask.experiments has {experiment.shots} shots")
            raise CatalogError(f"{experiment.where}: {experiment.method} has no source prompt to start from "
                               f"(method, parameters and shots must be a source run's): {reason}")
        targets[key] = average
    return MultitaskPlan(tuple(sources), tuple(keys), {k: tuple(v) for k, v in averages.items()}, targets,
                         tuple(target_datasets), {name: datasets[name] for name in sources})
