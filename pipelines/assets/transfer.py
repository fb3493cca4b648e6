"""Transfer evaluation: a prompt learned on all classes of a source dataset, applied to other datasets' class names
and scored on their test splits (cross-dataset and domain generalization, the catalog's `transfer:` section).

One partition per source x experiment; it writes one warehouse run per target, stage = the transfer protocol,
dataset = the target, source_dataset = the source, so transfer runs never replace in-domain evaluation runs. Every
target is scored before any run is written, so a failure leaves no rows of the partition.
Zero-shot needs no transfer run: the views take its evaluation on each target as the reference row.
"""


from datetime import datetime, timezone

import dagster as dg

from models.provenance import library_code_version
from pipelines.assets import sync as folders
from pipelines.assets.common import lineage_record, partition_inputs
from pipelines.assets.curation import base_new_classes, dataset_index
from pipelines.assets.sync import synced
from pipelines.assets.training import prompt_checkpoints
from pipelines.partitions import dataset_and_experiment, transfer_partitions
from pipelines.resources import PromptLabResource


@dg.asset(
    group_name="evaluation",
    partitions_def=transfer_partitions,
    # the source's checkpoint (same partition key), and the index and class names of every target dataset
    deps=[prompt_checkpoints, dg.AssetDep(dataset_index, partition_mapping=dg.AllPartitionMapping()),
          dg.AssetDep(base_new_classes, partition_mapping=dg.AllPartitionMapping())],
    code_version=library_code_version(),
    kinds={"pytorch", "duckdb", "parquet"},
    pool="gpu",
)
@synced(reads=(folders.backbone, folders.experiment, folders.transfer_targets, folders.features),
        writes=(folders.features,))
def transfer_metrics(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """Top-1, macro F1, ECE and per-class accuracy of the source's learned prompt on each target's test split."""
    from dataclasses import replace

    from models.data.index import dataset_fingerprint
    from models.experiments import predictions_frame, transferred_prompt_scores
    from models.warehouse import metric_rows, per_class_rows, workspace_warehouse_of

    source, experiment_key = dataset_and_experiment(context)
    workspace, targets = promptlab.workspace(), transfer_targets(promptlab.catalog(), source, experiment_key)
    backbone = promptlab.load_backbone()
    # every target is scored before anything is written, so a failing target leaves no rows of the partition
    scored = []
    for protocol, target in ((protocol, target) for protocol, names in targets.items() for target in names):
        started_at = datetime.now(timezone.utc)
        inputs = target_inputs(promptlab, source, target, experiment_key)
        checkpoint, split, result = transferred_prompt_scores(
            workspace.checkpoint_dir(source, experiment_key), inputs, workspace, backbone,
            text_cache=promptlab.text_cache(backbone))
        record = lineage_record(context, promptlab, protocol, inputs, backbone, checkpoint["templates"],
                                dataset_fingerprint(inputs.index), started_at,
                                config_extra={"checkpoint_config_hash": checkpoint["config_hash"],
                                              "source_dataset": source, "classnames": inputs.classnames})
        scored.append((target, replace(record, source_dataset=source), split, result))
        context.log.info(f"{protocol}: {source} -> {target} ({len(inputs.classnames)} classes), "
                         f"{experiment_key}: top-1 {result.top1_accuracy:.4f}")
    warehouse = workspace_warehouse_of(workspace)
    warehouse.ensure_schema()
    for target, record, split, result in scored:
        warehouse.record_run(record, metric_rows(split.split, result.scalar_metrics()),
                             per_class_rows(split.split, result.per_class),
                             predictions_frame(record.run_id, target, split))
    top1 = {target: result.top1_accuracy for target, _, _, result in scored}
    run_ids = {target: record.run_id for target, record, _, _ in scored}
    return dg.MaterializeResult(metadata={
        "source": source,
        "targets": dg.MetadataValue.json({protocol: list(names) for protocol, names in targets.items()}),
        "top1_accuracy_by_target": dg.MetadataValue.json(top1),
        "run_ids": dg.MetadataValue.json(run_ids),
        "warehouse": warehouse.address,
    })


def transfer_targets(catalog, source: str, experiment_key: str) -> dict[str, list[str]]:
    """The catalog's targets of a transfer partition, by protocol; a partition the catalog does not name is refused."""
    targets = catalog.transfer.targets_of(source)
    if experiment_key not in catalog.transfer.experiments or not targets:
        raise ValueError(f"{source}/{experiment_key} is not a transfer partition of {catalog.directory}/"
                         f"experiments.yaml (transfer: experiments {list(catalog.transfer.experiments)}, "
                         f"sources {list(catalog.transfer.sources)})")
    return targets


def target_inputs(promptlab: PromptLabResource, source: str, target: str, experiment_key: str):
    """The curated inputs of a transfer target; refused, saying what to run, while the target is not curated."""
    workspace = promptlab.workspace()
    if not workspace.class_split_path(target).exists():
        raise FileNotFoundError(f"transfer {source} -> {target}: the target is not curated yet "
                                f"({workspace.class_split_path(target)} is missing); run curation_job for it")
    return partition_inputs(promptlab, target, experiment_key)
