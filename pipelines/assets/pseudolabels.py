"""Zero-shot pseudolabels for the unlabeled training pool; FPL keeps the top-K most confident per class."""


from datetime import datetime, timezone

import dagster as dg
import polars as pl

from models.provenance import source_version
from pipelines.assets.common import lineage_record, partition_inputs, refuse_inapplicable_method
from pipelines.assets.curation import dataset_index, fewshot_subsets
from pipelines.assets.world import tiny_clip_backbone
from pipelines.partitions import dataset_and_experiment, dataset_experiment_partitions, from_dataset
from pipelines.resources import PromptLabResource


@dg.asset(
    group_name="pseudolabels",
    partitions_def=dataset_experiment_partitions,
    deps=[dg.AssetDep(dataset_index, partition_mapping=from_dataset),
          dg.AssetDep(fewshot_subsets, partition_mapping=from_dataset), tiny_clip_backbone],
    code_version=source_version("models/pseudolabels.py", "models/prompting/methods/zero_shot.py"),
    kinds={"pytorch", "parquet", "duckdb"},
)
def pseudolabels(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """Pseudolabels of the unlabeled pool (train images outside the labelled few-shot subset), with their accuracy."""
    from models.data.index import dataset_fingerprint
    from models.experiments import build_classifier, features_for_images, predict
    from models.pseudolabels import pseudolabel_accuracy, pseudolabel_table, select_top_k_per_class
    from models.warehouse import MetricRow, Warehouse

    dataset, experiment = dataset_and_experiment(context)
    inputs = partition_inputs(promptlab, dataset, experiment)
    workspace = promptlab.workspace()
    path = workspace.pseudolabels_path(dataset, experiment)
    path.unlink(missing_ok=True)
    options = inputs.experiment.pseudolabels
    if options is None:
        return dg.MaterializeResult(metadata={"applies": False, "reason": f"{experiment} requests no pseudolabels"})
    if options.strategy != "fpl":
        raise ValueError(f"{experiment}: pseudolabel strategy {options.strategy!r} is not available yet (fpl is)")
    backbone = promptlab.load_backbone()
    refuse_inapplicable_method(inputs, backbone)
    started_at = datetime.now(timezone.utc)
    labelled = inputs.fewshot_train(pl.read_parquet(workspace.fewshot_path(dataset)))
    pool = inputs.index.filter(pl.col("split") == "train").join(labelled.select("relative_path"),
                                                                  on="relative_path", how="anti")
    pool = pool.sort("relative_path")
    templates = inputs.experiment.templates_for(inputs.dataset)
    features = features_for_images(backbone, inputs.image_dir, pool["relative_path"].to_list(),
                                   pool["content_sha256"].to_list(), workspace.feature_cache_dir)
    classifier = build_classifier(backbone.model, backbone.tokenizer, "zero_shot", {}, inputs.classnames, templates)
    table = pseudolabel_table(pool["relative_path"].to_list(), predict(classifier, features))
    selected = select_top_k_per_class(table, options.per_class)
    accuracy = pseudolabel_accuracy(selected, pool)
    path.parent.mkdir(parents=True, exist_ok=True)
    selected.write_parquet(path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    warehouse = Warehouse(workspace.warehouse_path, workspace.predictions_dir)
    warehouse.ensure_schema()
    warehouse.record_run(
        lineage_record(context, promptlab, "pseudolabels", inputs, backbone, templates,
                       dataset_fingerprint(inputs.index), started_at),
        [MetricRow("train_pool", "pseudolabel_accuracy", accuracy),
         MetricRow("train_pool", "num_pseudolabels", float(selected.height)),
         MetricRow("train_pool", "pool_size", float(pool.height))],
    )
    context.log.info(f"{selected.height} pseudolabels from a pool of {pool.height}; accuracy {accuracy:.3f}")
    return dg.MaterializeResult(
        metadata={"applies": True, "path": str(path), "pool_size": pool.height, "selected": selected.height,
                  "pseudolabel_accuracy": accuracy}
    )
