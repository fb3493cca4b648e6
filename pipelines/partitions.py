"""Partitions: datasets, and dataset x experiment configuration, both read from the catalog."""

from __future__ import annotations

import dagster as dg

from models.catalog import load_catalog

_catalog = load_catalog()

dataset_partitions = dg.StaticPartitionsDefinition(list(_catalog.datasets))
experiment_partitions = dg.StaticPartitionsDefinition(list(_catalog.experiments))
dataset_experiment_partitions = dg.MultiPartitionsDefinition(
    {"dataset": dataset_partitions, "experiment": experiment_partitions}
)

# An experiment partition reads the curation outputs of its own dataset.
from_dataset = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="dataset")


def dataset_and_experiment(context: dg.AssetExecutionContext) -> tuple[str, str]:
    keys = context.partition_key.keys_by_dimension
    return keys["dataset"], keys["experiment"]


def multi_partition_key(dataset: str, experiment: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"dataset": dataset, "experiment": experiment})
