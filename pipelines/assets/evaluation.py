"""Evaluation of each prompt checkpoint on the test split, written to the DuckDB warehouse in one transaction."""


import json
from datetime import datetime, timezone

import dagster as dg
import numpy as np
import polars as pl

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
    from models.evaluation.metrics import classification_metrics, harmonic_mean
    from models.experiments import (evaluation_splits, load_prompt_checkpoint, method_inputs_for_images,
                                    predict_log_probabilities, predictions_frame)
    from models.warehouse import MetricRow, PerClassRow, workspace_warehouse_of

    started_at = datetime.now(timezone.utc)
    dataset, experiment_key = dataset_and_experiment(context)
    inputs = partition_inputs(promptlab, dataset, experiment_key)
    workspace = promptlab.workspace()
    backbone = promptlab.load_backbone()
    # Scored on all the dataset's classes; base and new are then each scored among their own classes.
    classifier, checkpoint = load_prompt_checkpoint(workspace.checkpoint_dir(dataset, experiment_key),
                                                    backbone.model, backbone.tokenizer, classnames=inputs.classnames,
                                                    backbone_weights_sha256=backbone.weights_sha256,
                                                    text_cache=promptlab.text_cache(backbone))
    test = inputs.index.filter(pl.col("split") == "test").sort("relative_path")
    # cached features for frozen-image-tower methods, preprocessed images for vision-prompt methods
    image_inputs = method_inputs_for_images(checkpoint["method"], backbone, inputs.image_set,
                                            test["relative_path"].to_list(), test["content_sha256"].to_list(),
                                            workspace.feature_cache_dir)
    class_split = json.loads(workspace.class_split_path(dataset).read_text())
    generalized = None
    if inputs.experiment.setting == "trzsl":
        seen = inputs.experiment_rows(workspace).seen_labels
        generalized = {"seen": list(seen), "unseen": [i for i in range(len(inputs.classnames)) if i not in seen]}
    splits = evaluation_splits(predict_log_probabilities(classifier, image_inputs),
                               np.asarray(test["label"].to_list()), test["relative_path"].to_list(), inputs.classnames,
                               class_split["base_labels"], class_split["new_labels"], generalized)
    record = lineage_record(context, promptlab, "evaluation", inputs, backbone, checkpoint["templates"],
                            dataset_fingerprint(inputs.index), started_at,
                            config_extra={"checkpoint_config_hash": checkpoint["config_hash"]})
    metric_rows, per_class_rows, predictions, top1 = [], [], [], {}
    for split in splits:
        result = classification_metrics(split.probabilities, split.labels, split.classnames)
        top1[split.split] = result.top1_accuracy
        metric_rows += [MetricRow(split.split, "top1_accuracy", result.top1_accuracy),
                        MetricRow(split.split, "macro_f1", result.macro_f1),
                        MetricRow(split.split, "expected_calibration_error", result.expected_calibration_error)]
        per_class_rows += [PerClassRow(split.split, split.label_map[row.label], row.classname, row.accuracy,
                                       row.f1, row.support) for row in result.per_class]
        predictions.append(predictions_frame(record.run_id, dataset, split))
    if "base" in top1 and "new" in top1:
        metric_rows.append(MetricRow("base_new", "harmonic_mean", harmonic_mean(top1["base"], top1["new"])))
    if "seen" in top1 and "unseen" in top1:
        metric_rows.append(MetricRow("seen_unseen", "harmonic_mean", harmonic_mean(top1["seen"], top1["unseen"])))
    # the quality of each round's pseudolabels (the checkpoint's record), so SQL can plot it by round
    metric_rows += pseudolabel_round_rows(checkpoint)
    warehouse = workspace_warehouse_of(workspace)
    # record_run writes the rows to disk before it opens the database (it creates the schema itself): a full disk
    # or a damaged file leaves them pending, never lost
    warehouse.record_run(record, metric_rows, per_class_rows, pl.concat(predictions))
    context.log.info(f"{dataset}/{experiment_key}: top-1 {top1['test']:.4f}")
    return dg.MaterializeResult(
        metadata={"run_id": record.run_id, "top1_accuracy": top1["test"],
                  **{f"{k}_top1_accuracy": v for k, v in top1.items() if k != "test"},
                  "checkpoint": path_value(workspace.checkpoint_dir(dataset, experiment_key)),
                  "warehouse": path_value(warehouse.address)}
    )


def pseudolabel_round_rows(checkpoint: dict) -> list:
    """MetricRows (split round_00, round_01, ...) of the pseudolabel quality the checkpoint recorded per round."""
    from models.warehouse import MetricRow

    rows = []
    for entry in checkpoint.get("pseudolabel_rounds") or []:
        split = f"round_{int(entry['round']):02d}"
        rows += [MetricRow(split, name, float(value)) for name, value in entry.items()
                 if name not in ("round", "selected_epoch") and value is not None]
    return rows
