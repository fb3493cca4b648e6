"""Prompt training: the experiment's method on its few-shot subset, optionally with augmented images and
pseudolabels; the learned prompt parameters are saved with the config that rebuilds them."""


import dagster as dg
import polars as pl

from models.provenance import library_code_version
from models.markdown import markdown_table
from pipelines.assets import sync as folders
from pipelines.assets.augmentation import augmented_images
from pipelines.assets.common import partition_inputs, refuse_training_on_test_only
from pipelines.assets.curation import base_new_classes, fewshot_subsets
from pipelines.assets.features import image_features
from pipelines.assets.pseudolabels import pseudolabels
from pipelines.assets.sync import synced
from pipelines.assets.world import tiny_clip_backbone
from pipelines.metadata import counts_table, path_value, training_curves
from pipelines.partitions import dataset_and_experiment, dataset_experiment_partitions, from_dataset
from pipelines.resources import PromptLabResource


@dg.asset(
    group_name="training",
    partitions_def=dataset_experiment_partitions,
    deps=[dg.AssetDep(fewshot_subsets, partition_mapping=from_dataset),
          dg.AssetDep(image_features, partition_mapping=from_dataset),
          dg.AssetDep(base_new_classes, partition_mapping=from_dataset),
          augmented_images, pseudolabels, tiny_clip_backbone],
    code_version=library_code_version(),
    kinds={"pytorch", "safetensors"},
    pool="gpu",
)
@synced(reads=(folders.backbone, folders.dataset_images, folders.curation, folders.features, folders.multitask_start,
               folders.initialisation_start),
        writes=(folders.experiment, folders.features))
def prompt_checkpoints(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """The learned prompt of one experiment (method, shots, seed, options) on one dataset."""
    from models.experiments import save_prompt_checkpoint, train_experiment
    from models.experiments.initialisations import initialisation_start
    from models.experiments.multitask import target_start

    dataset, experiment_key = dataset_and_experiment(context)
    refuse_training_on_test_only(promptlab.catalog(), dataset, experiment_key)
    inputs = partition_inputs(promptlab, dataset, experiment_key)
    workspace, backbone = promptlab.workspace(), promptlab.load_backbone()
    trained = train_experiment(inputs, workspace, backbone, text_cache=promptlab.text_cache(backbone),
                               log=context.log.info, start=(target_start(promptlab.catalog(), workspace, experiment_key)
                                                            or initialisation_start(promptlab.catalog(), workspace,
                                                                                    experiment_key)))
    directory = save_prompt_checkpoint(workspace.checkpoint_dir(dataset, experiment_key), trained.classifier,
                                       trained.config, trained.pseudolabel_rounds())
    return dg.MaterializeResult(metadata={**training_metadata(trained, f"{experiment_key} on {dataset}"),
                                          "path": path_value(directory)})


def training_metadata(trained, title: str) -> dict:
    """What the UI shows of a training (models.experiments.TrainedPrompt): epochs, loss and accuracy curves, the
    training set's composition, and each pseudolabel round's quality."""
    metadata: dict = {"method": trained.config["method"], "trained": trained.optimization is not None}
    if trained.optimization is None:
        return metadata
    losses = trained.epoch_losses
    metadata.update(
        epochs=trained.optimization.epochs,
        final_loss=losses[-1] if losses else None,
        training_seconds=round(trained.training_seconds, 2),
        composition=counts_table(trained.composition),
        training_details=dg.MetadataValue.json(trained.details),
        **({"model_selection": dg.MetadataValue.json(trained.config["model_selection"])}
           if "model_selection" in trained.config else {}),
        **training_curves(title + (" (all rounds)" if len(trained.histories) > 1 else ""),
                          {"loss": losses, "train accuracy": trained.epoch_accuracies}),
    )
    if trained.pseudolabelling is not None:
        quality = trained.pseudolabelling.quality_frame()
        metadata["pseudolabel_rounds"] = dg.MetadataValue.md(markdown_table(quality))
        metadata["pseudolabel_accuracy_by_round"] = dg.MetadataValue.md(round_plot(quality))
    return metadata


def round_plot(quality: pl.DataFrame) -> str:
    """A small markdown bar chart of pseudolabel accuracy by round (the UI renders it with the metadata)."""
    lines = ["| round | K | accuracy | |", "|---|---|---|---|"]
    for row in quality.iter_rows(named=True):
        bar = "#" * int(round(30 * row["pseudolabel_accuracy"]))
        lines.append(f"| {row['round']} | {row['per_class']} | {row['pseudolabel_accuracy']:.3f} | `{bar}` |")
    return "\n".join(lines)
