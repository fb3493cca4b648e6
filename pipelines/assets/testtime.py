"""Test-time tuning (TPT, DiffTPT): a checkpoint tuned per test image on the image's own views, evaluated on a source
dataset and its shifted variants (the catalog's `test_time:` section).

One partition per source x test-time run; it writes one warehouse run per dataset (stage `test_time`, dataset = the
dataset evaluated, source_dataset = the source for the shifted variants), as an evaluation of the checkpoint it
starts from (experiment_key, method and seed of that checkpoint), with the mode and its settings in `options` and
the configuration hash.
"""


from datetime import datetime, timezone

import dagster as dg
import polars as pl

from models.provenance import library_code_version
from pipelines.assets.common import lineage_record, partition_inputs
from pipelines.assets.curation import base_new_classes, dataset_index
from pipelines.assets.training import prompt_checkpoints
from pipelines.assets.world import tiny_diffusion_model
from pipelines.partitions import dataset_and_experiment, test_time_from_start, test_time_partitions
from pipelines.resources import PromptLabResource


@dg.asset(
    group_name="evaluation",
    partitions_def=test_time_partitions,
    deps=[dg.AssetDep(prompt_checkpoints, partition_mapping=test_time_from_start),
          dg.AssetDep(dataset_index, partition_mapping=dg.AllPartitionMapping()),
          dg.AssetDep(base_new_classes, partition_mapping=dg.AllPartitionMapping()),
          tiny_diffusion_model],
    code_version=library_code_version(),
    kinds={"pytorch", "diffusers", "duckdb"},
)
def test_time_metrics(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """Top-1, macro F1 and ECE of a checkpoint tuned at test time (TPT / DiffTPT), on the source and its shifts."""
    from dataclasses import replace

    from models.data.index import dataset_fingerprint
    from models.evaluation.metrics import classification_metrics
    from models.experiments import evaluation_splits, predictions_frame
    from models.prompting.methods import get_method
    from models.provenance import stable_hash
    from models.testtime.evaluation import before_tuning_rows, scored_test_rows
    from models.testtime.settings import published_settings
    from models.testtime.start import starting_classifier
    from models.testtime.tuning import TestTimeTuner, tune_test_images
    from models.warehouse import MetricRow, Warehouse, metric_rows, per_class_rows

    source, run_key = dataset_and_experiment(context)
    catalog, workspace = promptlab.catalog(), promptlab.workspace()
    plan = catalog.test_time
    run = plan.run(run_key)
    settings = published_settings(run.mode, {**run.settings, "seed": run.seed})
    backbone = promptlab.load_backbone()
    generator = None
    if run.mode == "difftpt":
        generator = promptlab.load_variation_generator(run.diffusion_backbone, run.diffusion)
    lineage = {**run.lineage(), "settings": settings.as_dict(),
               "generator": None if generator is None else generator.provenance.as_dict()}
    warehouse = Warehouse(workspace.warehouse_path, workspace.predictions_dir)
    warehouse.ensure_schema()
    top1, before, run_ids = {}, {}, {}
    for dataset in plan.targets[source]:
        if not workspace.class_split_path(dataset).exists():
            raise FileNotFoundError(f"test-time {run_key}: {dataset} is not curated yet "
                                    f"({workspace.class_split_path(dataset)} is missing); run curation_job for it")
        started_at = datetime.now(timezone.utc)
        inputs = partition_inputs(promptlab, dataset, run.start)
        classifier, start = starting_classifier(workspace.checkpoint_dir(source, run.start), backbone,
                                                inputs.classnames, inputs.experiment.templates_for(inputs.dataset),
                                                settings.context_init)
        test = scored_test_rows(inputs.index.filter(pl.col("split") == "test"), plan.max_test_images)

        def progress(done: int, total: int, seconds: float, dataset=dataset) -> None:
            if done == total or done % 160 < 16:
                context.log.info(f"{run_key} on {dataset}: {done}/{total} images, {done / seconds:.1f} images/s")

        result = tune_test_images(
            TestTimeTuner(classifier, settings, backbone.device), get_method(start["tuned_method"]).frozen_image_encoder,
            backbone, inputs.image_dir, test["relative_path"].to_list(), test["content_sha256"].to_list(),
            generator=generator, variation_cache_dir=workspace.variation_cache_dir,
            feature_cache_dir=workspace.feature_cache_dir, on_progress=progress)
        (split,) = evaluation_splits(result.log_probabilities, test["label"].to_numpy(),
                                     test["relative_path"].to_list(), inputs.classnames, None, None)
        metrics = classification_metrics(split.probabilities, split.labels, split.classnames)
        templates = ([f"{settings.context_init} {{}}."] if start["start_method"] == "zero_shot"
                     else inputs.experiment.templates_for(inputs.dataset))
        record = lineage_record(context, promptlab, "test_time", inputs, backbone, templates,
                                dataset_fingerprint(inputs.index), started_at,
                                config_extra={"test_time": lineage, "start": start, "source_dataset": source,
                                              "test_images": test.height})
        # the views' seed is the run's (a zero-shot start has none of its own)
        record = replace(record, seed=run.seed, source_dataset=None if dataset == source else source,
                         options={**record.options, "test_time": {"mode": run.mode, "run": run_key,
                                                                  "settings_hash": stable_hash(lineage, length=16)}})
        rows = metric_rows(split.split, metrics.scalar_metrics()) + before_tuning_rows(result, test)
        rows.append(MetricRow("test", "images_per_second", result.images_per_second))
        warehouse.record_run(record, rows, per_class_rows(split.split, metrics.per_class),
                             predictions_frame(record.run_id, dataset, split))
        top1[dataset], run_ids[dataset] = metrics.top1_accuracy, record.run_id
        before[dataset] = next(r.value for r in rows if r.split == "before_tuning" and r.metric == "top1_accuracy")
        context.log.info(f"{run_key} on {dataset}: top-1 {metrics.top1_accuracy:.4f} (before tuning "
                         f"{before[dataset]:.4f}), {result.images_per_second:.1f} images/s")
    return dg.MaterializeResult(metadata={
        "mode": run.mode, "start": run.start, "seed": run.seed,
        "top1_accuracy_by_dataset": dg.MetadataValue.json(top1),
        "top1_before_tuning_by_dataset": dg.MetadataValue.json(before),
        "settings": dg.MetadataValue.json(lineage),
        "run_ids": dg.MetadataValue.json(run_ids),
    })
