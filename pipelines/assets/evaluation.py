"""Evaluation of each prompt checkpoint on the test split, written to the DuckDB warehouse in one transaction."""


from datetime import datetime, timezone

import dagster as dg

from models.provenance import library_code_version
from pipelines.assets import sync as folders
from pipelines.assets.common import lineage_record, partition_inputs
from pipelines.assets.curation import base_new_classes, dataset_index, learning_setting_splits
from pipelines.assets.features import image_features
from pipelines.assets.sync import synced
from pipelines.assets.training import prompt_checkpoints
from pipelines.metadata import path_value
from pipelines.partitions import dataset_and_experiment, dataset_experiment_partitions, from_dataset
from pipelines.resources import PromptLabResource


@dg.asset(
    group_name="evaluation",
    partitions_def=dataset_experiment_partitions,
    deps=[prompt_checkpoints, dg.AssetDep(dataset_index, partition_mapping=from_dataset),
          dg.AssetDep(image_features, partition_mapping=from_dataset),
          dg.AssetDep(base_new_classes, partition_mapping=from_dataset),
          dg.AssetDep(learning_setting_splits, partition_mapping=from_dataset)],
    code_version=library_code_version(),
    # The one automation of this asset: checkpoint_evaluation_sensor (pipelines/sensors.py) evaluates this eager
    # condition every minute and launches the partitions whose checkpoint is newer than their metrics.
    automation_condition=dg.AutomationCondition.eager(),
    kinds={"pytorch", "duckdb", "parquet"},
    pool="gpu",
)
@synced(reads=(folders.backbone, folders.dataset_images, folders.curation, folders.experiment, folders.features),
        writes=(folders.features,))
def evaluation_metrics(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """Top-1, macro F1, ECE and per-class accuracy on test; base, new and their harmonic mean.

    Automated: a checkpoint (re)trained outside a run that also evaluates it is evaluated by
    checkpoint_evaluation_sensor (eager automation condition, checked every 60 s while the daemon runs)."""
    from models.data.index import dataset_fingerprint
    from models.experiments import evaluation_predictions, evaluation_scores
    from models.warehouse import workspace_warehouse_of

    started_at = datetime.now(timezone.utc)
    dataset, experiment_key = dataset_and_experiment(context)
    inputs = partition_inputs(promptlab, dataset, experiment_key)
    workspace, backbone = promptlab.workspace(), promptlab.load_backbone()
    checkpoint, splits = evaluation_predictions(inputs, workspace, backbone, text_cache=promptlab.text_cache(backbone))
    record = lineage_record(context, promptlab, "evaluation", inputs, backbone, checkpoint["templates"],
                            dataset_fingerprint(inputs.index), started_at,
                            config_extra={"checkpoint_config_hash": checkpoint["config_hash"]})
    scores = evaluation_scores(record.run_id, dataset, splits, checkpoint)
    warehouse = workspace_warehouse_of(workspace)
    # record_run writes the rows to disk before it opens the database (it creates the schema itself): a full disk
    # or a damaged file leaves them pending, never lost
    warehouse.record_run(record, scores.metric_rows, scores.per_class_rows, scores.predictions)
    top1 = scores.top1_accuracy
    context.log.info(f"{dataset}/{experiment_key}: top-1 {top1['test']:.4f}")
    return dg.MaterializeResult(
        metadata={"run_id": record.run_id, "top1_accuracy": top1["test"],
                  **{f"{k}_top1_accuracy": v for k, v in top1.items() if k != "test"},
                  "checkpoint": path_value(workspace.checkpoint_dir(dataset, experiment_key)),
                  "warehouse": path_value(warehouse.address)}
    )
