"""Round 0 of pseudolabelling: zero-shot pseudolabels for the experiment's unlabelled pool (the training images
outside its few-shot subset, or its learning setting's pool), K_0 per class as its strategy schedules them. The
later rounds of IFPL and GRIP run with the training (models/limited_labels.py)."""


from datetime import datetime, timezone

import dagster as dg
import polars as pl

from models.provenance import source_version
from pipelines.assets import sync as folders
from pipelines.assets.common import (lineage_record, partition_inputs, refuse_inapplicable_method,
                                     refuse_training_on_test_only)
from pipelines.assets.curation import dataset_index, fewshot_subsets, learning_setting_splits
from pipelines.assets.features import image_features
from pipelines.assets.sync import synced
from pipelines.assets.world import tiny_clip_backbone
from pipelines.metadata import frame_table, path_value
from pipelines.partitions import dataset_and_experiment, dataset_experiment_partitions, from_dataset
from pipelines.resources import PromptLabResource


@dg.asset(
    group_name="pseudolabels",
    partitions_def=dataset_experiment_partitions,
    deps=[dg.AssetDep(dataset_index, partition_mapping=from_dataset),
          dg.AssetDep(image_features, partition_mapping=from_dataset),
          dg.AssetDep(fewshot_subsets, partition_mapping=from_dataset),
          dg.AssetDep(learning_setting_splits, partition_mapping=from_dataset), tiny_clip_backbone],
    code_version=source_version("models/pseudolabels.py", "models/limited_labels.py",
                                "models/experiments/preparation.py", "models/prompting/methods/zero_shot.py"),
    kinds={"pytorch", "parquet", "duckdb"},
    pool="gpu",
)
@synced(reads=(folders.backbone, folders.dataset_images, folders.curation, folders.features),
        writes=(folders.experiment, folders.features))
def pseudolabels(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """Pseudolabels of the unlabeled pool (train images outside the labelled few-shot subset), with their accuracy."""
    from models.data.index import dataset_fingerprint
    from models.experiments import round_zero_pseudolabels
    from models.warehouse import workspace_warehouse_of

    dataset, experiment = dataset_and_experiment(context)
    refuse_training_on_test_only(promptlab.catalog(), dataset, experiment)
    inputs = partition_inputs(promptlab, dataset, experiment)
    workspace = promptlab.workspace()
    path = workspace.pseudolabels_path(dataset, experiment)
    path.unlink(missing_ok=True)
    if inputs.experiment.pseudolabels is None:
        return dg.MaterializeResult(metadata={"applies": False, "reason": f"{experiment} requests no pseudolabels"})
    backbone = promptlab.load_backbone()
    refuse_inapplicable_method(inputs, backbone)
    started_at = datetime.now(timezone.utc)
    round_zero = round_zero_pseudolabels(inputs, workspace, backbone, text_cache=promptlab.text_cache(backbone))
    round_zero.write(path)
    warehouse = workspace_warehouse_of(workspace)
    warehouse.ensure_schema()
    warehouse.record_run(lineage_record(context, promptlab, "pseudolabels", inputs, backbone, inputs.templates,
                                        dataset_fingerprint(inputs.index), started_at), round_zero.metric_rows())
    selected, pool, quality = round_zero.selected, round_zero.pool, round_zero.quality
    context.log.info(f"round 0 ({round_zero.strategy.name}): {selected.height} zero-shot pseudolabels from a pool "
                     f"of {pool.height}; accuracy {quality['pseudolabel_accuracy']:.3f}")
    return dg.MaterializeResult(
        metadata={"applies": True, "path": path_value(path), "strategy": round_zero.strategy.name,
                  "pool_size": pool.height, "selected": selected.height,
                  "pseudolabel_accuracy": quality["pseudolabel_accuracy"], "class_coverage": quality["class_coverage"],
                  "pseudolabels_by_class": frame_table(pseudolabels_by_class(selected, inputs.classnames))}
    )


def pseudolabels_by_class(selected, classnames: list[str]):
    """How many pseudolabels each class got, and their mean confidence."""
    return (selected.group_by("pseudo_label").agg(pseudolabels=pl.len(),
                                                  mean_confidence=pl.col("confidence").mean().round(4))
            .sort("pseudo_label").with_columns(classname=pl.col("pseudo_label").replace_strict(
                dict(enumerate(classnames)), return_dtype=pl.String))
            .select("pseudo_label", "classname", "pseudolabels", "mean_confidence"))
