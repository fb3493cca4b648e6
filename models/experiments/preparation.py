"""What an experiment prepares before it trains: round 0 of its pseudolabels (`round_zero_pseudolabels`) and the
diffusion variations of its few-shot images (`augment_fewshot_images`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from models.experiments.classifiers import build_classifier
from models.experiments.inputs import ExperimentInputs, features_for_images
from models.experiments.scoring import predict

if TYPE_CHECKING:
    from models.pseudolabels import PseudolabelStrategy
    from models.workspace import Workspace


@dataclass
class RoundZeroPseudolabels:
    selected: pl.DataFrame  # relative_path, pseudo_label, confidence (models.limited_labels.round_zero_selection)
    pool: pl.DataFrame  # the unlabelled pool's rows, with their true labels (for the quality only)
    quality: dict[str, float]  # models.pseudolabels.pseudolabel_quality
    strategy: PseudolabelStrategy

    def write(self, path: Path) -> None:
        """The selected pseudolabels to `path` (Parquet), all or nothing: the training reads them as round 0."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.selected.write_parquet(path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)

    def metric_rows(self) -> list:
        """The warehouse rows of round 0 (split train_pool): the pseudolabels' quality and the pool's size."""
        from models.warehouse import MetricRow, metric_rows

        return metric_rows("train_pool", self.quality) + [MetricRow("train_pool", "pool_size",
                                                                    float(self.pool.height))]


def round_zero_pseudolabels(inputs: ExperimentInputs, workspace: Workspace, backbone,
                            text_cache=None) -> RoundZeroPseudolabels:
    """Round 0 of the experiment's pseudolabel strategy: zero-shot CLIP (the experiment's templates) labels its
    unlabelled pool and the strategy keeps K_0 per class. Refused, naming the grid entry, when the pool is empty or
    holds fewer images than K asks (before any training)."""
    from models.limited_labels import round_zero_selection
    from models.pseudolabels import get_strategy, pseudolabel_quality

    experiment, dataset = inputs.experiment, inputs.dataset.name
    rows = inputs.experiment_rows(workspace)
    pool, strategy = rows.pool, get_strategy(experiment.pseudolabels.strategy)
    where = f"{experiment.where}.pseudolabels"
    if pool is None or pool.height == 0:
        raise ValueError(f"{where}: the unlabelled pool of {dataset} is empty ({experiment.setting or 'few-shot'}"
                         "): there is nothing to pseudolabel")
    features = features_for_images(backbone, inputs.image_set, pool["relative_path"].to_list(),
                                   pool["content_sha256"].to_list(), workspace.feature_cache_dir)
    classifier = build_classifier(backbone.model, backbone.tokenizer, "zero_shot", {}, inputs.classnames,
                                  inputs.templates, text_cache=text_cache)
    try:
        selected = round_zero_selection(strategy, experiment.pseudolabels.per_class, pool["relative_path"].to_list(),
                                        predict(classifier, features), rows.pseudolabel_classes)
    except ValueError as error:  # K beyond the pool: name the grid entry and field
        raise ValueError(f"{where}.per_class ({dataset}): {error}") from error
    return RoundZeroPseudolabels(selected, pool, pseudolabel_quality(selected, pool, len(rows.pseudolabel_classes)),
                                 strategy)


def augment_fewshot_images(inputs: ExperimentInputs, workspace: Workspace, backbone, generator) -> pl.DataFrame:
    """The experiment's diffusion variations of its few-shot train images (its augmentation options), each with its
    CLIP similarity to the source and whether it passes the threshold; the images and their table
    (augmented.parquet) are written to a staging folder renamed to the experiment's augmentation folder once
    complete."""
    import shutil

    from models.augmentation import AugmentationSettings, augment_with_diffusion
    from models.data.index import load_images
    from models.storage import read_parquet_file

    options, dataset = inputs.experiment.augmentation, inputs.dataset.name
    output_dir = workspace.augmentation_dir(dataset, inputs.experiment.key)
    rows = inputs.fewshot_train(read_parquet_file(workspace.fewshot_path(dataset)))
    paths = rows["relative_path"].to_list()
    staging = output_dir.with_name(output_dir.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    table = augment_with_diffusion(
        generator,
        backbone.model,
        backbone.preprocess_eval,
        load_images(inputs.image_dir, paths),
        paths,
        rows["label"].to_list(),
        rows["content_sha256"].to_list(),
        AugmentationSettings(options.variations_per_image, options.similarity_threshold, inputs.experiment.seed or 0),
        staging,
        device=backbone.device,
    )
    table.write_parquet(staging / "augmented.parquet")
    staging.rename(output_dir)
    return table
