"""Test-time tuning (TPT, DiffTPT): a checkpoint tuned per test image on the image's own views, evaluated on a source
dataset and its shifted variants (the catalog's `test_time:` section).

One partition per source x test-time run; it writes one warehouse run per dataset (stage `test_time`, dataset = the
dataset evaluated, source_dataset = the source for the shifted variants), as an evaluation of the checkpoint it
starts from (experiment_key, method of that checkpoint; seed = the run's), with the mode, the test images it may
score (max_test_images) and its settings' hash in `options`, and the configuration hash. Every dataset is tuned and
scored before anything is written, so a failure leaves no rows of the partition.
"""


from dataclasses import replace
from datetime import datetime, timezone

import dagster as dg
import polars as pl

from models.provenance import library_code_version
from pipelines.assets import sync as folders
from pipelines.assets.common import lineage_record, partition_inputs
from pipelines.assets.curation import base_new_classes, dataset_index
from pipelines.assets.sync import synced
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
    pool="gpu",
)
@synced(reads=(folders.backbone, folders.diffusion_model, folders.test_time_inputs, folders.features,
               folders.variations),
        writes=(folders.features, folders.variations))
def test_time_metrics(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """Top-1, macro F1 and ECE of a checkpoint tuned at test time (TPT / DiffTPT), on the source and its shifts."""
    from models.catalog.testtime_settings import published_settings
    from models.data.index import dataset_fingerprint
    from models.experiments import predictions_frame
    from models.provenance import stable_hash
    from models.testtime.evaluation import scored_test_rows, tune_and_score
    from models.warehouse import per_class_rows, workspace_warehouse_of

    source, run_key = dataset_and_experiment(context)
    catalog, workspace = promptlab.catalog(), promptlab.workspace()
    run = catalog.test_time.run(run_key)
    settings = published_settings(run.mode, {**run.settings, "seed": run.seed})
    backbone = promptlab.load_backbone()
    generator = (promptlab.load_variation_generator(run.diffusion_backbone, run.diffusion,
                                                    f"test_time.modes.{run.mode}.diffusion")
                 if run.mode == "difftpt" else None)
    max_test_images = catalog.test_time.max_test_images  # a grid subset may score fewer (the demo grid)
    lineage = {**catalog.test_time.lineage(run_key), "settings": settings.as_dict(),
               "generator": None if generator is None else generator.provenance.as_dict()}
    options = {"test_time": {"mode": run.mode, "run": run_key, "max_test_images": max_test_images,
                             "settings_hash": stable_hash(lineage, length=16)}}
    scored = []
    for dataset in catalog.test_time.targets[source]:
        if not workspace.class_split_path(dataset).exists():
            raise FileNotFoundError(f"test-time {run_key}: {dataset} is not curated yet "
                                    f"({workspace.class_split_path(dataset)} is missing); run curation_job for it")
        started_at = datetime.now(timezone.utc)
        inputs = partition_inputs(promptlab, dataset, run.start)

        def progress(done: int, total: int, seconds: float, dataset=dataset) -> None:
            if done == total or done % 160 < 16:
                context.log.info(f"{run_key} on {dataset}: {done}/{total} images, {done / seconds:.1f} images/s")

        result = tune_and_score(backbone, workspace.checkpoint_dir(source, run.start), dataset, inputs.classnames,
                                inputs.experiment.templates_for(inputs.dataset), inputs.image_dir,
                                scored_test_rows(inputs.index.filter(pl.col("split") == "test"), max_test_images),
                                settings, generator, workspace.variation_cache_dir, workspace.feature_cache_dir,
                                progress)
        record = lineage_record(context, promptlab, "test_time", inputs, backbone, result.templates,
                                dataset_fingerprint(inputs.index), started_at,
                                config_extra={"test_time": lineage, "start": result.start, "source_dataset": source,
                                              "test_images": result.test.height})
        # the views' seed is the run's (a zero-shot start has none of its own)
        scored.append((result, replace(record, seed=run.seed, source_dataset=None if dataset == source else source,
                                       options={**record.options, **options})))
        context.log.info(f"{run_key} on {dataset}: top-1 {result.metrics.top1_accuracy:.4f} (before tuning "
                         f"{result.before_tuning_top1:.4f}), {result.result.images_per_second:.1f} images/s")
    warehouse = workspace_warehouse_of(workspace)
    warehouse.ensure_schema()
    for result, record in scored:
        warehouse.record_run(record, result.metric_rows(), per_class_rows(result.split.split, result.metrics.per_class),
                             predictions_frame(record.run_id, result.dataset, result.split))
    return dg.MaterializeResult(metadata={
        "mode": run.mode, "start": run.start, "seed": run.seed,
        "top1_accuracy_by_dataset": dg.MetadataValue.json({r.dataset: r.metrics.top1_accuracy for r, _ in scored}),
        "top1_before_tuning_by_dataset": dg.MetadataValue.json({r.dataset: r.before_tuning_top1 for r, _ in scored}),
        "settings": dg.MetadataValue.json(lineage),
        "run_ids": dg.MetadataValue.json({r.dataset: record.run_id for r, record in scored}),
    })
