"""Prompt training: the experiment's method on its few-shot subset, optionally with augmented images and
pseudolabels; the learned prompt parameters are saved with the config that rebuilds them."""


import json
import time

import dagster as dg
import polars as pl

from models.provenance import library_code_version
from models.markdown import markdown_table
from models.storage import read_parquet_file
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
@synced(reads=(folders.backbone, folders.dataset_images, folders.curation, folders.features),
        writes=(folders.experiment, folders.features))
def prompt_checkpoints(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """The learned prompt of one experiment (method, shots, seed, options) on one dataset."""
    from models.backbones.training_support import format_duration
    from models.data.index import dataset_fingerprint
    from models.experiments import (assemble_training_set, build_classifier, optimization_config,
                                    save_prompt_checkpoint, train_prompts)
    from models.prompting.methods import get_method

    dataset, experiment_key = dataset_and_experiment(context)
    refuse_training_on_test_only(promptlab.catalog(), dataset, experiment_key)
    inputs = partition_inputs(promptlab, dataset, experiment_key)
    experiment, workspace = inputs.experiment, promptlab.workspace()
    backbone = promptlab.load_backbone()
    templates = experiment.templates_for(inputs.dataset)
    method = get_method(experiment.method)
    class_split = json.loads(workspace.class_split_path(dataset).read_text())
    # base_to_new trains on the base classes only (relabelled 0..B-1); new classes are never seen in training.
    trained_labels = (class_split["base_labels"] if experiment.protocol == "base_to_new"
                      else list(range(len(inputs.classnames))))
    trained_classnames = [inputs.classnames[label] for label in trained_labels]

    def classifier_factory():
        return build_classifier(backbone.model, backbone.tokenizer, experiment.method, experiment.parameters,
                                trained_classnames, templates, text_cache=promptlab.text_cache(backbone))

    classifier = classifier_factory()
    config = {
        "method": experiment.method,
        "parameters": experiment.parameters,
        "classnames": trained_classnames,
        "protocol": experiment.protocol,
        "templates": templates,
        "experiment": experiment.as_dict(),
        "config_hash": experiment.config_hash,
        "dataset": dataset,
        "data_hash": dataset_fingerprint(inputs.index),
        "backbone": backbone.spec.name,
        "backbone_weights_sha256": backbone.weights_sha256,
        "code_version": library_code_version(),
    }
    metadata: dict = {"method": experiment.method, "trained": method.trains_prompts}
    rounds = None
    if method.trains_prompts:
        optimization = optimization_config(experiment)
        started = time.perf_counter()

        def log_epoch(epoch: int, loss: float, accuracy: float) -> None:
            nonlocal started
            elapsed = time.perf_counter() - started  # per round for the pseudolabel rounds: epoch restarts at 1
            left = elapsed / epoch * (optimization.epochs - epoch)
            context.log.info(f"epoch {epoch}/{optimization.epochs}: loss {loss:.4f}, train accuracy {accuracy:.3f}, "
                             f"{format_duration(elapsed)} elapsed, about {format_duration(left)} left")
            if epoch == optimization.epochs:
                started = time.perf_counter()

        if experiment.setting is not None or experiment.pseudolabels is not None or method.adapts_from_pool:
            result = train_with_pool(context, promptlab, inputs, backbone, classifier_factory, optimization,
                                     log_epoch)
            classifier, histories, composition = result.classifier, result.histories, result.composition
            details = {**result.details, **histories[-1].details}
            if result.pseudolabelling is not None:
                rounds = result.pseudolabelling
                config["pseudolabel_rounds"] = rounds.quality_frame().to_dicts()
        else:
            fewshot = read_parquet_file(workspace.fewshot_path(dataset))
            training_set = assemble_training_set(
                experiment.method, backbone, inputs.image_set, inputs.fewshot_train(fewshot),
                inputs.fewshot_train(fewshot, subset="val"), trained_labels, workspace.feature_cache_dir,
                *augmentation_inputs(workspace, dataset, experiment_key, experiment))
            context.log.info(f"training {experiment.method} on {training_set.composition} for "
                             f"{optimization.epochs} epochs")
            history = train_prompts(classifier, training_set, optimization, on_epoch=log_epoch,
                                    device=backbone.device)
            histories, composition, details = [history], training_set.composition, history.details
        losses = [loss for history in histories for loss in history.epoch_losses]
        accuracies = [accuracy for history in histories for accuracy in history.epoch_accuracies]
        config.update(optimization=optimization.__dict__, training_composition=composition,
                      epoch_losses=losses, training_seconds=sum(h.seconds for h in histories),
                      training_details=details)
        metadata.update(
            epochs=optimization.epochs,
            final_loss=losses[-1] if losses else None,
            training_seconds=round(sum(h.seconds for h in histories), 2),
            composition=counts_table(composition),
            training_details=dg.MetadataValue.json(details),
            **training_curves(f"{experiment_key} on {dataset}" + (" (all rounds)" if len(histories) > 1 else ""),
                              {"loss": losses, "train accuracy": accuracies}),
        )
        if rounds is not None:
            quality = rounds.quality_frame()
            metadata["pseudolabel_rounds"] = dg.MetadataValue.md(markdown_table(quality))
            metadata["pseudolabel_accuracy_by_round"] = dg.MetadataValue.md(round_plot(quality))
    directory = save_prompt_checkpoint(workspace.checkpoint_dir(dataset, experiment_key), classifier, config,
                                       rounds.rounds_frame() if rounds is not None else None)
    metadata["path"] = path_value(directory)
    return dg.MaterializeResult(metadata=metadata)


def augmentation_inputs(workspace, dataset: str, experiment_key: str, experiment):
    """(augmented_dir, kept augmented rows) of an experiment with augmentation, else (None, None)."""
    if experiment.augmentation is None:
        return None, None
    augmented_dir = workspace.augmentation_dir(dataset, experiment_key)
    return augmented_dir, read_parquet_file(augmented_dir / "augmented.parquet").filter(pl.col("kept"))


def train_with_pool(context, promptlab, inputs, backbone, classifier_factory, optimization, log_epoch):
    """An experiment with a pool or a learning setting (models.limited_labels): rounds of pseudolabels, a method
    that adapts from the pool (TFUP), or a setting's labelled images alone; each round logged."""
    from models.experiments import train_prompts
    from models.limited_labels import limited_label_inputs, train_limited_label_experiment
    from models.prompting.methods import get_method

    experiment, workspace = inputs.experiment, promptlab.workspace()
    rows = inputs.experiment_rows(workspace)
    method = get_method(experiment.method)
    validation_rows = None
    if method.adapts_from_pool and rows.validation.height == 0:
        # UL has no labelled image; TFUP-T selects its epoch on the dataset's val split (the authors: on test)
        validation_rows = inputs.index.filter(pl.col("split") == "val").select(
            "relative_path", "label", "content_sha256").sort("label", "relative_path")
    limited = limited_label_inputs(experiment.method, backbone, inputs.image_set, rows,
                                   workspace.feature_cache_dir, validation_rows)
    initial = None
    if experiment.pseudolabels is not None:
        initial = read_parquet_file(workspace.pseudolabels_path(inputs.dataset.name, experiment.key))

    def train(classifier, training_set, after_epoch):
        context.log.info(f"training {experiment.method} on {training_set.composition} for {optimization.epochs} "
                         "epochs")

        def on_epoch(epoch: int, loss: float, accuracy: float) -> None:
            log_epoch(epoch, loss, accuracy)
            if after_epoch is not None:
                after_epoch(epoch)

        return train_prompts(classifier, training_set, optimization, on_epoch=on_epoch, device=backbone.device)

    def on_round(step) -> None:
        quality = step.quality
        context.log.info(f"round {step.round + 1}: K = {step.per_class} per class, {int(quality['num_pseudolabels'])} "
                         f"pseudolabels, accuracy {quality['pseudolabel_accuracy']:.3f}, coverage "
                         f"{quality['class_coverage']:.2f}; kept epoch {step.selected_epoch or 'last'}")

    return train_limited_label_experiment(experiment, method.adapts_from_pool, classifier_factory, limited, rows,
                                          initial, train, on_round)


def round_plot(quality: pl.DataFrame) -> str:
    """A small markdown bar chart of pseudolabel accuracy by round (the UI renders it with the metadata)."""
    lines = ["| round | K | accuracy | |", "|---|---|---|---|"]
    for row in quality.iter_rows(named=True):
        bar = "#" * int(round(30 * row["pseudolabel_accuracy"]))
        lines.append(f"| {row['round']} | {row['per_class']} | {row['pseudolabel_accuracy']:.3f} | `{bar}` |")
    return "\n".join(lines)
