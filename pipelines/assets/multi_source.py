"""Multi-source domain generalisation (the catalog's `multi_source:` section): an experiment trained on the union of
several source domains' few-shot subsets (a domain per image: SPG's domain prompts; CoOp ignores them) and scored on
the held-out domain's test split, which never enters training.

One partition per held-out domain x experiment; it writes one warehouse run, stage `multi_source`, dataset = the
held-out domain, source_dataset = the sources joined by "+" (e.g. Shapes+ShapesNoisy), after the domain is scored,
so a failure leaves no row. Zero-shot needs no partition: the views take its evaluation on the held-out domain as
the reference row.
"""


from dataclasses import replace
from datetime import datetime, timezone

import dagster as dg

from models.provenance import library_code_version
from pipelines.assets import sync as folders
from pipelines.assets.common import lineage_record, partition_inputs
from pipelines.assets.curation import base_new_classes, dataset_index, fewshot_subsets
from pipelines.assets.features import image_features
from pipelines.assets.sync import synced
from pipelines.assets.world import tiny_clip_backbone
from pipelines.metadata import path_value
from pipelines.partitions import multi_source_partitions
from pipelines.resources import PromptLabResource

MULTI_SOURCE_STAGE = "multi_source"


def split_domains(scope: folders.Scope):
    """The images and curation of the held-out domain and of every source of its split, and the partition's own
    folder (its checkpoint)."""
    split = scope.promptlab.catalog().multi_source.split_of(scope.dataset)
    return [scope.workspace.multi_source_dir(scope.dataset, scope.experiment),
            *(folder for name in (split.held_out, *split.sources)
              for folder in (scope.workspace.embedded_dataset_dir(name), scope.workspace.curation_dir(name)))]


def multi_source_folder(scope: folders.Scope):
    return [scope.workspace.multi_source_dir(scope.dataset, scope.experiment)]


@dg.asset(
    group_name="evaluation",
    partitions_def=multi_source_partitions,
    # the curation and features of every domain: the split's sources train, the held-out domain is scored
    deps=[dg.AssetDep(asset, partition_mapping=dg.AllPartitionMapping())
          for asset in (dataset_index, fewshot_subsets, base_new_classes, image_features)] + [tiny_clip_backbone],
    code_version=library_code_version(),
    kinds={"pytorch", "duckdb", "parquet"},
    pool="gpu",
)
@synced(reads=(folders.backbone, split_domains, folders.features), writes=(multi_source_folder, folders.features))
def multi_source_metrics(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """Top-1, macro F1, ECE and per-class accuracy on the held-out domain of a prompt trained on the other domains."""
    from models.data.index import dataset_fingerprint
    from models.experiments import predictions_frame, save_prompt_checkpoint
    from models.experiments.multi_source import DomainSplit, held_out_scores, train_multi_source
    from models.warehouse import metric_rows, per_class_rows, workspace_warehouse_of

    started_at = datetime.now(timezone.utc)
    keys = context.partition_key.keys_by_dimension
    held_out, experiment_key = keys["held_out"], keys["experiment"]
    catalog, workspace = promptlab.catalog(), promptlab.workspace()
    planned = catalog.multi_source.split_of(held_out)
    split = DomainSplit(planned.held_out, planned.sources)
    backbone = promptlab.load_backbone()
    text_cache = promptlab.text_cache(backbone)
    sources = {name: partition_inputs(promptlab, name, experiment_key) for name in split.sources}
    trained = train_multi_source(split, sources, workspace, backbone, text_cache=text_cache, log=context.log.info)
    directory = save_prompt_checkpoint(workspace.multi_source_dir(held_out, experiment_key) / "prompt_checkpoint",
                                       trained.classifier, trained.config)
    held_out_inputs = partition_inputs(promptlab, held_out, experiment_key)
    checkpoint, scored, result = held_out_scores(directory, held_out_inputs, workspace, backbone, text_cache)
    record = lineage_record(context, promptlab, MULTI_SOURCE_STAGE, held_out_inputs, backbone, checkpoint["templates"],
                            dataset_fingerprint(held_out_inputs.index), started_at,
                            config_extra={"checkpoint_config_hash": checkpoint["config_hash"],
                                          "sources": list(split.sources),
                                          "source_data_hashes": trained.config["multi_source"]["source_data_hashes"]})
    record = replace(record, source_dataset="+".join(split.sources))
    warehouse = workspace_warehouse_of(workspace)
    warehouse.record_run(record, metric_rows(scored.split, result.scalar_metrics()),
                         per_class_rows(scored.split, result.per_class),
                         predictions_frame(record.run_id, held_out, scored))
    context.log.info(f"multi-source {record.source_dataset} -> {held_out}, {experiment_key}: "
                     f"top-1 {result.top1_accuracy:.4f}")
    return dg.MaterializeResult(metadata={
        "held_out": held_out,
        "sources": dg.MetadataValue.json(list(split.sources)),
        "top1_accuracy": result.top1_accuracy,
        "training_seconds": round(trained.training_seconds, 2),
        "composition": dg.MetadataValue.json(trained.composition),
        "run_id": record.run_id,
        "checkpoint": path_value(directory),
        "warehouse": path_value(warehouse.address),
    })
