"""What an experiment trains on: the labels (`trained_labels`: base-to-new trains on the base classes only), its
few-shot images with their augmented variations and val images (`fewshot_training_set`), and for a method that adapts
from the pool, the labelled rows it selects its epoch on (`pool_validation_rows`). The pool rounds' training sets are
models/limited_labels.py's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import torch

from models.catalog import ExperimentConfig
from models.experiments.inputs import ExperimentInputs, method_inputs_for_images
from models.prompting.methods import get_method

if TYPE_CHECKING:
    from models.limited_labels import ExperimentRows
    from models.prompting.features import ImageSet
    from models.prompting.view_recipes import ViewRecipe
    from models.pseudolabels import PseudolabelStrategy
    from models.workspace import Workspace


@dataclass
class TrainingSet:
    """Inputs of the training images (features (N, V, E) or images (N, V, 3, H, W)), labels, per-sample loss
    weights, and the few-shot val subset (inputs, labels) for methods that select hyperparameters on it."""

    view_inputs: torch.Tensor
    labels: torch.Tensor
    sample_weights: torch.Tensor | None = None
    composition: dict[str, int] = field(default_factory=dict)
    validation: tuple[torch.Tensor, torch.Tensor] | None = None
    # The unlabelled pool's inputs (same layout as view_inputs, without labels), for methods that adapt from the
    # pool itself (TFUP); None outside the limited-label settings.
    unlabelled: torch.Tensor | None = None
    # The model-selection policy in force (registry.SELECTION_POLICIES) and the one asked for, which differ where a
    # dataset has no val split (ImageNet: its val is its test set), so that `few_shot_val` falls back to `last`.
    selection: str = "few_shot_val"
    selection_asked: str = "few_shot_val"
    # The source domain of each training image (N,) as an index into domain_names, for multi-source domain
    # generalisation (models/experiments/multi_source.py; SPG's domain prompts); None: one domain
    domains: torch.Tensor | None = None
    domain_names: tuple[str, ...] = ()


def combine_training_sets(
    labelled: tuple[torch.Tensor, torch.Tensor],
    augmented: tuple[torch.Tensor, torch.Tensor] | None = None,
    pseudolabelled: tuple[torch.Tensor, torch.Tensor] | None = None,
    strategy: str | PseudolabelStrategy = "fpl",
) -> TrainingSet:
    """Few-shot images, plus their kept diffusion variations (same labels), plus pseudolabelled pool images.

    The labelled term is weighted as the pseudolabel strategy publishes it (models/pseudolabels.py): FPL scales it by
    |PL|/|L|, IFPL and GRIP by |L|/|PL|; each pseudolabelled image has weight 1. A strategy object (get_strategy with
    the experiment's `labelled_weighting`) carries a weighting chosen in the grid instead.
    """
    from models.pseudolabels import get_strategy

    parts_features, parts_labels, parts_weights = [], [], []
    composition = {}
    for name, part in (("labelled", labelled), ("augmented", augmented)):
        if part is not None and part[0].shape[0]:
            parts_features.append(part[0])
            parts_labels.append(part[1])
            composition[name] = part[0].shape[0]
    n_labelled = sum(f.shape[0] for f in parts_features)
    weights = None
    if pseudolabelled is not None and pseudolabelled[0].shape[0]:
        n_pseudo = pseudolabelled[0].shape[0]
        strategy = get_strategy(strategy) if isinstance(strategy, str) else strategy
        labelled_weight = strategy.labelled_loss_weight(n_labelled, n_pseudo)
        parts_weights = [torch.full((n_labelled,), labelled_weight), torch.ones(n_pseudo)]
        parts_features.append(pseudolabelled[0])
        parts_labels.append(pseudolabelled[1])
        composition["pseudolabelled"] = n_pseudo
        weights = torch.cat(parts_weights)
    return TrainingSet(torch.cat(parts_features), torch.cat(parts_labels).long(), weights, composition)


def assemble_training_set(
    method: str,
    backbone,
    image_dir: ImageSet | Path,
    labelled_rows: pl.DataFrame,
    val_rows: pl.DataFrame,
    trained_labels: list[int],
    cache_dir: Path | None,
    augmented_dir: Path | None = None,
    augmented_rows: pl.DataFrame | None = None,
    recipe: ViewRecipe | None = None,
    selection: str = "few_shot_val",
) -> TrainingSet:
    """The training set of one experiment, in the inputs its method takes (cached features or preprocessed images).

    labelled_rows / val_rows: the labelled images for training and for validation (relative_path, label,
    content_sha256), restricted to `trained_labels` and relabelled 0..len-1 in that order (base-to-new trains on the
    base classes only). augmented_rows: kept diffusion variations under `augmented_dir` (relative_path, label).
    recipe: the augmented view passes the method trains on (else the original and mirrored views); the val images
    keep their one original view. selection: the policy val_rows were chosen for (`last`: none are used).
    Pseudolabelled pool images join in the rounds of models/limited_labels.py.
    """
    from models.provenance import sha256_file

    relabel = {label: index for index, label in enumerate(trained_labels)}

    def labelled_part(directory: Path, rows: pl.DataFrame, hashes: list[str], label_column: str,
                      with_mirror: bool = True, augmented: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = method_inputs_for_images(method, backbone, directory, rows["relative_path"].to_list(), hashes,
                                          cache_dir, with_mirror and recipe is None,
                                          recipe if augmented else None)
        return inputs, torch.tensor(rows[label_column].to_list())

    def relabelled(rows: pl.DataFrame) -> pl.DataFrame:
        rows = rows.filter(pl.col("label").is_in(trained_labels))
        return rows.with_columns(pl.col("label").replace_strict(relabel, return_dtype=pl.Int64))

    labelled_rows, val_rows = relabelled(labelled_rows), relabelled(val_rows)
    labelled = labelled_part(image_dir, labelled_rows, labelled_rows["content_sha256"].to_list(), "label")
    augmented = None
    if augmented_rows is not None and augmented_rows.height:
        hashes = [sha256_file(augmented_dir / "images" / path) for path in augmented_rows["relative_path"].to_list()]
        augmented = labelled_part(augmented_dir / "images", augmented_rows, hashes, "label")
    training_set = combine_training_sets(labelled, augmented)
    # the labelled val images (few-shot: min(K, 4) per class), for methods that select hyperparameters on them; none
    # where the dataset's val set is its test set (ImageNet)
    training_set.selection_asked = selection
    training_set.selection = selection if selection == "last" or val_rows.height else "last"
    training_set.validation = (labelled_part(image_dir, val_rows, val_rows["content_sha256"].to_list(), "label",
                                             with_mirror=False, augmented=False)
                               if training_set.selection != "last" else None)
    return training_set


def trained_labels(experiment: ExperimentConfig, class_split: dict[str, Any], num_classes: int) -> list[int]:
    """The labels an experiment trains on, in the order training relabels them 0..len-1: base_to_new trains on the
    base classes only (new classes are never seen in training), every other protocol on all classes."""
    return class_split["base_labels"] if experiment.protocol == "base_to_new" else list(range(num_classes))


def augmented_rows(inputs: ExperimentInputs, workspace: Workspace) -> tuple[Path | None, pl.DataFrame | None]:
    """(folder, kept rows) of the experiment's diffusion variations (the augmented_images asset), or (None, None)
    for an experiment without augmentation."""
    from models.storage import read_parquet_file

    if inputs.experiment.augmentation is None:
        return None, None
    augmented_dir = workspace.augmentation_dir(inputs.dataset.name, inputs.experiment.key)
    return augmented_dir, read_parquet_file(augmented_dir / "augmented.parquet").filter(pl.col("kept"))


def validation_rows(inputs: ExperimentInputs, fewshot: pl.DataFrame) -> pl.DataFrame:
    """The labelled images the experiment's selection policy chooses on: the few-shot val subset (min(K, 4) per
    class), the dataset's whole val split, or none (`last`). Never test: a dataset whose val split is its test set
    (ImageNet) has no val rows, and its experiments fall back to `last`."""
    policy = inputs.experiment.selection_policy
    if policy == "few_shot_val":
        return inputs.fewshot_train(fewshot, subset="val")
    if policy == "full_val":
        return inputs.index.filter(pl.col("split") == "val").select(
            "relative_path", "label", "content_sha256").sort("label", "relative_path")
    return inputs.fewshot_train(fewshot, subset="val").head(0)


def fewshot_training_set(inputs: ExperimentInputs, workspace: Workspace, backbone, labels: list[int]) -> TrainingSet:
    """An experiment's few-shot train images (in the views its method trains on) and their kept augmented
    variations, with the val images of its selection policy, restricted to `labels` and relabelled
    (assemble_training_set). A DomainBed dataset's train split pools its source domains: each image's domain is
    its path's first folder (TrainingSet.domains; not for augmented variations, which keep none)."""
    from models.experiments.multi_source import domains_of_relative_paths
    from models.storage import read_parquet_file

    fewshot = read_parquet_file(workspace.fewshot_path(inputs.dataset.name))
    train_rows = inputs.fewshot_train(fewshot)
    training_set = assemble_training_set(inputs.experiment.method, backbone, inputs.image_set, train_rows,
                                         validation_rows(inputs, fewshot), labels, workspace.feature_cache_dir,
                                         *augmented_rows(inputs, workspace), recipe=inputs.experiment.view_recipe,
                                         selection=inputs.experiment.selection_policy)
    if inputs.dataset.source == "domainbed" and "augmented" not in training_set.composition:
        # the rows assemble_training_set kept, in its order
        kept = train_rows.filter(pl.col("label").is_in(labels))["relative_path"].to_list()
        if len(kept) != len(training_set.labels):
            raise ValueError(f"{inputs.experiment.key}: {len(kept)} domain labels for {len(training_set.labels)} "
                             "training images")
        training_set.domains, training_set.domain_names = domains_of_relative_paths(kept)
    return training_set


def pool_validation_rows(inputs: ExperimentInputs, rows: ExperimentRows) -> pl.DataFrame | None:
    """The labelled images a method that adapts from the pool selects its epoch on when the setting has none (UL):
    the dataset's val split (TFUP-T's authors select on test). None otherwise: the setting's own validation rows."""
    if not get_method(inputs.experiment.method).adapts_from_pool or rows.validation.height:
        return None
    return inputs.index.filter(pl.col("split") == "val").select(
        "relative_path", "label", "content_sha256").sort("label", "relative_path")
