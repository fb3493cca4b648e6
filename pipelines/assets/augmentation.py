"""Diffusion augmentation of the experiment's few-shot images, filtered by CLIP similarity to the source."""


import shutil

import dagster as dg
import polars as pl

from models.provenance import source_version
from pipelines.assets import sync as folders
from pipelines.assets.common import partition_inputs, refuse_inapplicable_method, refuse_training_on_test_only
from pipelines.assets.curation import fewshot_subsets
from pipelines.assets.sync import synced
from pipelines.assets.world import tiny_clip_backbone, tiny_diffusion_model
from pipelines.metadata import frame_table, path_value
from pipelines.partitions import dataset_and_experiment, dataset_experiment_partitions, from_dataset
from pipelines.resources import PromptLabResource


@dg.asset(
    group_name="augmentation",
    partitions_def=dataset_experiment_partitions,
    deps=[dg.AssetDep(fewshot_subsets, partition_mapping=from_dataset), tiny_diffusion_model, tiny_clip_backbone],
    code_version=source_version("models/augmentation/dataset_augmentation.py", "models/augmentation/generators.py",
                                "models/augmentation/filtering.py", "models/backbones/tiny_diffusion.py",
                                "models/experiments/preparation.py"),
    kinds={"diffusers", "parquet"},
    pool="gpu",
)
@synced(reads=(folders.backbone, folders.diffusion_model, folders.dataset_images, folders.curation),
        writes=(folders.experiment,))
def augmented_images(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """N diffusion variations per few-shot image (the resource's diffusion backbone), kept when CLIP cosine
    similarity to the source passes the threshold."""
    from models.augmentation import generation_overrides
    from models.experiments import augment_fewshot_images

    dataset, experiment = dataset_and_experiment(context)
    refuse_training_on_test_only(promptlab.catalog(), dataset, experiment)
    inputs = partition_inputs(promptlab, dataset, experiment)
    workspace = promptlab.workspace()
    output_dir = workspace.augmentation_dir(dataset, experiment)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    options = inputs.experiment.augmentation
    if options is None:
        return dg.MaterializeResult(metadata={"applies": False, "reason": f"{experiment} requests no augmentation"})
    backbone = promptlab.load_backbone()
    refuse_inapplicable_method(inputs, backbone)
    diffusion = promptlab.diffusion_backbone_entry()
    generator = promptlab.load_variation_generator(diffusion.name, generation_overrides(diffusion.kind, options),
                                                   where=f"{inputs.experiment.where}: augmentation")
    table = augment_fewshot_images(inputs, workspace, backbone, generator)
    kept = int(table["kept"].sum())
    context.log.info(f"{kept} of {table.height} variations kept (threshold {options.similarity_threshold})")
    return dg.MaterializeResult(
        metadata={
            "applies": True,
            "path": path_value(output_dir),
            "generated": table.height,
            "kept": kept,
            "variations_by_class": frame_table(variations_by_class(table, inputs.classnames)),
            "mean_similarity": float(table["similarity"].mean()),
            "generator": dg.MetadataValue.json(generator.provenance.as_dict()),
        }
    )


def variations_by_class(table: pl.DataFrame, classnames: list[str]) -> pl.DataFrame:
    """How many variations each class got and kept, and their mean similarity to their source."""
    return (table.group_by("label").agg(generated=pl.len(), kept=pl.col("kept").sum(),
                                        mean_similarity=pl.col("similarity").mean().round(4))
            .sort("label").with_columns(classname=pl.col("label").replace_strict(
                dict(enumerate(classnames)), return_dtype=pl.String))
            .select("label", "classname", "generated", "kept", "mean_similarity"))
