"""Prompt training: the experiment's method on its few-shot subset, optionally with augmented images and
pseudolabels; the learned prompt parameters are saved with the config that rebuilds them."""


import json

import dagster as dg
import polars as pl

from models.provenance import library_code_version
from pipelines.assets.augmentation import augmented_images
from pipelines.assets.common import partition_inputs
from pipelines.assets.curation import base_new_classes, fewshot_subsets
from pipelines.assets.pseudolabels import pseudolabels
from pipelines.assets.world import tiny_clip_backbone
from pipelines.partitions import dataset_and_experiment, dataset_experiment_partitions, from_dataset
from pipelines.resources import PromptLabResource


@dg.asset(
    group_name="training",
    partitions_def=dataset_experiment_partitions,
    deps=[dg.AssetDep(fewshot_subsets, partition_mapping=from_dataset),
          dg.AssetDep(base_new_classes, partition_mapping=from_dataset),
          augmented_images, pseudolabels, tiny_clip_backbone],
    code_version=library_code_version(),
    kinds={"pytorch", "safetensors"},
)
def prompt_checkpoints(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """The learned prompt of one experiment (method, shots, seed, options) on one dataset."""
    from models.data.index import dataset_fingerprint
    from models.experiments import (assemble_training_set, build_classifier, optimization_config,
                                    save_prompt_checkpoint, train_prompts)
    from models.prompting.methods import get_method

    dataset, experiment_key = dataset_and_experiment(context)
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
    classifier = build_classifier(backbone.model, backbone.tokenizer, experiment.method, experiment.parameters,
                                  trained_classnames, templates)
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
    if method.trains_prompts:
        fewshot = pl.read_parquet(workspace.fewshot_path(dataset))
        augmented_dir = augmented_rows = pseudolabelled_rows = None
        if experiment.augmentation is not None:
            augmented_dir = workspace.augmentation_dir(dataset, experiment_key)
            augmented_rows = pl.read_parquet(augmented_dir / "augmented.parquet").filter(pl.col("kept"))
        if experiment.pseudolabels is not None:
            pseudolabelled_rows = pl.read_parquet(workspace.pseudolabels_path(dataset, experiment_key)).join(
                inputs.index.select("relative_path", "content_sha256"), on="relative_path", how="left")
        training_set = assemble_training_set(
            experiment.method, backbone, inputs.image_dir, inputs.fewshot_train(fewshot),
            inputs.fewshot_train(fewshot, subset="val"), trained_labels, workspace.feature_cache_dir,
            augmented_dir, augmented_rows, pseudolabelled_rows,
            strategy=experiment.pseudolabels.strategy if experiment.pseudolabels is not None else "fpl")
        optimization = optimization_config(experiment)
        context.log.info(f"training {experiment.method} on {training_set.composition} for {optimization.epochs} epochs")

        def log_epoch(epoch: int, loss: float, accuracy: float) -> None:
            context.log.info(f"epoch {epoch}/{optimization.epochs}: loss {loss:.4f}, train accuracy {accuracy:.3f}")

        history = train_prompts(classifier, training_set, optimization, on_epoch=log_epoch, device=backbone.device)
        config.update(optimization=optimization.__dict__, training_composition=training_set.composition,
                      epoch_losses=history.epoch_losses, training_seconds=history.seconds,
                      training_details=history.details)
        metadata.update(
            epochs=optimization.epochs,
            final_loss=history.epoch_losses[-1],
            training_seconds=round(history.seconds, 2),
            composition=dg.MetadataValue.json(training_set.composition),
            epoch_losses=dg.MetadataValue.json([round(x, 4) for x in history.epoch_losses]),
            training_details=dg.MetadataValue.json(history.details),
        )
    directory = save_prompt_checkpoint(workspace.checkpoint_dir(dataset, experiment_key), classifier, config)
    metadata["path"] = str(directory)
    return dg.MaterializeResult(metadata=metadata)
