"""Partitions: datasets, dataset x experiment configuration, and transfer source x experiment, all read from the
catalog; and which partitions make up each evaluation protocol (few_shot, base_to_new, transfer)."""

from __future__ import annotations

import dagster as dg

from models.catalog import Catalog, load_catalog
from models.plan import selection

_catalog = load_catalog()

# the catalog's datasets, and the multitask sources a grid subset's `datasets` leaves out (they are still curated)
dataset_partitions = dg.StaticPartitionsDefinition(
    list(_catalog.datasets) + [name for name in _catalog.multitask.sources if name not in _catalog.datasets])
experiment_partitions = dg.StaticPartitionsDefinition(list(_catalog.experiments))
dataset_experiment_partitions = dg.MultiPartitionsDefinition(
    {"dataset": dataset_partitions, "experiment": experiment_partitions}
)
# Transfer: the checkpoints of the catalog's `transfer:` section, one partition per source dataset x experiment
# (a subset of dataset_experiment_partitions, same dimension names and keys, so the checkpoint maps one to one).
transfer_partitions = dg.MultiPartitionsDefinition({
    "dataset": dg.StaticPartitionsDefinition(list(_catalog.transfer.sources)),
    "experiment": dg.StaticPartitionsDefinition(list(_catalog.transfer.experiments)),
})

# Test-time tuning (the catalog's `test_time:` section): one partition per source dataset x test-time run
# (tpt-zeroshot-s1, tpt-coop-k16-s1, ...). A run reads the checkpoint of the experiment it starts from.
test_time_partitions = dg.MultiPartitionsDefinition({
    "dataset": dg.StaticPartitionsDefinition(list(_catalog.test_time.sources)),
    "experiment": dg.StaticPartitionsDefinition(list(_catalog.test_time.runs)),
})

# An experiment partition reads the curation outputs of its own dataset.
from_dataset = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="dataset")

# `promptlab run --protocol` (EVALUATION_PROTOCOLS): the few-shot and base-to-new protocols are sets of experiment
# partitions, transfer adds the transfer partitions on top of the checkpoints and zero-shot references it reads.


def dataset_and_experiment(context: dg.AssetExecutionContext) -> tuple[str, str]:
    keys = context.partition_key.keys_by_dimension
    return keys["dataset"], keys["experiment"]


def multi_partition_key(dataset: str, experiment: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"dataset": dataset, "experiment": experiment})


def runs_on(catalog: Catalog, dataset: str, experiment: str) -> bool:
    """Whether the (dataset, experiment) partition runs (Catalog.runs_on: nothing trains on a test-only dataset)."""
    return catalog.runs_on(dataset, experiment)


# Which partitions each protocol needs is a decision of the library (models/plan/selection.py), shared with the plan.
protocol_experiment_partitions = selection.protocol_experiment_partitions
transfer_partition_keys = selection.transfer_partition_keys
test_time_partition_keys = selection.test_time_partition_keys


def test_time_start_mapping(catalog: Catalog) -> dg.MultiPartitionMapping:
    """prompt_checkpoints (dataset, experiment) -> the test-time runs (same dataset) that start from it."""
    runs_by_start: dict[str, list[str]] = {}
    for key, run in catalog.test_time.runs.items():
        runs_by_start.setdefault(run.start, []).append(key)
    return dg.MultiPartitionMapping({
        "dataset": dg.DimensionPartitionMapping("dataset", dg.IdentityPartitionMapping()),
        "experiment": dg.DimensionPartitionMapping("experiment", dg.StaticPartitionMapping(runs_by_start)),
    })


test_time_from_start = test_time_start_mapping(_catalog)


# Multi-source domain generalisation (the catalog's `multi_source:` section): one partition per held-out domain x
# experiment, trained on the union of that split's source domains (models/experiments/multi_source.py).
multi_source_partitions = dg.MultiPartitionsDefinition({
    "held_out": dg.StaticPartitionsDefinition(list(_catalog.multi_source.held_out)),
    "experiment": dg.StaticPartitionsDefinition(list(_catalog.multi_source.experiments)),
})
multi_source_partition_keys = selection.multi_source_partition_keys


def multi_source_partition_key(held_out: str, experiment: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"held_out": held_out, "experiment": experiment})


# MVLPT (the catalog's `multitask:` section): one partition per source run (trained on the pooled sources), one per
# seed average of a source configuration, each average reading its seeds' runs.
multitask_source_partitions = dg.StaticPartitionsDefinition(list(_catalog.multitask.experiments))
multitask_average_partitions = dg.StaticPartitionsDefinition(list(_catalog.multitask.averages))
multitask_runs_of_average = dg.StaticPartitionMapping(
    {run: average for average, runs in _catalog.multitask.averages.items() for run in runs})

# Upstream initialisations (the catalog's `initialisations:` section; GRAM, PVP): one partition per entry the grid
# starts from, each learned on the corpus.
initialisation_partitions = dg.StaticPartitionsDefinition(sorted(_catalog.initialisations.entries))
