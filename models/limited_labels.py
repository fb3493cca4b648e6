"""Training with pseudolabels, in the few-shot protocol or a limited-label setting (Menghini et al., NeurIPS 2023):
which rows are labelled, which are the pool, and the rounds of pseudolabel -> train that FPL, IFPL and GRIP run.

Without Dagster: the training asset calls `experiment_rows` and `train_with_pseudolabels`.

A round r: K_r per class (models/pseudolabels.py, the strategy's schedule) of the pool's most confident images per
predicted class, predicted by zero-shot CLIP in round 0 and by the prompts of round r - 1 after; then a classifier
rebuilt from the method's initial prompt trains on the labelled images plus those pseudolabels (the authors re-init
every round). The returned classifier is the last round's. Within a round the epoch kept is the best on the labelled
validation images, where there are any (the authors' code tracked the best and returned the last epoch); in UL,
which has no labels, the last epoch. Pseudolabels go to the classes a setting pseudolabels: every class, except in
TRZSL, where only the unseen classes are pseudolabelled (their probabilities renormalised among those classes), as in
the authors' code. The pool is labelled in one batched pass per round through `predict_probabilities` on the method's
inputs (cached features for frozen image towers), never one image at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import polars as pl
import torch

from models.pseudolabels import (PseudolabelStrategy, pseudolabel_candidates, pseudolabel_quality,
                                 select_top_k_per_class)


@dataclass(frozen=True)
class ExperimentRows:
    """The labelled training rows, the labelled validation rows and the unlabelled pool of one experiment (each with
    relative_path, label, content_sha256), the seen classes (TRZSL) and the classes pseudolabels may take."""

    labelled: pl.DataFrame
    validation: pl.DataFrame
    pool: pl.DataFrame | None
    seen_labels: tuple[int, ...] | None
    pseudolabel_classes: tuple[int, ...]


def experiment_rows(experiment, index: pl.DataFrame, num_classes: int, fewshot: pl.DataFrame | None = None,
                    setting_splits: pl.DataFrame | None = None) -> ExperimentRows:
    """Rows of an experiment: from its learning setting's curated split, else from its few-shot subset (the pool is
    then the training images outside that subset)."""
    from models.data.fewshot import fewshot_rows
    from models.data.learning_settings import LABELLED_TRAIN, LABELLED_VAL, split_of

    hashes = index.select("relative_path", "content_sha256")
    where = f"{experiment.key}: "
    if experiment.setting is not None:
        if setting_splits is None:
            raise ValueError(f"{where}setting {experiment.setting} needs the curated learning_setting_splits")
        split = split_of(setting_splits, experiment.setting, experiment.seed, where)

        def rows(frame: pl.DataFrame) -> pl.DataFrame:
            return frame.select("relative_path", "label").join(hashes, on="relative_path", how="left").sort(
                "label", "relative_path")

        seen = split.seen_labels if experiment.setting == "trzsl" else None
        classes = tuple(label for label in range(num_classes) if seen is None or label not in seen)
        return ExperimentRows(rows(split.role(LABELLED_TRAIN)), rows(split.role(LABELLED_VAL)),
                              rows(split.pool), seen, classes)
    if fewshot is None:
        raise ValueError(f"{where}the few-shot protocol needs the curated few-shot subsets")

    def subset(name: str) -> pl.DataFrame:
        return fewshot_rows(fewshot, index.select("relative_path", "label", "content_sha256"), experiment.shots,
                            experiment.seed, name, experiment.key)

    labelled, validation = subset("train"), subset("val")
    pool = None
    if experiment.pseudolabels is not None:
        pool = (index.filter(pl.col("split") == "train").join(labelled.select("relative_path"), on="relative_path",
                                                              how="anti")
                .select("relative_path", "label", "content_sha256").sort("relative_path"))
    return ExperimentRows(labelled, validation, pool, None, tuple(range(num_classes)))


@dataclass
class PseudolabelRound:
    round: int
    per_class: int
    selected: pl.DataFrame  # relative_path, pseudo_label, confidence
    quality: dict[str, float]
    training: Any = None  # the round's TrainingHistory
    selected_epoch: int | None = None  # the epoch kept (best on validation); None: the last


@dataclass
class PseudolabelTraining:
    classifier: Any
    rounds: list[PseudolabelRound] = field(default_factory=list)

    def rounds_frame(self) -> pl.DataFrame:
        """Every round's pseudolabels, one row per (round, image): round, per_class, relative_path, pseudo_label,
        confidence."""
        return pl.concat([r.selected.with_columns(round=pl.lit(r.round, dtype=pl.Int64),
                                                  per_class=pl.lit(r.per_class, dtype=pl.Int64))
                          .select("round", "per_class", "relative_path", "pseudo_label", "confidence")
                          for r in self.rounds])

    def quality_frame(self) -> pl.DataFrame:
        """One row per round: K per class, number of pseudolabels, accuracy, coverage, calibration, kept epoch."""
        return pl.DataFrame([{"round": r.round, "per_class": r.per_class, **r.quality,
                              "selected_epoch": r.selected_epoch} for r in self.rounds])


def _accuracy(classifier, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    from models.prompting.training import predict_logits

    return float((predict_logits(classifier, inputs).argmax(dim=1) == labels).double().mean())


def round_zero_selection(strategy: PseudolabelStrategy, fixed_per_class: int, relative_paths: list[str],
                         zero_shot_probabilities: np.ndarray, pseudolabel_classes: tuple[int, ...]) -> pl.DataFrame:
    """Round 0 of every strategy: the K_0 most confident zero-shot pseudolabels per class."""
    per_class = strategy.per_class(0, len(relative_paths), len(pseudolabel_classes), fixed_per_class)
    return select_top_k_per_class(pseudolabel_candidates(relative_paths, zero_shot_probabilities,
                                                         pseudolabel_classes), per_class)


def train_keeping_best(classifier, training_set, validation: tuple[torch.Tensor, torch.Tensor] | None,
                       train: Callable[[Any, Any, Callable[[int], None] | None], Any]) -> tuple[Any, int | None]:
    """Train, keeping the epoch with the best accuracy on the labelled validation images when there are any (and
    it beats the final state, which for PromptSRC is its Gaussian aggregate). Returns (history, kept epoch or
    None for the final state)."""
    snapshot: dict[str, Any] = {}
    keep_best = None
    if validation is not None and validation[0].shape[0]:
        def keep_best(epoch: int) -> None:
            accuracy = _accuracy(classifier, *validation)
            classifier.train()  # predict_logits left it in eval mode; the loop goes on training
            if accuracy > snapshot.get("accuracy", -1.0):
                snapshot.update(accuracy=accuracy, epoch=epoch,
                                state={k: v.clone() for k, v in classifier.trainable_state().items()})
    history = train(classifier, training_set, keep_best)
    selected_epoch = None
    if snapshot and _accuracy(classifier, *validation) < snapshot["accuracy"]:
        classifier.load_state_dict(snapshot["state"], strict=False)
        selected_epoch = snapshot["epoch"]
    classifier.eval()
    return history, selected_epoch


def train_with_pseudolabels(
    build_classifier: Callable[[], Any],
    strategy: PseudolabelStrategy,
    fixed_per_class: int,
    initial_selection: pl.DataFrame,
    labelled: tuple[torch.Tensor, torch.Tensor],
    validation: tuple[torch.Tensor, torch.Tensor] | None,
    pool_train_inputs: torch.Tensor,
    pool_label_inputs: torch.Tensor,
    pool_rows: pl.DataFrame,
    pseudolabel_classes: tuple[int, ...],
    train: Callable[[Any, Any, Callable[[int], None] | None], Any],
    on_round: Callable[[PseudolabelRound], None] | None = None,
) -> PseudolabelTraining:
    """Run the strategy's rounds from round 0's zero-shot selection (`round_zero_selection`).

    `build_classifier()` gives a classifier at the method's initial prompt; `train(classifier, training_set,
    after_epoch)` trains one round, calls after_epoch(epoch) (when given) after each epoch and returns its
    TrainingHistory (the caller's optimization, seed and per-epoch logging). Labels are in classifier order.
    `pool_rows` holds the pool's relative_path and hidden label (used for the quality figures only, never for
    training); `pool_train_inputs` are the pool's training views and `pool_label_inputs` its original view, in the
    order of pool_rows.
    """
    from models.experiments import combine_training_sets
    from models.prompting.training import predict_probabilities

    pool_size = pool_rows.height
    if pool_size == 0:
        raise ValueError("the unlabelled pool is empty: there is nothing to pseudolabel")
    if pool_train_inputs.shape[0] != pool_size or pool_label_inputs.shape[0] != pool_size:
        raise ValueError(f"{pool_size} pool rows but {pool_train_inputs.shape[0]} / {pool_label_inputs.shape[0]} "
                         "pool inputs")
    paths = pool_rows["relative_path"].to_list()
    position = {path: i for i, path in enumerate(paths)}
    stray = initial_selection.filter(~pl.col("relative_path").is_in(paths))
    if stray.height:
        raise ValueError(f"{stray.height} round-0 pseudolabels are not pool images, e.g. {stray['relative_path'][0]}")
    hidden = pool_rows.select("relative_path", "label")
    result = PseudolabelTraining(None)
    selected, classifier = initial_selection, None
    for round_index in range(strategy.rounds):
        per_class = strategy.per_class(round_index, pool_size, len(pseudolabel_classes), fixed_per_class)
        if round_index > 0:  # relabel the pool with the previous round's prompts, one batched pass
            probabilities = predict_probabilities(classifier, pool_label_inputs).numpy().astype(np.float64)
            selected = select_top_k_per_class(pseudolabel_candidates(paths, probabilities, pseudolabel_classes),
                                              per_class)
        elif selected.group_by("pseudo_label").len()["len"].max() > per_class:
            raise ValueError(f"the round-0 selection has more than K_0 = {per_class} pseudolabels in a class")
        rows = torch.tensor([position[p] for p in selected["relative_path"].to_list()], dtype=torch.long)
        pseudo = (pool_train_inputs[rows], torch.tensor(selected["pseudo_label"].to_list(), dtype=torch.long))
        training_set = combine_training_sets(labelled, None, pseudo, strategy=strategy)
        training_set.validation = validation
        classifier = build_classifier()
        history, selected_epoch = train_keeping_best(classifier, training_set, validation, train)
        step = PseudolabelRound(round_index, per_class, selected,
                                pseudolabel_quality(selected, hidden, len(pseudolabel_classes)), history,
                                selected_epoch)
        result.rounds.append(step)
        if on_round is not None:
            on_round(step)
    result.classifier = classifier
    return result


def _original_view(inputs: torch.Tensor) -> torch.Tensor:
    return inputs[:, 0]


@dataclass
class LimitedLabelInputs:
    """The method's inputs of an experiment's rows: labelled (views, labels), validation, pool training views and
    the pool's original view."""

    labelled: tuple[torch.Tensor, torch.Tensor]
    validation: tuple[torch.Tensor, torch.Tensor] | None
    pool_views: torch.Tensor | None
    pool_original: torch.Tensor | None


def limited_label_inputs(method: str, backbone, image_dir, rows: ExperimentRows, cache_dir,
                         validation_rows: pl.DataFrame | None = None) -> LimitedLabelInputs:
    """Inputs in the method's format (cached features, or images for image-prompting methods), each image through
    the feature cache once. An empty labelled part (UL) gets the pool's shape with 0 rows. `validation_rows`
    replaces rows.validation (TFUP-T in UL selects on the dataset's val split)."""
    from models.experiments import method_inputs_for_images

    def inputs(frame: pl.DataFrame, with_mirror: bool) -> torch.Tensor | None:
        if frame is None or frame.height == 0:
            return None
        return method_inputs_for_images(method, backbone, image_dir, frame["relative_path"].to_list(),
                                        frame["content_sha256"].to_list(), cache_dir, with_mirror)

    pool_views = inputs(rows.pool, True) if rows.pool is not None else None
    labelled = inputs(rows.labelled, True)
    if labelled is None:
        if pool_views is None:
            raise ValueError("the experiment has neither labelled images nor a pool")
        labelled = pool_views[:0]
    validation_frame = validation_rows if validation_rows is not None else rows.validation
    validation = inputs(validation_frame, False)
    return LimitedLabelInputs(
        (labelled, torch.tensor(rows.labelled["label"].to_list(), dtype=torch.long)),
        None if validation is None else (validation, torch.tensor(validation_frame["label"].to_list(),
                                                                  dtype=torch.long)),
        pool_views, None if pool_views is None else _original_view(pool_views))


@dataclass
class LimitedLabelResult:
    classifier: Any
    histories: list[Any]
    composition: dict[str, int]
    details: dict[str, Any]
    pseudolabelling: PseudolabelTraining | None = None


def train_limited_label_experiment(
    experiment,
    adapts_from_pool: bool,
    build_classifier: Callable[[], Any],
    inputs: LimitedLabelInputs,
    rows: ExperimentRows,
    initial_selection: pl.DataFrame | None,
    train: Callable[[Any, Any, Callable[[int], None] | None], Any],
    on_round: Callable[[PseudolabelRound], None] | None = None,
) -> LimitedLabelResult:
    """Train one experiment that has a pool or a learning setting: a method that adapts from the pool itself
    (TFUP) gets the pool as TrainingSet.unlabelled; with a pseudolabel strategy, its rounds; otherwise (SSL, TRZSL
    without pseudolabels) the method on the labelled images alone."""
    from models.experiments import TrainingSet
    from models.pseudolabels import get_strategy

    if adapts_from_pool:
        if inputs.pool_views is None:
            raise ValueError(f"{experiment.where}: {experiment.method} adapts from an unlabelled pool, and the "
                             "experiment has none (give it a setting)")
        labelled_inputs, labelled_labels = inputs.labelled
        training_set = TrainingSet(labelled_inputs, labelled_labels, None, {"unlabelled": inputs.pool_views.shape[0],
                                   "labelled": labelled_inputs.shape[0]}, inputs.validation, inputs.pool_views)
        classifier = build_classifier()
        history = train(classifier, training_set, None)
        return LimitedLabelResult(classifier, [history], training_set.composition, {})
    if experiment.pseudolabels is not None:
        if initial_selection is None:
            raise ValueError(f"{experiment.where}: the round-0 pseudolabels are missing (the pseudolabels asset)")
        pool_rows = rows.pool.select("relative_path", "label")
        result = train_with_pseudolabels(
            build_classifier,
            get_strategy(experiment.pseudolabels.strategy, experiment.pseudolabels.labelled_weighting),
            experiment.pseudolabels.per_class,
            initial_selection, inputs.labelled, inputs.validation, inputs.pool_views, inputs.pool_original,
            pool_rows, rows.pseudolabel_classes, train, on_round)
        last = result.rounds[-1]
        composition = {"labelled": int(inputs.labelled[0].shape[0]), "pseudolabelled": last.selected.height,
                       "pool": pool_rows.height, "rounds": len(result.rounds)}
        return LimitedLabelResult(result.classifier, [r.training for r in result.rounds], composition,
                                  {"selected_epoch_last_round": last.selected_epoch}, result)
    if inputs.labelled[0].shape[0] == 0:
        raise ValueError(f"{experiment.where}: no labelled image to train on; give it a pseudolabel strategy")
    training_set = TrainingSet(*inputs.labelled, None, {"labelled": int(inputs.labelled[0].shape[0])},
                               inputs.validation)
    classifier = build_classifier()
    history, selected_epoch = train_keeping_best(classifier, training_set, inputs.validation, train)
    return LimitedLabelResult(classifier, [history], training_set.composition, {"selected_epoch": selected_epoch})
