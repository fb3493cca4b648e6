"""Partitions: datasets, dataset x experiment configuration, and transfer source x experiment, all read from the
catalog; and which partitions make up each evaluation protocol (few_shot, base_to_new, transfer)."""

from __future__ import annotations

import dagster as dg

from models.catalog import EVALUATION_PROTOCOLS, Catalog, load_catalog
from models.prompting.methods import get_method

_catalog = load_catalog()

dataset_partitions = dg.StaticPartitionsDefinition(list(_catalog.datasets))
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


def protocol_experiment_partitions(catalog: Catalog, protocol: str) -> list[tuple[str, str]]:
    """(dataset, experiment) partitions a protocol needs, in catalog order. Untrained experiments (zero-shot) are
    the reference of every protocol; few_shot is every experiment trained on all classes; base_to_new those of
    protocol base_to_new; transfer the source checkpoints plus the zero-shot runs on sources and targets."""
    if protocol not in EVALUATION_PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {EVALUATION_PROTOCOLS}")
    untrained = [key for key, experiment in catalog.experiments.items()
                 if not get_method(experiment.method).trains_prompts]
    if protocol == "test_time":
        # the starting checkpoints on their source, the zero-shot references on the source and its shifts, and the
        # source's transfer checkpoints (CoOp and the others on the shifts: the table's trained rows)
        plan = catalog.test_time
        involved = {name for targets in plan.targets.values() for name in targets}
        wanted = {(source, run.start) for source in plan.sources for run in plan.runs.values()}
        wanted |= {(source, key) for source in plan.sources for key in catalog.transfer.experiments}
        wanted |= {(name, key) for name in involved for key in untrained}
        return [(d, e) for d in catalog.datasets for e in catalog.experiments if (d, e) in wanted
                and runs_on(catalog, d, e)]
    if protocol == "transfer":
        involved = {name for source in catalog.transfer.sources
                    for targets in catalog.transfer.targets_of(source).values() for name in (source, *targets)}
        wanted = {(source, key) for source in catalog.transfer.sources for key in catalog.transfer.experiments}
        wanted |= {(name, key) for name in involved for key in untrained}
        return [(d, e) for d in catalog.datasets for e in catalog.experiments if (d, e) in wanted
                and runs_on(catalog, d, e)]
    keys = [key for key, experiment in catalog.experiments.items()
            if key in untrained or experiment.protocol == ("all_classes" if protocol == "few_shot" else protocol)]
    return [(dataset, key) for dataset in catalog.datasets for key in keys if runs_on(catalog, dataset, key)]


def transfer_partition_keys(catalog: Catalog) -> list[tuple[str, str]]:
    """(source dataset, experiment) of every transfer partition."""
    return [(source, key) for source in catalog.transfer.sources for key in catalog.transfer.experiments]


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


def test_time_partition_keys(catalog: Catalog) -> list[tuple[str, str]]:
    """(source dataset, test-time run) of every test-time partition."""
    return [(source, key) for source in catalog.test_time.sources for key in catalog.test_time.runs]
