"""Round 0 of pseudolabelling: zero-shot pseudolabels for the experiment's unlabelled pool (the training images
outside its few-shot subset, or its learning setting's pool), K_0 per class as its strategy schedules them. The
later rounds of IFPL and GRIP run with the training (models/limited_labels.py)."""


from datetime import datetime, timezone

import dagster as dg
import polars as pl

from models.provenance import source_version
from pipelines.assets import sync as folders
from pipelines.assets.common import lineage_record, partition_inputs, refuse_inapplicable_method, refuse_training_on_test_only
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
                                "models/prompting/methods/zero_shot.py"),
    kinds={"pytorch", "parquet", "duckdb"},
    pool="gpu",
)
@synced(reads=(folders.backbone, folders.dataset_images, folders.curation, folders.features),
        writes=(folders.experiment, folders.features))
def pseudolabels(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """Pseudolabels of the unlabeled pool (train images outside the labelled few-shot subset), with their accuracy."""
    from models.data.index import dataset_fingerprint
    from models.experiments import build_classifier, features_for_images, predict
    from models.limited_labels import round_zero_selection
    from models.pseudolabels import get_strategy, pseudolabel_quality
    from models.warehouse import MetricRow, metric_rows, workspace_warehouse_of

    dataset, experiment = dataset_and_experiment(context)
    refuse_training_on_test_only(promptlab.catalog(), dataset, experiment)
    inputs = partition_inputs(promptlab, dataset, experiment)
    workspace = promptlab.workspace()
    path = workspace.pseudolabels_path(dataset, experiment)
    path.unlink(missing_ok=True)
    options = inputs.experiment.pseudolabels
    if options is None:
        return dg.MaterializeResult(metadata={"applies": False, "reason": f"{experiment} requests no pseudolabels"})
    backbone = promptlab.load_backbone()
    refuse_inapplicable_method(inputs, backbone)
    started_at = datetime.now(timezone.utc)
    rows = inputs.experiment_rows(workspace)
    pool, strategy = rows.pool, get_strategy(options.strategy)
    where = f"{inputs.experiment.where}.pseudolabels"
    if pool is None or pool.height == 0:
        raise ValueError(f"{where}: the unlabelled pool of {dataset} is empty ({inputs.experiment.setting or 'few-shot'}"
                         "): there is nothing to pseudolabel")
    templates = inputs.experiment.templates_for(inputs.dataset)
    features = features_for_images(backbone, inputs.image_set, pool["relative_path"].to_list(),
                                   pool["content_sha256"].to_list(), workspace.feature_cache_dir)
    classifier = build_classifier(backbone.model, backbone.tokenizer, "zero_shot", {}, inputs.classnames, templates,
                                  text_cache=promptlab.text_cache(backbone))
    try:
        selected = round_zero_selection(strategy, options.per_class, pool["relative_path"].to_list(),
                                        predict(classifier, features), rows.pseudolabel_classes)
    except ValueError as error:  # K beyond the pool: name the grid entry and field, before any training
        raise ValueError(f"{where}.per_class ({dataset}): {error}") from error
    quality = pseudolabel_quality(selected, pool, len(rows.pseudolabel_classes))
    path.parent.mkdir(parents=True, exist_ok=True)
    selected.write_parquet(path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    warehouse = workspace_warehouse_of(workspace)
    warehouse.ensure_schema()
    warehouse.record_run(
        lineage_record(context, promptlab, "pseudolabels", inputs, backbone, templates,
                       dataset_fingerprint(inputs.index), started_at),
        metric_rows("train_pool", quality) + [MetricRow("train_pool", "pool_size", float(pool.height))],
    )
    context.log.info(f"round 0 ({strategy.name}): {selected.height} zero-shot pseudolabels from a pool of "
                     f"{pool.height}; accuracy {quality['pseudolabel_accuracy']:.3f}")
    by_class = (selected.group_by("pseudo_label").agg(pseudolabels=pl.len(),
                                                      mean_confidence=pl.col("confidence").mean().round(4))
                .sort("pseudo_label").with_columns(classname=pl.col("pseudo_label").replace_strict(
                    dict(enumerate(inputs.classnames)), return_dtype=pl.String))
                .select("pseudo_label", "classname", "pseudolabels", "mean_confidence"))
    return dg.MaterializeResult(
        metadata={"applies": True, "path": path_value(path), "strategy": strategy.name, "pool_size": pool.height,
                  "selected": selected.height, "pseudolabel_accuracy": quality["pseudolabel_accuracy"],
                  "class_coverage": quality["class_coverage"], "pseudolabels_by_class": frame_table(by_class)}
    )
